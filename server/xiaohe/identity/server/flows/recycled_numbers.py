"""Recycled numbers (二次号): a carrier's report, and the check before a reset or recovery code.

A carrier re-issues a cancelled number to a new subscriber. From then on every
code and notice sent to it reaches a stranger, who could reset the old owner's
password or recover the account. Two ways tell us (SECURITY.md H3, T3):

- `RecycledNumberFlow.report` (`CarrierHookService.ReportRecycledNumber`): a
  carrier or number-status feed says the number was re-issued at `recycled_at`.
- `NumberStatusGuard` (in `code_recipients`): before a RESET_PASSWORD or
  RECOVER_ACCOUNT code goes to a number bound longer ago than a setting, a
  number-status service is asked whether it was re-issued since the binding
  (`delivery/number_status.py`).

Either way the handling is the same, `RecycledNumberFlow.mark_recycled`, in one
unit of work:

1. Look the number up. A binding made before `recycled_at` (at the account's
   creation, or at `phone_changed_at`) belongs to the old owner; one made at or
   after it belongs to the new owner and is left alone, as is a number no
   account holds.
2. Mark the binding stale and remove the phone's identifier row
   (`AccountService.mark_phone_stale`, row locked and re-read): the number is
   free for its new owner to register, and SMS login, reset and recovery
   through it behave exactly as for an unknown number (nothing is sent, the
   caller sees the usual answer). The ciphertext stays, read as "no phone", so
   nothing silently unbinds it and no notice goes to it.
3. End every session of the account (`RevokeReason.RECYCLED_NUMBER`); the ids
   reach every worker's revocation list once the unit of work commits.
4. Queue the `phone_recycled` notice to the account's email, if it has one
   (never to the number).
5. Audit: `account.phone.stale` (target the account id, outcome the source)
   with the change, and always `carrier.number.recycled` (target the number's
   keyed tag, never the number; outcome `stale`, `unchanged` or `not_bound`).

A fault anywhere leaves everything as it was; the revocations are published
only after the commit. A repeated report finds no account (its identifier row
is gone) and changes nothing but its audit record: the flow is idempotent. The
answer is the same whether or not an account held the number; the work
differs by the few writes of steps 2-4, which the audit record always present
keeps small (no answer, and no error, says which case it was).

The next password login of such an account answers PHONE_REVERIFY_REQUIRED
with a restricted session (`flows/login.session_subject`); binding a phone
with a fresh BIND_PHONE ticket (`ChannelFlow.bind_phone`) ends the stale state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from typing import Final, Protocol

from xiaohe.identity.server.accounts.models import AccountCredentials, PersonalData
from xiaohe.identity.server.audit.sink import AuditSink, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.digests import CodeDigests
from xiaohe.identity.server.codes.models import Channel
from xiaohe.identity.server.delivery.number_status import NumberStatus, NumberStatusCheck
from xiaohe.identity.server.sessions.models import RevokeReason
from xiaohe.identity.server.shared.identifiers import mask_phone
from xiaohe.identity.server.shared.validation import Violations, phone_field
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

REPORT_ACTION: Final = "carrier.number.recycled"
STALE_ACTION: Final = "account.phone.stale"
CHECK_ACTION: Final = "code.number_status"
NOTICE_KIND: Final = "phone_recycled"

SOURCE_REPORT: Final = "report"
SOURCE_NUMBER_STATUS: Final = "number_status"

MAX_CLOCK_SKEW_SECONDS: Final = 300.0
"""How far in our future a reported `recycled_at` may lie (the carrier's clock may run ahead)."""

PHONE_FIELD: Final = "phone"
RECYCLED_AT_FIELD: Final = "recycled_at"


class StaleMarking(Protocol):
    """What the flow needs of the accounts (`accounts.service.AccountService`)."""

    async def find_by_phone(self, e164: str) -> AccountCredentials | None:
        """The account whose (current, not stale) phone is `e164`, or None."""
        ...

    async def mark_phone_stale(self, account_id: str, phone: str, *, bound_before: float) -> bool:
        """Mark the phone stale and free its identifier, if bound before `bound_before`."""
        ...

    async def get_personal_data(self, account_id: str) -> PersonalData:
        """The account's decrypted personal data."""
        ...


class SessionRevoker(Protocol):
    """Ends sessions (`sessions.service.SessionService`)."""

    async def revoke_all(self, account_id: str, reason: str, *, keep: str = "") -> int:
        """Revoke every session of the account; inside a unit of work, part of it."""
        ...


class NoticeSender(Protocol):
    """Security notices (`delivery.notices.Notices`)."""

    async def send(self, kind: str, *, phone: str = "", email: str = "", **fields: str) -> int:
        """Queue the notice `kind` to the addresses given."""
        ...


class RecycledNumberFlow:
    """Handles numbers reported or found recycled (steps in the module docstring)."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: StaleMarking,
        sessions: SessionRevoker,
        notices: NoticeSender,
        clock: Clock,
        pseudonym_key: bytes,
        audit: AuditSink | None = None,
        allowed_country_codes: Collection[str] = ("86",),
    ) -> None:
        self._uow = uow
        self._accounts = accounts
        self._sessions = sessions
        self._notices = notices
        self._clock = clock
        self._digests = CodeDigests(pseudonym_key)
        self._audit = audit
        self._allowed_country_codes = tuple(allowed_country_codes)

    def __repr__(self) -> str:
        return "RecycledNumberFlow()"

    async def report(self, phone: str, recycled_at: float, *, client_id: str) -> None:
        """A carrier reports `phone` re-issued at `recycled_at` (epoch seconds).

        Raises InvalidArgument (`phone`: not a number of an allowed country;
        `recycled_at`: not a time after 1970 and at most a few minutes ahead of
        ours) or Unavailable. Answers the same whether or not an account held it.
        """
        v = Violations()
        e164 = phone_field(v, PHONE_FIELD, phone, self._allowed_country_codes)
        if not math.isfinite(recycled_at) or recycled_at <= 0:
            v.add(RECYCLED_AT_FIELD, "must be a time after 1970-01-01")
        elif recycled_at > self._clock.now() + MAX_CLOCK_SKEW_SECONDS:
            v.add(RECYCLED_AT_FIELD, "must not lie in the future")
        v.raise_if_any()
        outcome = await self.mark_recycled(e164, recycled_at, source=SOURCE_REPORT)
        logger.info("recycled-number report from client %s: %s", client_id, outcome)

    async def mark_recycled(self, e164: str, recycled_at: float, *, source: str) -> str:
        """Steps 1-5 for a normalised number; returns the audit outcome (for logs and tests)."""
        tag = self._digests.destination_tag(Channel.SMS, e164)
        account = await self._accounts.find_by_phone(e164)
        outcome = "not_bound"
        async with self._uow.begin():
            if account is not None:
                outcome = "unchanged"
                if await self._accounts.mark_phone_stale(
                    account.account_id, e164, bound_before=recycled_at
                ):
                    outcome = "stale"
                    await self._end_binding(account.account_id, e164, source)
            if self._audit is not None:
                await self._audit.record(REPORT_ACTION, tag, outcome)
        return outcome

    async def _end_binding(self, account_id: str, e164: str, source: str) -> None:
        """Steps 3-5 for an account whose binding was just marked stale."""
        await self._sessions.revoke_all(account_id, RevokeReason.RECYCLED_NUMBER)
        email = (await self._accounts.get_personal_data(account_id)).email
        if email:
            await self._notices.send(NOTICE_KIND, email=email, old_phone=mask_phone(e164))
        if self._audit is not None:
            await self._audit.record(STALE_ACTION, account_id, source)


class NumberStatusGuard:
    """Asks a number-status service before a reset or recovery code goes to an old binding.

    A binding younger than `min_binding_age_seconds` is trusted without asking
    (a number is quarantined for months before a carrier re-issues it, and every
    question costs money and time). For an older one the service is asked
    whether the number was re-issued since the binding: RECYCLED or CANCELLED
    runs the report's handling (`RecycledNumberFlow.mark_recycled`, as of now)
    and the code is not sent; the caller sees the usual answer.

    UNKNOWN (the service cannot tell, refuses, fails or times out) follows
    `send_when_unknown`, by default True (fail open): the service cannot tell
    for whole classes of numbers (virtual operators, ported numbers) and fails
    with the network, and failing closed would lock every such owner out of
    reset and recovery, while a recycled number is still caught by the
    carriers' reports. Operators who prefer the opposite trade set it False.
    """

    def __init__(
        self,
        *,
        check: NumberStatusCheck,
        flow: RecycledNumberFlow,
        clock: Clock,
        pseudonym_key: bytes,
        min_binding_age_seconds: float,
        send_when_unknown: bool = True,
        audit: AuditSink | None = None,
    ) -> None:
        if min_binding_age_seconds < 0:
            raise ValueError("min_binding_age_seconds must not be negative")
        self._check = check
        self._flow = flow
        self._clock = clock
        self._digests = CodeDigests(pseudonym_key)
        self._min_age = min_binding_age_seconds
        self._send_when_unknown = send_when_unknown
        self._audit = audit

    def __repr__(self) -> str:
        return f"NumberStatusGuard(min_binding_age_seconds={self._min_age})"

    async def may_send(self, account: AccountCredentials, e164: str) -> bool:
        """Whether a reset or recovery code may go to `e164`, the account's bound phone."""
        now = self._clock.now()
        bound_at = account.phone_bound_at
        if now - bound_at < self._min_age:
            return True
        status = await self._check.status_since(e164, bound_at)
        # The question itself is worth a record: a digest of the number went out.
        tag = self._digests.destination_tag(Channel.SMS, e164)
        await record_quietly(self._audit, CHECK_ACTION, tag, status.value, logger)
        if status in (NumberStatus.RECYCLED, NumberStatus.CANCELLED):
            await self._flow.mark_recycled(e164, now, source=SOURCE_NUMBER_STATUS)
            return False
        if status is NumberStatus.UNKNOWN:
            return self._send_when_unknown
        return True


__all__ = [
    "CHECK_ACTION",
    "NOTICE_KIND",
    "REPORT_ACTION",
    "STALE_ACTION",
    "NumberStatusGuard",
    "RecycledNumberFlow",
]
