"""Deactivation (注销; privacy policy 五, issue 14): ask, cool off, cancel by signing in, complete.

`AccountService.Deactivate`, for the signed-in account, in order:

1. Shape: `ticket` is required and at most `MAX_TICKET_CHARS` (InvalidArgument).
2. The account must be active (FailedPrecondition otherwise).
3. The ticket is checked, not consumed: a DEACTIVATE ticket (a fresh code) for the
   account's bound phone (SMS) or bound email (EMAIL). Anything else is
   TicketInvalid on `ticket`.
4. Obligations: each one the operator lists in `deactivation_blocking_obligations`
   (`open_review_cases`, `pending_real_name`) that the account has makes the request
   FailedPrecondition, the message naming them; the ticket stays usable.
5. The ticket is consumed (Redis; one of two concurrent requests gets past here).
6. A pending key (256 random bits) is sealed under the master key and stored in
   Redis (`deactivation.pending_keys`), before the unit of work: a unit of work that
   then fails leaves only a key that expires.
7. One unit of work: the account becomes DEACTIVATION_PENDING and its data key leaves
   the account row (`AccountService.suspend_for_deactivation`), so do the data keys
   of the review cases about it (`ReviewCases.hand_over_keys`: their fields hold its
   name and ID number; such a case reads as FailedPrecondition meanwhile), a
   `deactivations` row keeps them encrypted under the pending key with the due time
   (now + the cooling-off period, `deactivation_cooling_off_seconds`, 15 days by
   default), every session ends (`revoke_all` with reason `deactivation`: published
   to the revocation list and the revocation feed once this commits), the
   `account_deactivated` notice is queued to the phone and email, and
   `account.deactivate` is audited. A fault anywhere
   leaves the account, its sessions and the outbox as they were.

Cancelling (`cancel_on_sign_in`). A sign-in that would start a session for a
DEACTIVATION_PENDING account (password, SMS, or the second factor after either)
calls this inside the login's unit of work: before the due time, with the pending
key still in Redis, the data key and the case keys are wrapped under the master
key again, the
account is active, the `deactivations` row is gone and `account.deactivate.cancel`
is audited, all with the new session; the login answer says so
(`LoginResponse.deactivation_cancelled`). Past the due time, or with the pending
key lost, the sign-in is refused like any inactive account's.

Completing (`complete_due`, run by a background task of every worker and by
`xiaohe-identity deactivation complete`). For each account past its due time:

1. The pending key is destroyed in Redis. From here on the account's data key
   exists nowhere: every ciphertext under it (phone, email, profile with name and
   ID number, real-name details, documents) is unreadable in the live database and
   in any copy of it taken since the request. Idempotent.
2. One unit of work, with the account row locked: the account row is erased to a
   tombstone (`AccountService.erase`: status `deactivated`, ciphertexts and password
   hash cleared, login name `~<account id>`, identifier rows deleted, so phone,
   email, login name, ID number and USCC can be registered again), the
   `deactivations` row, the verified real-name claims and submissions, the review
   cases about the account (each with its own data key), the document rows, the
   TOTP factor (sealed under the master key, not the account's data key) and the
   operator roles are deleted, and `account.deactivate.complete` is audited. A
   fault leaves all of it as it was; the next run repeats it (step 1 is then a
   no-op). Document bytes are removed once this commits.

The audit chain is not touched: its records name the random account id (or its
pseudonym), which links to nothing once the account row is a tombstone, so
`VerifyAuditChain` keeps verifying. Sessions (ended), consents and disclosures
stay under the account id for their own retention periods.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from xiaohe.identity.server.accounts.models import AccountStatus
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.sink import AuditSink, outcome_of, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.models import Purpose, TicketConsumer
from xiaohe.identity.server.deactivation.models import PendingDeactivation
from xiaohe.identity.server.deactivation.service import DeactivationRecords
from xiaohe.identity.server.delivery.notices import Notices
from xiaohe.identity.server.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
)
from xiaohe.identity.server.flows.channels import SessionRevoker, own_channel_ticket
from xiaohe.identity.server.sessions.models import RevokeReason
from xiaohe.identity.server.shared.validation import MAX_TICKET_CHARS
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

DEACTIVATE_ACTION: Final = "account.deactivate"
CANCEL_ACTION: Final = "account.deactivate.cancel"
COMPLETE_ACTION: Final = "account.deactivate.complete"
DEACTIVATED_NOTICE: Final = "account_deactivated"
TICKET_FIELD: Final = "ticket"
DEFAULT_COOLING_OFF_SECONDS: Final = 15 * 86400
PENDING_KEY_MARGIN_SECONDS: Final = 7 * 86400
"""How long a pending key outlives its due time in Redis if nothing destroys it sooner."""
COMPLETE_BATCH: Final = 100

OPEN_REVIEW_CASES: Final = "open_review_cases"
PENDING_REAL_NAME: Final = "pending_real_name"
KNOWN_OBLIGATIONS: Final = (OPEN_REVIEW_CASES, PENDING_REAL_NAME)
"""Obligations an operator may list in `deactivation_blocking_obligations`."""

Obligation = Callable[[str], Awaitable[int]]
"""How many open items of one obligation an account has (0: none)."""


class AccountErasers(Protocol):
    """What else holds an account's data, each deleting its part in the unit of work."""

    async def forget_account(self, account_id: str) -> int:
        """Delete what this store holds about the account; returns how many rows."""
        ...


class CaseKeys(Protocol):
    """The review cases' own data keys (`review.cases.ReviewCases`)."""

    async def hand_over_keys(self, account_id: str) -> dict[str, bytes]:
        """Take the keys of the cases about the account off their rows; returns them."""
        ...

    async def take_back_keys(self, keys: Mapping[str, bytes]) -> None:
        """Wrap them under the master key again."""
        ...

    async def documents_about(self, account_id: str) -> list[str]:
        """The ids of the documents the cases about the account name."""
        ...


class DocumentEraser(Protocol):
    """Identity documents (`realname.documents.DocumentService`)."""

    async def forget_owner(self, owner: str) -> list[str]:
        """Delete the owner's document rows; returns their storage keys."""
        ...

    async def forget_held_by_phones(self, document_ids: list[str]) -> list[str]:
        """Delete the rows of those documents a phone's holder uploaded; their storage keys."""
        ...

    async def delete_stored(self, storage_keys: list[str]) -> None:
        """Remove stored document bytes."""
        ...


class SecondFactorEraser(Protocol):
    """The TOTP factor (`totp.service.TotpService`)."""

    async def remove(self, account_id: str) -> bool:
        """Remove the factor and its recovery codes."""
        ...


@dataclass(frozen=True)
class DeactivateCommand:
    """Deactivate the signed-in account, proven by a DEACTIVATE ticket of its phone or email."""

    account_id: str
    ticket: str = field(repr=False)


@dataclass(frozen=True)
class DeactivationRequested:
    """The cooling-off period has started: it ends (and the account is erased) at `due_at`."""

    due_at: float
    sessions_ended: int


class DeactivationFlow:
    """Deactivation requests, their cancellation by signing in, and their completion."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: AccountService,
        tickets: TicketConsumer,
        sessions: SessionRevoker,
        notices: Notices,
        records: DeactivationRecords,
        clock: Clock,
        cooling_off_seconds: int = DEFAULT_COOLING_OFF_SECONDS,
        obligations: Mapping[str, Obligation] | None = None,
        erasers: Sequence[AccountErasers] = (),
        documents: DocumentEraser | None = None,
        second_factor: SecondFactorEraser | None = None,
        cases: CaseKeys | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        if cooling_off_seconds < 0:
            raise ValueError("cooling_off_seconds must not be negative")
        self._uow = uow
        self._accounts = accounts
        self._tickets = tickets
        self._sessions = sessions
        self._notices = notices
        self._records = records
        self._clock = clock
        self._cooling_off = cooling_off_seconds
        self._obligations = dict(obligations or {})
        self._erasers = tuple(erasers)
        self._documents = documents
        self._second_factor = second_factor
        self._cases = cases
        self._audit = audit

    def __repr__(self) -> str:
        return f"DeactivationFlow(cooling_off_seconds={self._cooling_off})"

    # -- the request --------------------------------------------------------------------

    async def deactivate(self, cmd: DeactivateCommand) -> DeactivationRequested:
        """Start the cooling-off period (steps in the module docstring).

        Raises InvalidArgument, FailedPrecondition (not active; an obligation),
        TicketInvalid (`ticket`) or Unavailable.
        """
        if not cmd.ticket.strip() or len(cmd.ticket) > MAX_TICKET_CHARS:
            raise InvalidArgument(
                FieldViolation(TICKET_FIELD, "must be a DEACTIVATE ticket from VerifyCode")
            )
        try:
            account = await self._accounts.get_credentials(cmd.account_id)
            if account.status != AccountStatus.ACTIVE:
                raise FailedPrecondition("the account is not active")
            personal = await self._accounts.get_personal_data(cmd.account_id)
            proof = await own_channel_ticket(
                self._tickets,
                cmd.ticket,
                purpose=Purpose.DEACTIVATE,
                field_name=TICKET_FIELD,
                data=personal,
            )
            await proof.check(self._tickets)
            await self._refuse_obligations(cmd.account_id)
            await proof.consume(self._tickets)
            now = self._clock.now()
            due_at = now + self._cooling_off
            async with self._uow.begin():
                data_key = await self._accounts.suspend_for_deactivation(cmd.account_id)
                # Only once this request holds the account (a concurrent one now fails above,
                # before it could replace the key in Redis that the winner's row is sealed
                # under). Should the unit of work fail after this, the key just expires.
                pending_key = await self._records.prepare(
                    cmd.account_id, self._cooling_off + PENDING_KEY_MARGIN_SECONDS
                )
                case_keys = (
                    {} if self._cases is None else await self._cases.hand_over_keys(cmd.account_id)
                )
                await self._records.record(
                    cmd.account_id,
                    data_key=data_key,
                    pending_key=pending_key,
                    requested_at=now,
                    due_at=due_at,
                    case_keys=case_keys,
                )
                ended = await self._sessions.revoke_all(cmd.account_id, RevokeReason.DEACTIVATION)
                await self._notices.send(
                    DEACTIVATED_NOTICE, phone=personal.phone, email=personal.email
                )
                if self._audit is not None:
                    await self._audit.record(DEACTIVATE_ACTION, cmd.account_id, "ok")
        except Exception as exc:
            await record_quietly(
                self._audit, DEACTIVATE_ACTION, cmd.account_id, outcome_of(exc), logger
            )
            raise
        return DeactivationRequested(due_at=due_at, sessions_ended=ended)

    async def _refuse_obligations(self, account_id: str) -> None:
        """Step 4: FailedPrecondition naming every configured obligation the account has."""
        open_ones = [name for name, count in self._obligations.items() if await count(account_id)]
        if open_ones:
            raise FailedPrecondition(
                "deactivation is refused while the account has obligations: " + ", ".join(open_ones)
            )

    # -- cancelling -----------------------------------------------------------------------

    async def cancel_on_sign_in(self, account_id: str) -> bool:
        """Make a DEACTIVATION_PENDING account active again, inside the login's unit of work.

        Returns False (the sign-in is refused) past the due time, without a pending
        deactivation, or when the pending key is gone (destroyed or lost with Redis).
        """
        pending = await self._records.get(account_id)
        if pending is None or self._clock.now() >= pending.due_at:
            return False
        data_key = await self.recover_data_key(pending)
        case_keys = await self._records.recover_case_keys(pending)
        if data_key is None or case_keys is None:
            return False
        if not await self._accounts.restore_after_deactivation(account_id, data_key):
            return False
        if self._cases is not None:
            await self._cases.take_back_keys(case_keys)
        await self._records.forget(account_id)
        if self._audit is not None:
            await self._audit.record(CANCEL_ACTION, account_id, "sign_in")
        await self._uow.after_commit(lambda: self._destroy_quietly(account_id))
        return True

    async def recover_data_key(self, pending: PendingDeactivation) -> bytes | None:
        """The data key a `deactivations` row holds, as the server can open it now (None once
        its pending key is destroyed): what a copy of the database yields."""
        return await self._records.recover_data_key(pending)

    async def recover_case_keys(self, pending: PendingDeactivation) -> dict[str, bytes] | None:
        """The review case keys a `deactivations` row holds ({} if none; None once its pending
        key is destroyed)."""
        return await self._records.recover_case_keys(pending)

    async def _destroy_quietly(self, account_id: str) -> None:
        """After a cancellation: the pending key is no longer needed (it expires otherwise)."""
        try:
            await self._records.destroy_key(account_id)
        except Exception:
            logger.warning("could not delete the pending key of account %s", account_id)

    # -- completing -------------------------------------------------------------------------

    async def complete_due(self, limit: int = COMPLETE_BATCH) -> int:
        """Complete every deactivation past its due time, `limit` at a time; returns how many.

        One account's failure is logged (by account id) and the others go on; it is
        tried again on the next run.
        """
        total = 0
        while True:
            due = await self._records.due(self._clock.now(), limit)
            done = 0
            for account_id in due:
                try:
                    if await self.complete(account_id):
                        done += 1
                except Exception as exc:
                    logger.warning(
                        "deactivation of account %s not completed: %s",
                        account_id,
                        type(exc).__name__,
                    )
            total += done
            if done < limit:  # a short batch, or one with failures: the rest waits for next run
                return total

    async def complete(self, account_id: str) -> bool:
        """Destroy the account's pending key, then erase it in one unit of work (module
        docstring); False if it is not a deactivation past its due time."""
        pending = await self._records.get(account_id)
        if pending is None or self._clock.now() < pending.due_at:
            return False
        await self._records.destroy_key(account_id)
        stored: list[str] = []
        async with self._uow.begin():
            account = await self._accounts.lock_credentials(account_id)
            if account.status != AccountStatus.DEACTIVATION_PENDING:
                return False
            await self._accounts.erase(account_id)
            await self._records.forget(account_id)
            # Scans a phone's holder sent for a case about the account (a lost phone): the
            # case goes below, and they go with it.
            named = [] if self._cases is None else await self._cases.documents_about(account_id)
            for eraser in self._erasers:
                await eraser.forget_account(account_id)
            if self._documents is not None:
                stored = await self._documents.forget_owner(account_id)
                stored += await self._documents.forget_held_by_phones(named)
            if self._second_factor is not None:
                await self._second_factor.remove(account_id)
            if self._audit is not None:
                await self._audit.record(COMPLETE_ACTION, account_id, "ok")
        if stored and self._documents is not None:
            try:
                await self._documents.delete_stored(stored)
            except Exception:
                logger.warning("document bytes of account %s not all removed", account_id)
        return True


__all__ = [
    "CANCEL_ACTION",
    "COMPLETE_ACTION",
    "DEACTIVATE_ACTION",
    "KNOWN_OBLIGATIONS",
    "OPEN_REVIEW_CASES",
    "PENDING_REAL_NAME",
    "DeactivateCommand",
    "DeactivationFlow",
    "DeactivationRequested",
]
