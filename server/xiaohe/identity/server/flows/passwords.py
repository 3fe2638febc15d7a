"""Password flows: change (`AccountService.ChangePassword`) and reset (`ResetPassword`).

Change (SECURITY.md P2, P3, B1–B3, T3, H2): the signed-in account gives its
current password, checked like a login (`credentials.reauth.PasswordCheck`: a
wrong one counts toward the brute-force lock), and a new one that passes the
registration policy. One unit of work stores the new hash (conditional on the
old one), ends the other sessions unless asked to keep them (T3: ending them is
the default, so a caller that leaves the choice out gets the safe one), queues
the `password_changed` notice to the bound phone and email, and audits
`account.password.change`.

Reset (privacy policy 一.2, P3, B4): the account is named by an identifier (login
name, phone, USCC, ID number, email); the ticket is a RESET_PASSWORD ticket for
a phone or email bound to that account, or a recovery grant
(`recovery.RecoveryFlow`) for it; a real-name verified natural person must also
give the real name. An unknown identifier, a ticket for another account's channel
and a name mismatch answer alike (TicketInvalid on `ticket`), send nothing, and
take as long (one Argon2 operation each); the ticket is spent either way. On
success every session ends, the `password_changed` notice is queued, and
`account.password.reset` is audited, in one unit of work.

Change, in order:

1. Shapes: `current_password` present and at most 4096 characters; the new
   password through the policy with the login name and phone as context words
   (InvalidArgument on `new_password`), and for an account that holds an operator
   role at least 12 characters (P5, `credentials.operators`). Nothing is hashed
   or counted yet.
2. The current password, through `PasswordCheck` (the login throttle: a wrong
   one is a failed login for that account and IP, a locked pair refuses even the
   right one, after the same dummy Argon2 verify) → InvalidCredentials.
3. Only once the current password is proven: the new one must differ from it
   (after NFKC, as it is hashed). Comparing earlier would tell a caller who does
   not know the current password whether a guess was right.
4. The new hash (Argon2, before the transaction).
5. One unit of work: the hash, conditional on the one just verified (a
   concurrent change or reset wins; this one is Conflict and changes nothing);
   unless `keep_other_sessions`, every session but the caller's is revoked
   (published to the revocation list after the commit); the notice; the audit.

Reset, in order:

1. Shapes, without looking anything up: `identifier`, `ticket` and `real_name`
   bounded, and the new password through the policy with only the identifier
   as typed as context (InvalidArgument, the ticket untouched).
2. The identifier, classified and normalised once in step 1 (which also takes
   the password context from it), names the account; a malformed one is an
   unknown account (as at login). The account is looked up.
3. The ticket is checked, not consumed: a live RESET_PASSWORD ticket (SMS, EMAIL
   or a recovery grant), or TicketInvalid (wrong purpose, expired, used: the
   ticket service's rules, a mismatch is not spent).
4. Bound? An SMS or EMAIL ticket proves the account whose blind-index key of
   that destination it is; a grant names its account id. The ticket proves
   the named account only if that is the same account (active). The lookup of
   the ticket's holder runs for unknown identifiers too.
5. For a bound ticket only: the new password against the account's context words
   (login name, phone); a weak one is InvalidArgument and the ticket stays
   usable. An unbound ticket gets only the check of step 1, so this step cannot
   tell a stranger anything about the account an identifier names.
6. One Argon2 hash of the new password, on every path (the decoy for the unknown
   identifier, the foreign ticket and the wrong name is a real hash thrown away).
7. The ticket is consumed, on every path.
8. Unbound, or a real-name verified natural person whose `real_name` differs
   (NFKC, trimmed, compared in constant time) → TicketInvalid, the same error as
   a wrong ticket; nothing is written or sent. The ticket was for this account's
   channel only when bound, so nothing is sent to anyone: an unknown identifier
   has no channel, a foreign ticket's holder did not ask. For an account that
   holds an operator role, a new password under 12 characters is InvalidArgument
   here, once the proof is complete (P5; the ticket is spent: ask for a new code).
9. One unit of work: the hash (unconditional: the ticket proves the right to
   set it, whatever it is now), every session revoked, the notice, the audit.

Redis side effects. The throttle scripts of a change and the ticket's consumption
in a reset run before the unit of work (the consumption is what lets exactly one
of two concurrent resets win, so it cannot wait for the commit); they are not
compensated: a reset whose commit fails leaves its ticket spent, which errs on
the closed side (the user asks for a new code). The revocations are published to
the revocation list after the commit (`SessionService.revoke_all`), and the
notice is handed to the dispatcher after it (`Outbox`).

Failures after the request shape are audited through the group commit
(`record_quietly`), target the account id or `unknown`, never the identifier.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from xiaohe.identity.server.accounts.models import (
    AccountCredentials,
    AccountStatus,
    PersonalData,
    SubjectType,
)
from xiaohe.identity.server.audit.sink import AuditSink, outcome_of, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.models import Channel, Purpose, TicketClaims, TicketConsumer
from xiaohe.identity.server.credentials.operators import OperatorPasswords
from xiaohe.identity.server.credentials.passwords import normalise
from xiaohe.identity.server.errors import Conflict, FieldViolation, InvalidArgument, TicketInvalid
from xiaohe.identity.server.flows.registration import PasswordChecker, PasswordHashing
from xiaohe.identity.server.sessions.models import RevokeReason
from xiaohe.identity.server.shared.identifiers import (
    IdentifierKind,
    normalize,
    normalize_identifier_or_none,
    today_in_china,
)
from xiaohe.identity.server.shared.validation import (
    MAX_IDENTIFIER_CHARS,
    MAX_NAME_CHARS,
    MAX_TICKET_CHARS,
    UNKNOWN_SUBJECT,
    Violations,
    check_password_shape,
    free_text,
)
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

CHANGE_ACTION: Final = "account.password.change"
RESET_ACTION: Final = "account.password.reset"
NOTICE_KIND: Final = "password_changed"
"""The notice a change or reset queues to the bound phone and email (SECURITY H2)."""

CURRENT_FIELD: Final = "current_password"
NEW_FIELD: Final = "new_password"
IDENTIFIER_FIELD: Final = "identifier"
TICKET_FIELD: Final = "ticket"
NAME_FIELD: Final = "real_name"

_CONTEXT_KINDS: Final = frozenset({IdentifierKind.LOGIN_NAME, IdentifierKind.PHONE})
"""Identifier kinds that are context words of the password policy (login name, phone)."""


@dataclass(frozen=True)
class ChangePasswordCommand:
    """The signed-in account changes its password."""

    account_id: str
    session_id: str
    current_password: str = field(repr=False)
    new_password: str = field(repr=False)
    keep_other_sessions: bool
    """Keep the account's other sessions; False (the default of the API) ends them (T3)."""
    ip: str


@dataclass(frozen=True)
class ResetPasswordCommand:
    """Someone who proves a channel of the account (or holds a recovery grant) resets it."""

    identifier: str = field(repr=False)
    identifier_kind: IdentifierKind
    ticket: str = field(repr=False)
    new_password: str = field(repr=False)
    real_name: str = field(repr=False)
    ip: str


class PasswordAccounts(Protocol):
    """What the password flows need of the accounts (`accounts.service.AccountService`)."""

    async def find_credentials(
        self, kind: IdentifierKind, normalised: str
    ) -> AccountCredentials | None:
        """The account holding a normalised identifier, or None."""
        ...

    async def get_credentials(self, account_id: str) -> AccountCredentials:
        """The credentials of an account; NotFound if none."""
        ...

    async def get_personal_data(self, account_id: str) -> PersonalData:
        """The account's decrypted personal data; NotFound if none."""
        ...

    async def set_password_hash(
        self, account_id: str, new_hash: str, *, expected_old_hash: str | None = None
    ) -> bool:
        """Store a new password hash, only while the stored one is `expected_old_hash` if given."""
        ...


class CurrentPassword(Protocol):
    """Re-authentication under the login throttle (`credentials.reauth.PasswordCheck`)."""

    async def verify(self, account_id: str, password_hash: str, password: str, ip: str) -> None:
        """Return if `password` is the account's; InvalidCredentials otherwise (or when locked)."""
        ...


class SessionRevoker(Protocol):
    """Ends sessions (`sessions.service.SessionService`)."""

    async def revoke_all(self, account_id: str, reason: str, *, keep: str = "") -> int:
        """Revoke every session of the account but `keep`; inside a unit of work, part of it."""
        ...


class NoticeSender(Protocol):
    """Security notices through the outbox (`delivery.notices.Notices`)."""

    async def send(self, kind: str, *, phone: str = "", email: str = "", **fields: str) -> int:
        """Queue the notice `kind` to each address given; returns how many."""
        ...


@dataclass(frozen=True)
class _ResetTarget:
    """What steps 2-4 of a reset found: the named account, what the ticket says and, when
    the ticket proves that account (bound), its personal data."""

    account: AccountCredentials | None
    claims: TicketClaims
    data: PersonalData | None = None

    @property
    def proven(self) -> tuple[AccountCredentials, PersonalData] | None:
        """The account and its data if the ticket proves it, else None."""
        if self.account is None or self.data is None:
            return None
        return self.account, self.data


class PasswordFlow:
    """Changes and resets passwords (steps and their reasons in the module docstring)."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: PasswordAccounts,
        sessions: SessionRevoker,
        tickets: TicketConsumer,
        password_check: CurrentPassword,
        password_policy: PasswordChecker,
        hasher: PasswordHashing,
        notices: NoticeSender,
        clock: Clock,
        allowed_country_codes: Collection[str] = ("86",),
        audit: AuditSink | None = None,
        operator_passwords: OperatorPasswords | None = None,
    ) -> None:
        self._operator_passwords = operator_passwords
        self._uow = uow
        self._accounts = accounts
        self._sessions = sessions
        self._tickets = tickets
        self._password_check = password_check
        self._policy = password_policy
        self._hasher = hasher
        self._notices = notices
        self._clock = clock
        self._allowed_country_codes = tuple(allowed_country_codes)
        self._audit = audit

    def __repr__(self) -> str:
        return "PasswordFlow()"

    # -- change ------------------------------------------------------------------------

    async def change(self, cmd: ChangePasswordCommand) -> int:
        """Change the password; returns how many other sessions ended.

        Raises InvalidArgument (`current_password`, `new_password`),
        InvalidCredentials (wrong current password, or the pair is locked),
        Conflict (a concurrent change won), Overloaded or Unavailable.
        """
        shape = Violations()
        check_password_shape(shape, cmd.current_password, field_name=CURRENT_FIELD)
        shape.raise_if_any()
        try:
            account = await self._accounts.get_credentials(cmd.account_id)
            data = await self._accounts.get_personal_data(cmd.account_id)
            new_password = self._policy.check(
                cmd.new_password, context=_context(account, data), field=NEW_FIELD
            )
            await self._check_operator(account.account_id, new_password)
            await self._password_check.verify(
                account.account_id, account.password_hash, cmd.current_password, cmd.ip
            )
            if new_password == normalise(cmd.current_password):
                raise InvalidArgument(
                    FieldViolation(NEW_FIELD, "must differ from the current password")
                )
            new_hash = await self._hasher.hash(new_password)
            async with self._uow.begin():
                stored = await self._accounts.set_password_hash(
                    account.account_id, new_hash, expected_old_hash=account.password_hash
                )
                if not stored:
                    raise Conflict("the password was changed meanwhile; sign in again")
                ended = 0
                if not cmd.keep_other_sessions:
                    ended = await self._sessions.revoke_all(
                        account.account_id, RevokeReason.PASSWORD_CHANGE, keep=cmd.session_id
                    )
                await self._notices.send(NOTICE_KIND, phone=data.phone, email=data.email)
                if self._audit is not None:
                    await self._audit.record(CHANGE_ACTION, account.account_id, "ok")
        except Exception as exc:
            await record_quietly(
                self._audit, CHANGE_ACTION, cmd.account_id, outcome_of(exc), logger
            )
            raise
        return ended

    # -- reset -------------------------------------------------------------------------

    async def reset(self, cmd: ResetPasswordCommand) -> int:
        """Reset the password; returns how many sessions ended.

        Raises InvalidArgument (request fields, a weak new password: the ticket
        stays usable), TicketInvalid on `ticket` (a bad ticket, an unknown
        identifier, a ticket for another account's channel and a wrong real name
        alike), Overloaded or Unavailable.
        """
        new_password, typed = self._check_reset_request(cmd)
        target_id = UNKNOWN_SUBJECT
        outcome = ""
        try:
            found = await self._reset_target(cmd, typed)
            if found.account is not None:
                target_id = found.account.account_id
            proven = found.proven
            if proven is not None:  # step 5
                new_password = self._policy.check(
                    new_password, context=_context(*proven), field=NEW_FIELD
                )
            new_hash = await self._hasher.hash(new_password)  # step 6: on every path
            spent = await self._tickets.consume(cmd.ticket, purpose=Purpose.RESET_PASSWORD)
            if (spent.purpose, spent.channel, spent.destination) != (
                Purpose.RESET_PASSWORD,
                found.claims.channel,
                found.claims.destination,
            ):
                raise TicketInvalid()  # defence in depth: a consumed ticket says what check said
            if proven is None:
                outcome = "unknown_account" if found.account is None else "ticket_unbound"
                raise TicketInvalid()
            account, data = proven
            if not self._name_matches(account, data, cmd.real_name):
                outcome = "name_mismatch"
                raise TicketInvalid()
            # Only now, so that nobody short of the full proof learns the account is an
            # operator's; the ticket is spent by then (ask for another code).
            await self._check_operator(account.account_id, new_password)
            ended = await self._store_reset(account, data, new_hash)
        except Exception as exc:
            await record_quietly(
                self._audit, RESET_ACTION, target_id, outcome or outcome_of(exc), logger
            )
            raise
        return ended

    async def _check_operator(self, account_id: str, new_password: str) -> None:
        """InvalidArgument on `new_password` if a role holder's is too short (P5)."""
        if self._operator_passwords is not None:
            await self._operator_passwords.check_new(account_id, new_password, NEW_FIELD)

    def _check_reset_request(
        self, cmd: ResetPasswordCommand
    ) -> tuple[str, tuple[IdentifierKind, str] | None]:
        """Step 1: every field bounded, the password through the policy; InvalidArgument lists
        every violation. Returns the normalised new password, and the identifier as (kind,
        normalised value), or None for one no account can hold (step 2 looks it up)."""
        v = Violations()
        if not cmd.identifier.strip():
            v.add(IDENTIFIER_FIELD, "must not be empty")
        elif len(cmd.identifier) > MAX_IDENTIFIER_CHARS:
            v.add(IDENTIFIER_FIELD, f"must be at most {MAX_IDENTIFIER_CHARS} characters")
        if not cmd.ticket.strip():
            v.add(TICKET_FIELD, "must be a ticket from VerifyCode or a recovery grant")
        elif len(cmd.ticket) > MAX_TICKET_CHARS:
            v.add(TICKET_FIELD, f"must be at most {MAX_TICKET_CHARS} characters")
        free_text(v, NAME_FIELD, cmd.real_name, MAX_NAME_CHARS)
        typed = self._normalise(cmd.identifier, cmd.identifier_kind) if not v.items else None
        context = [typed[1]] if typed is not None and typed[0] in _CONTEXT_KINDS else []
        new_password = ""
        try:
            new_password = self._policy.check(cmd.new_password, context=context, field=NEW_FIELD)
        except InvalidArgument as exc:
            v.items.extend(exc.violations)
        v.raise_if_any()
        return new_password, typed

    async def _reset_target(
        self, cmd: ResetPasswordCommand, typed: tuple[IdentifierKind, str] | None
    ) -> _ResetTarget:
        """Steps 2-4 (and the data step 5 needs): the account `typed` names (the identifier
        as step 1 normalised it, None for one no account can hold), and whether the ticket
        proves it. TicketInvalid only for a ticket that proves nothing at all."""
        account = None if typed is None else await self._accounts.find_credentials(*typed)
        if account is not None and account.status != AccountStatus.ACTIVE:
            account = None
        claims = await self._tickets.check(cmd.ticket, purpose=Purpose.RESET_PASSWORD)
        holder = await self._holder(claims)
        if account is None or not hmac.compare_digest(
            holder.encode("utf-8"), account.account_id.encode("utf-8")
        ):  # not bound: the ticket does not prove the named account
            return _ResetTarget(account=account, claims=claims)
        data = await self._accounts.get_personal_data(account.account_id)
        return _ResetTarget(account=account, claims=claims, data=data)

    async def _holder(self, claims: TicketClaims) -> str:
        """The id of the account a ticket proves control of, or "" for none.

        A grant names its account; an SMS or EMAIL ticket proves whoever holds
        that destination now, found through its blind-index key.
        """
        if claims.channel is Channel.ACCOUNT:
            return claims.destination
        kind = IdentifierKind.PHONE if claims.channel is Channel.SMS else IdentifierKind.EMAIL
        holder = await self._accounts.find_credentials(kind, claims.destination)
        return "" if holder is None else holder.account_id

    def _name_matches(self, account: AccountCredentials, data: PersonalData, given: str) -> bool:
        """Step 8: a real-name verified natural person must give the name on record.

        Both sides NFKC-normalised and trimmed, compared in constant time; an
        empty name never matches. Other accounts need no name (one given is ignored).
        """
        if account.subject_type is not SubjectType.NATURAL_PERSON or account.real_name_level < 1:
            return True
        on_record = normalize(data.name)
        typed = normalize(given)
        if not on_record or not typed:
            return False
        return hmac.compare_digest(on_record.encode("utf-8"), typed.encode("utf-8"))

    async def _store_reset(
        self, account: AccountCredentials, data: PersonalData, new_hash: str
    ) -> int:
        """Step 9: hash, sessions, notice and audit in one unit of work; returns sessions ended."""
        async with self._uow.begin():
            await self._accounts.set_password_hash(account.account_id, new_hash)
            ended = await self._sessions.revoke_all(
                account.account_id, RevokeReason.PASSWORD_CHANGE
            )
            await self._notices.send(NOTICE_KIND, phone=data.phone, email=data.email)
            if self._audit is not None:
                await self._audit.record(RESET_ACTION, account.account_id, "ok")
        return ended

    # -- common ------------------------------------------------------------------------

    def _normalise(
        self, identifier: str, kind: IdentifierKind
    ) -> tuple[IdentifierKind, str] | None:
        """(kind, normalised value), or None for an identifier no account can hold."""
        return normalize_identifier_or_none(
            kind,
            identifier,
            allowed_country_codes=self._allowed_country_codes,
            today=today_in_china(self._clock),
        )


def _context(account: AccountCredentials, data: PersonalData) -> Sequence[str]:
    """Context words of the account for the password policy: its login name and phone."""
    return [word for word in (account.login_name, data.phone) if word]


__all__ = [
    "CHANGE_ACTION",
    "RESET_ACTION",
    "ChangePasswordCommand",
    "PasswordFlow",
    "ResetPasswordCommand",
]
