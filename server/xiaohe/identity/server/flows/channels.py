"""Binding contact points: a phone to an account without one, an email, and removing it.

BindPhone (privacy policy 一.4): login name + password + a BIND_PHONE ticket for
the phone, for an account that has no phone (one that has uses ChangePhone).
The password is checked like a login (`credentials.reauth.PasswordCheck`).

BindEmail: the signed-in account gives its current password (checked like a
login, as for UnbindEmail) and proves the new address with a BIND_EMAIL ticket;
when an email is bound already, it also proves the current one with a BIND_EMAIL
ticket for it (SECURITY.md H1). The password is required for a first email too:
a bound email proves ChangePhone and ResetPassword, so a stolen access token
alone must not be able to add one. UnbindEmail needs the current password.

A phone or email bound to another account is ALREADY_EXISTS, never saying whose.
Each change ends the account's other sessions (T3), notifies the old channels
(H2: `email_changed` to the old address and the phone; `phone_changed`-style
wording for a first phone) and is audited, in one unit of work.

Every method runs its steps in the same order, cheapest and least revealing first:

1. Shapes. Every field is checked and normalised; all violations come back in one
   InvalidArgument. Nothing has been spent: no ticket, no throttle slot, no hash.
2. Tickets are checked, not consumed (`PresentedTicket.check`): a ticket of the
   wrong purpose, for another destination, expired or used is TicketInvalid on
   its own request field, and the caller learns nothing about any account first.
3. The password, then the account's state. BindPhone looks the login name up,
   BindEmail and UnbindEmail take the signed-in account; the password is checked
   under the login throttle (a wrong one counts toward the brute-force lock, B1;
   for BindPhone an unknown or malformed login name runs the same steps against
   the shared `unknown` pseudo-account and answers the same InvalidCredentials,
   B3). Only then does the answer depend on the account: FailedPrecondition when
   it has a phone already (BindPhone), has the address bound already or lacks
   the current-email proof (BindEmail), or has no email to remove (UnbindEmail);
   and the current-email ticket is checked against the bound address (BindEmail).
4. A value held by another account is ALREADY_EXISTS on the request field
   (`phone`, `email`), with the tickets still usable: the caller has proven the
   value is theirs, and may pick another without a new code.
5. The tickets are consumed (Redis), before the unit of work, which must stay
   free of slow steps (`storage.database`).
6. One unit of work: the contact change (`AccountService.replace_contact`, which
   locks the row and re-reads it, so of two concurrent changes exactly one wins
   and the other gets Conflict), the end of the other sessions (their ids are
   published to the revocation list once it commits), the notices (outbox rows)
   and the audit record. A fault anywhere in it leaves the account, its
   sessions and the outbox as they were; the tickets are spent by then.

Refusals after the request shape is valid are audited (`account.phone.bind`,
`account.email.bind`/`.change`/`.unbind`; target the account id, or `unknown`),
outside the unit of work.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Final, Protocol

from xiaohe.identity.server.accounts.models import AccountCredentials, AccountStatus, PersonalData
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.sink import AuditSink, outcome_of, record_quietly
from xiaohe.identity.server.codes.models import Channel, Purpose, TicketConsumer
from xiaohe.identity.server.delivery.notices import Notices
from xiaohe.identity.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    InvalidCredentials,
    TicketInvalid,
)
from xiaohe.identity.server.sessions.models import RevokeReason
from xiaohe.identity.server.shared.identifiers import (
    IdentifierKind,
    mask_email,
    mask_phone,
    normalize_email,
    normalize_login_name,
)
from xiaohe.identity.server.shared.validation import (
    MAX_IDENTIFIER_CHARS,
    UNKNOWN_SUBJECT,
    Violations,
    check_password_shape,
    check_ticket_shape,
    phone_field,
)
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

BIND_PHONE_ACTION: Final = "account.phone.bind"
BIND_EMAIL_ACTION: Final = "account.email.bind"
CHANGE_EMAIL_ACTION: Final = "account.email.change"
UNBIND_EMAIL_ACTION: Final = "account.email.unbind"


@dataclass(frozen=True)
class BindPhoneCommand:
    """Bind a first phone to an account, proven by login name and password."""

    login_name: str
    password: str = field(repr=False)
    phone: str = field(repr=False)
    phone_ticket: str = field(repr=False)
    ip: str


@dataclass(frozen=True)
class BindEmailCommand:
    """The signed-in account binds (or replaces) its email, re-authenticated by password."""

    account_id: str
    session_id: str
    email: str = field(repr=False)
    email_ticket: str = field(repr=False)
    current_email_ticket: str = field(repr=False)
    password: str = field(repr=False)
    ip: str


@dataclass(frozen=True)
class UnbindEmailCommand:
    """The signed-in account removes its email, re-authenticated by password."""

    account_id: str
    session_id: str
    password: str = field(repr=False)
    ip: str


class Reauthentication(Protocol):
    """The password checked like a login (`credentials.reauth.PasswordCheck`)."""

    async def verify(self, account_id: str, password_hash: str, password: str, ip: str) -> None:
        """Return if `password` is the account's; InvalidCredentials otherwise (or locked)."""
        ...


class SessionRevoker(Protocol):
    """Ends sessions (`sessions.service.SessionService`)."""

    async def revoke_all(self, account_id: str, reason: str, *, keep: str = "") -> int:
        """Revoke every session of the account but `keep`; inside a unit of work, part of it."""
        ...


@dataclass
class _Attempt:
    """What a refused attempt is audited as; filled in as the flow goes."""

    action: str
    target: str = UNKNOWN_SUBJECT
    to_audit: bool = False
    """True once the request shape was valid (malformed requests are not audited)."""


@dataclass(frozen=True)
class PresentedTicket:
    """A ticket a request presents in `field_name`: what it must be for, and where."""

    ticket: str = field(repr=False)
    field_name: str
    purpose: Purpose
    channel: Channel
    destination: str = field(repr=False)

    async def check(self, tickets: TicketConsumer) -> None:
        """TicketInvalid on `field_name` unless the ticket would be accepted; it stays usable."""
        await self._present(tickets, use_up=False)

    async def consume(self, tickets: TicketConsumer) -> None:
        """Use the ticket up, or TicketInvalid on `field_name` (a concurrent call used it)."""
        await self._present(tickets, use_up=True)

    async def _present(self, tickets: TicketConsumer, *, use_up: bool) -> None:
        """Check or consume the ticket; every refusal is TicketInvalid on `field_name`."""
        present = tickets.consume if use_up else tickets.check
        try:
            claims = await present(
                self.ticket,
                purpose=self.purpose,
                channel=self.channel,
                destination=self.destination,
            )
        except TicketInvalid:
            raise TicketInvalid(field=self.field_name) from None
        # Defence in depth: the ticket service matched these already.
        if (claims.purpose, claims.channel, claims.destination) != (
            self.purpose,
            self.channel,
            self.destination,
        ):
            raise TicketInvalid(field=self.field_name)


async def own_channel_ticket(
    tickets: TicketConsumer, ticket: str, *, purpose: Purpose, field_name: str, data: PersonalData
) -> PresentedTicket:
    """The ticket as it must be presented, if its claims name the account's own phone or
    email (`data`); TicketInvalid on `field_name` otherwise. Nothing is used up."""
    try:
        claims = await tickets.check(ticket, purpose=purpose)
    except TicketInvalid:
        raise TicketInvalid(field=field_name) from None
    own = {Channel.SMS: data.phone, Channel.EMAIL: data.email}.get(claims.channel, "")
    if not own or not hmac.compare_digest(claims.destination.encode(), own.encode()):
        raise TicketInvalid(field=field_name)
    return PresentedTicket(
        ticket=ticket,
        field_name=field_name,
        purpose=purpose,
        channel=claims.channel,
        destination=own,
    )


class ChannelFlow:
    """Binds and unbinds phones and emails (steps in the module docstring)."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: AccountService,
        tickets: TicketConsumer,
        passwords: Reauthentication,
        sessions: SessionRevoker,
        notices: Notices,
        audit: AuditSink | None = None,
        allowed_country_codes: Collection[str] = ("86",),
    ) -> None:
        self._uow = uow
        self._accounts = accounts
        self._tickets = tickets
        self._passwords = passwords
        self._sessions = sessions
        self._notices = notices
        self._audit = audit
        self._allowed_country_codes = tuple(allowed_country_codes)

    def __repr__(self) -> str:
        return "ChannelFlow()"

    # -- BindPhone ------------------------------------------------------------------------

    async def bind_phone(self, cmd: BindPhoneCommand) -> str:
        """Bind the phone; returns it masked.

        Raises InvalidArgument, TicketInvalid (`phone_ticket`), InvalidCredentials
        (unknown login name, wrong password and a locked account alike),
        FailedPrecondition (the account has a phone: use ChangePhone),
        AlreadyExists (`phone`), Conflict, Overloaded or Unavailable.

        The password gate comes before anything that depends on the account, so
        only its holder learns whether the account has a phone. Binding a first
        phone also starts the phone-change cooling-off window
        (`AccountService.replace_contact` records the time), so a phone bound by
        password alone cannot be changed again, or used for recovery, at once.
        """
        attempt = _Attempt(BIND_PHONE_ACTION)
        try:
            phone, login_name = self._bind_phone_request(cmd)
            attempt.to_audit = True
            phone_ticket = PresentedTicket(
                cmd.phone_ticket, "phone_ticket", Purpose.BIND_PHONE, Channel.SMS, phone
            )
            await phone_ticket.check(self._tickets)
            account = await self._authenticate(attempt, login_name, cmd.password, cmd.ip)
            current = await self._accounts.get_personal_data(account.account_id)
            if current.phone:
                raise FailedPrecondition(
                    "the account has a phone already: change it with AccountService.ChangePhone"
                )
            await self._refuse_taken("phone", phone)
            await phone_ticket.consume(self._tickets)
            try:
                async with self._uow.begin():
                    await self._accounts.replace_contact(
                        account.account_id, "phone", expected="", new=phone
                    )
                    await self._sessions.revoke_all(account.account_id, RevokeReason.PHONE_CHANGE)
                    await self._notices.send(
                        "phone_bound", email=current.email, new_phone=mask_phone(phone)
                    )
                    if self._audit is not None:
                        await self._audit.record(BIND_PHONE_ACTION, account.account_id, "ok")
            except AlreadyExists:
                raise AlreadyExists("phone") from None  # bound elsewhere meanwhile
        except Exception as exc:
            await self._refused(attempt, exc)
            raise
        return mask_phone(phone)

    def _bind_phone_request(self, cmd: BindPhoneCommand) -> tuple[str, str | None]:
        """Step 1: (normalised phone, normalised login name or None if malformed)."""
        v = Violations()
        if not cmd.login_name.strip():
            v.add("login_name", "must not be empty")
        elif len(cmd.login_name) > MAX_IDENTIFIER_CHARS:
            v.add("login_name", f"must be at most {MAX_IDENTIFIER_CHARS} characters")
        check_password_shape(v, cmd.password)
        phone = phone_field(v, "phone", cmd.phone, self._allowed_country_codes)
        check_ticket_shape(v, "phone_ticket", cmd.phone_ticket, required=True)
        v.raise_if_any()
        try:
            login_name: str | None = normalize_login_name(cmd.login_name)
        except InvalidArgument:
            # Like login: a name no account can hold is an unknown one, not a lecture on rules.
            login_name = None
        return phone, login_name

    async def _authenticate(
        self, attempt: _Attempt, login_name: str | None, password: str, ip: str
    ) -> AccountCredentials:
        """Step 3: the active account whose password this is, or InvalidCredentials.

        An unknown (or malformed) login name is checked against the shared
        `unknown` pseudo-account with an empty hash: one dummy Argon2 verify and
        one counted failure, exactly what a wrong password costs (B3).
        """
        account = None
        if login_name is not None:
            account = await self._accounts.find_credentials(IdentifierKind.LOGIN_NAME, login_name)
        if account is None:
            await self._passwords.verify(UNKNOWN_SUBJECT, "", password, ip)
            raise InvalidCredentials()  # unreachable: an empty hash never verifies
        attempt.target = account.account_id
        await self._passwords.verify(account.account_id, account.password_hash, password, ip)
        if account.status != AccountStatus.ACTIVE:
            raise InvalidCredentials()  # after the verify, so the status does not show in timing
        return account

    # -- BindEmail ------------------------------------------------------------------------

    async def bind_email(self, cmd: BindEmailCommand) -> str:
        """Bind the email; returns it masked.

        Raises InvalidArgument, TicketInvalid (`email_ticket`, `current_email_ticket`),
        InvalidCredentials (wrong password, or locked: it counts like a failed
        login), FailedPrecondition (the address is bound already to this account,
        or an email is bound and `current_email_ticket` is missing), AlreadyExists
        (`email`), Conflict or Unavailable.

        The password is required whenever an address is bound, the first one
        included: a bound email proves a ChangePhone and a ResetPassword, so a
        stolen session alone must not be able to add one (that would turn an
        access token into the account). Replacing an address needs a BIND_EMAIL
        ticket of the bound one too (H1): the password alone must not move the
        account's recovery channel either. A `current_email_ticket` sent when no
        email is bound is ignored (it proves nothing that matters). The password
        comes after the new address's ticket (a bad ticket costs no password
        attempt) and before anything that depends on the account's state.
        """
        attempt = _Attempt(BIND_EMAIL_ACTION, target=cmd.account_id)
        try:
            email = self._bind_email_request(cmd)
            attempt.to_audit = True
            email_ticket = PresentedTicket(
                cmd.email_ticket, "email_ticket", Purpose.BIND_EMAIL, Channel.EMAIL, email
            )
            await email_ticket.check(self._tickets)
            account = await self._accounts.get_credentials(cmd.account_id)
            await self._passwords.verify(
                account.account_id, account.password_hash, cmd.password, cmd.ip
            )
            current = await self._accounts.get_personal_data(cmd.account_id)
            if current.email:
                attempt.action = CHANGE_EMAIL_ACTION
            if current.email == email:
                raise FailedPrecondition(
                    "this email is bound to the account already",
                    [FieldViolation("email", "is the email bound already")],
                )
            current_email_ticket = PresentedTicket(
                cmd.current_email_ticket,
                "current_email_ticket",
                Purpose.BIND_EMAIL,
                Channel.EMAIL,
                current.email,
            )
            if current.email:
                if not cmd.current_email_ticket.strip():
                    raise FailedPrecondition(
                        "an email is bound already: prove it with current_email_ticket",
                        [
                            FieldViolation(
                                "current_email_ticket",
                                "required: a BIND_EMAIL ticket for the email bound now",
                            )
                        ],
                    )
                await current_email_ticket.check(self._tickets)
            await self._refuse_taken("email", email)
            await email_ticket.consume(self._tickets)
            if current.email:
                await current_email_ticket.consume(self._tickets)
            try:
                async with self._uow.begin():
                    await self._accounts.replace_contact(
                        cmd.account_id, "email", expected=current.email, new=email
                    )
                    await self._sessions.revoke_all(
                        cmd.account_id, RevokeReason.EMAIL_CHANGE, keep=cmd.session_id
                    )
                    await self._notices.send(
                        "email_changed",
                        phone=current.phone,
                        email=current.email,
                        new_email=mask_email(email),
                    )
                    if self._audit is not None:
                        await self._audit.record(attempt.action, cmd.account_id, "ok")
            except AlreadyExists:
                raise AlreadyExists("email") from None
        except Exception as exc:
            await self._refused(attempt, exc)
            raise
        return mask_email(email)

    def _bind_email_request(self, cmd: BindEmailCommand) -> str:
        """Step 1: the normalised email."""
        v = Violations()
        email = v.run("email", cmd.email, lambda raw: normalize_email(raw, "email"))
        check_ticket_shape(v, "email_ticket", cmd.email_ticket, required=True)
        check_ticket_shape(v, "current_email_ticket", cmd.current_email_ticket, required=False)
        check_password_shape(v, cmd.password)
        v.raise_if_any()
        return email

    # -- UnbindEmail ----------------------------------------------------------------------

    async def unbind_email(self, cmd: UnbindEmailCommand) -> None:
        """Remove the email.

        Raises InvalidArgument, FailedPrecondition (no email is bound),
        InvalidCredentials (wrong password, or locked: it counts like a failed
        login), Conflict or Unavailable. The password stands in for a ticket:
        the address is going away, so proving it is not required, but a stolen
        session alone must not silence the account's second channel.
        """
        attempt = _Attempt(UNBIND_EMAIL_ACTION, target=cmd.account_id)
        try:
            v = Violations()
            check_password_shape(v, cmd.password)
            v.raise_if_any()
            attempt.to_audit = True
            account = await self._accounts.get_credentials(cmd.account_id)
            current = await self._accounts.get_personal_data(cmd.account_id)
            if not current.email:
                raise FailedPrecondition("no email is bound to the account")
            await self._passwords.verify(
                account.account_id, account.password_hash, cmd.password, cmd.ip
            )
            async with self._uow.begin():
                await self._accounts.replace_contact(
                    cmd.account_id, "email", expected=current.email, new=""
                )
                await self._sessions.revoke_all(
                    cmd.account_id, RevokeReason.EMAIL_CHANGE, keep=cmd.session_id
                )
                await self._notices.send("email_unbound", phone=current.phone, email=current.email)
                if self._audit is not None:
                    await self._audit.record(UNBIND_EMAIL_ACTION, cmd.account_id, "ok")
        except Exception as exc:
            await self._refused(attempt, exc)
            raise

    # -- common ---------------------------------------------------------------------------

    async def _refuse_taken(self, kind: str, value: str) -> None:
        """Step 4: AlreadyExists on the field `kind` when another account holds `value`."""
        if await self._accounts.taken_kinds([self._accounts.key(kind, value)]):
            raise AlreadyExists(kind)

    async def _refused(self, attempt: _Attempt, exc: Exception) -> None:
        """Audit a refusal (outside any unit of work), unless the request was malformed."""
        if not attempt.to_audit:
            return
        await record_quietly(self._audit, attempt.action, attempt.target, outcome_of(exc), logger)


__all__ = [
    "BIND_EMAIL_ACTION",
    "BIND_PHONE_ACTION",
    "CHANGE_EMAIL_ACTION",
    "UNBIND_EMAIL_ACTION",
    "BindEmailCommand",
    "BindPhoneCommand",
    "ChannelFlow",
    "PresentedTicket",
    "Reauthentication",
    "SessionRevoker",
    "UnbindEmailCommand",
]
