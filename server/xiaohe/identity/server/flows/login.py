"""The login flow: by password or by SMS ticket (`AuthService.Login`).

Password login, in order:

1. Request shape. An empty identifier or password, an identifier over 256 or a
   password over 4096 characters, or an unknown identifier kind is
   InvalidArgument (fields `password.identifier`, `password.password`,
   `password.identifier_kind`); nothing is hashed or counted. These bounds say
   nothing about any account.
2. The identifier is classified (when the kind is unspecified) and normalised.
   A non-empty identifier that fails its kind's rules is treated exactly like
   an unknown one, not as InvalidArgument: such an identifier cannot belong to
   an account, so the answer reveals nothing either way, and a user who typed a
   phone number with a digit missing is better served by "identifier or
   password incorrect" than by a lecture on login-name rules. It also keeps old
   accounts usable if the rules ever tighten.
3. Lookup. For an unknown (or malformed) identifier the same steps run as for a
   known account, against one shared pseudo-account (`UNKNOWN_SUBJECT`): the
   throttle admits (so a Redis outage gives every identifier the same
   Unavailable, not an enumeration oracle), a dummy Argon2 verify spends the
   time of a real one, the failure is recorded, and InvalidCredentials follows.
4. Throttle (SECURITY.md B1, B2; `lockout.LoginThrottle`). A refused admission
   (locked pair, spent hourly budget) still costs one dummy verify and a second
   script that changes nothing (`touch`), then the same InvalidCredentials (B3).
5. Verify. Wrong → the failure is recorded, InvalidCredentials. Right → the
   reservation is freed and this IP's failures are cleared, concurrently with
   the steps below; if Redis fails at that point the login still succeeds (the
   password was right) and the reservation stays counted as a failure, which
   errs on the safe side. An account that is not active gets
   InvalidCredentials *after* the verify, so its status does not show in the
   timing either.
6. Rehash (P4) when the stored hash has other parameters; a failure to rehash
   is logged and the login goes on (the old hash still works). The update is
   conditional on the hash just verified, so it never overwrites a password
   changed or reset concurrently; losing that race is logged at debug only.
7. A session with amr `pwd`; next step CONSENT_REQUIRED when the account
   accepted an older privacy policy version than the newest that changed
   purposes (I3); of a newer version that changed none it is only told once.

So unknown identifier, wrong password and locked account each cost exactly one
Argon2 operation and two throttle scripts, and raise the same InvalidCredentials
with the same message (B3). If the hasher's queue is full, every path raises Overloaded alike, and a
reservation whose password was never evaluated is refunded.

Operators (SECURITY P5). An account that holds an operator role needs a password
of at least 12 characters (`credentials.operators`): a right password that is
shorter is refused with FailedPrecondition, and the person resets it. The lockout
treats it as any right password of its branch (settled as a success without a
second factor, released with one). Only a right password under 12 characters
pays for the role lookup (one indexed query).

Second factor (SECURITY D3). When the account has an active TOTP factor, a
right password (or a valid SMS ticket) starts no session: the answer is
MFA_REQUIRED with an MFA ticket (`totp.tickets.MfaTickets`: short-lived, bound to
the account, the first factor's method, the client and the audience), and the
password's reservation is released rather than settled as a success, so this
IP's failures (wrong codes included) are *not* cleared by a right password: only
a completed sign-in clears them (an SMS login does not clear them either).
Otherwise someone who knows the password could
alternate logins and code guesses and never reach the lock. `complete_mfa` then
checks the ticket (each presentation counted; a few at most), the TOTP or
recovery code under the throttle (`flows.totp.CodeAttempts`: a wrong code is a
wrong password), consumes the ticket (one session per ticket) and starts the
session through the same step 7 as any login, with amr first factor + `otp`.

SMS login consumes a LOGIN ticket (SMS channel) and logs in the account that
holds the proven phone. It does not consult the password locks, so lockout
cannot be turned against the owner (B2); it clears the failures from the same
IP. A phone that belongs to no account gives TicketInvalid (the ticket is spent
anyway).

Deactivation (issue 14). An account in its deactivation cooling-off period
(DEACTIVATION_PENDING) signs in like an active one; when its session is about to
start, the deactivation is cancelled in the same unit of work
(`DeactivationCanceller`, `flows.deactivation`) and the result says so
(`LoginResult.deactivation_cancelled`). Past the due time it is refused like any
inactive account. A first factor that answers MFA_REQUIRED cancels nothing yet.

Every attempt that reaches the lookup is audited (`auth.login.password` /
`auth.login.sms`; target the account id, or `unknown`, never the identifier)
and counted in metrics; malformed requests are only counted.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NoReturn, Protocol

from xiaohe.identity.server.accounts.models import AccountCredentials, AccountStatus
from xiaohe.identity.server.audit.sink import AuditSink, outcome_of, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.models import Channel, Purpose, TicketConsumer
from xiaohe.identity.server.credentials.lockout import Admission, FailureOutcome, Refusal
from xiaohe.identity.server.credentials.operators import (
    TOO_SHORT_OUTCOME,
    OperatorPasswords,
    long_enough,
)
from xiaohe.identity.server.errors import (
    FailedPrecondition,
    FieldViolation,
    IdentityError,
    InvalidArgument,
    InvalidCredentials,
    NotFound,
    Overloaded,
    TicketInvalid,
)
from xiaohe.identity.server.flows.totp import CodeAttempts, SecondFactorCode
from xiaohe.identity.server.privacy.policies import PolicyVersion
from xiaohe.identity.server.sessions.models import IssuedSession, SessionSubject
from xiaohe.identity.server.shared.identifiers import (
    IdentifierKind,
    normalize_identifier_or_none,
    today_in_china,
)
from xiaohe.identity.server.shared.network import mask_ip
from xiaohe.identity.server.shared.validation import (
    MAX_IDENTIFIER_CHARS,
    MAX_PASSWORD_CHARS,
    MAX_TICKET_CHARS,
    UNKNOWN_SUBJECT,
)
from xiaohe.identity.server.storage.database import UnitOfWork
from xiaohe.identity.server.totp.tickets import IssuedMfaTicket, MfaBinding
from xiaohe.identity.tokens.jwt import CONSENT_RESTRICTION, PHONE_REVERIFY_RESTRICTION

logger = logging.getLogger(__name__)

PASSWORD_ACTION: Final = "auth.login.password"  # noqa: S105 - an audit action name
SMS_ACTION: Final = "auth.login.sms"
PASSWORD_METHOD: Final = "password"  # noqa: S105 - a metric label
SMS_METHOD: Final = "sms"
MFA_ACTION: Final = "auth.login.mfa"
MFA_METHOD: Final = "mfa"
PASSWORD_AMR: Final = "pwd"  # noqa: S105 - an amr method name
OTP_AMR: Final = "otp"
MFA_TICKET_FIELD: Final = "mfa_ticket"

IDENTIFIER_FIELD: Final = "password.identifier"
KIND_FIELD: Final = "password.identifier_kind"
PASSWORD_FIELD: Final = "password.password"  # noqa: S105 - a field path
TICKET_FIELD: Final = "sms_ticket"


class NextStep(StrEnum):
    """What the client must do after a successful login; names match `NEXT_STEP_*` in the proto."""

    NONE = "NONE"
    CONSENT_REQUIRED = "CONSENT_REQUIRED"
    PHONE_REVERIFY_REQUIRED = "PHONE_REVERIFY_REQUIRED"
    MFA_REQUIRED = "MFA_REQUIRED"


@dataclass(frozen=True)
class LoginResult:
    """A successful login: the new session and the step the client must take next.

    With MFA_REQUIRED there is no session yet, only the MFA ticket for `complete_mfa`.
    """

    session: IssuedSession | None
    next_step: NextStep
    mfa_ticket: str = field(default="", repr=False)
    mfa_ticket_expires_in: int = 0
    deactivation_cancelled: bool = False
    """True when this sign-in cancelled the account's deactivation (its cooling-off period)."""


class CredentialStore(Protocol):
    """What login needs of the accounts (`accounts.service.AccountService`)."""

    async def find_credentials(
        self, kind: IdentifierKind, normalised: str
    ) -> AccountCredentials | None:
        """The account holding a normalised identifier, or None."""
        ...

    async def find_by_phone(self, e164: str) -> AccountCredentials | None:
        """The account whose phone is `e164`, or None."""
        ...

    async def get_credentials(self, account_id: str) -> AccountCredentials:
        """The credentials of an account; NotFound if none."""
        ...

    async def lock_credentials(self, account_id: str) -> AccountCredentials:
        """The credentials read again, the account locked until the unit of work ends."""
        ...

    async def set_password_hash(
        self, account_id: str, new_hash: str, *, expected_old_hash: str | None = None
    ) -> bool:
        """Store a new password hash, only while the stored one is `expected_old_hash` if given."""
        ...


class SessionIssuer(Protocol):
    """Starts sessions (`sessions.service.SessionService`)."""

    async def create(
        self,
        subject: SessionSubject,
        amr: tuple[str, ...],
        *,
        audience: str = "",
        client_id: str,
        ip_masked: str = "",
        user_agent: str = "",
    ) -> IssuedSession:
        """Start a session and return its first tokens (inside the open unit of work)."""
        ...


class PasswordVerifier(Protocol):
    """Argon2id off the event loop (`credentials.hasher.PasswordHasher`)."""

    async def verify(self, hash: str, password: str) -> bool:
        """Whether `password` matches `hash`."""
        ...

    async def dummy_verify(self, password: str) -> None:
        """Spend the time of one verify."""
        ...

    def needs_rehash(self, hash: str) -> bool:
        """Whether `hash` was made with other parameters."""
        ...

    async def hash(self, password: str) -> str:
        """A new hash of `password` with the current parameters."""
        ...


class Throttle(Protocol):
    """Brute-force counters (`credentials.lockout.LoginThrottle`)."""

    async def admit(self, account_id: str, ip: str) -> Admission:
        """Reserve one evaluation or refuse."""
        ...

    async def record_failure(self, account_id: str, ip: str, reservation: str) -> FailureOutcome:
        """Keep the reservation as a failure."""
        ...

    async def record_success(self, account_id: str, ip: str, reservation: str) -> None:
        """Free the reservation and clear this IP's failures."""
        ...

    async def clear(self, account_id: str, ip: str) -> None:
        """Clear this IP's failures after a login by another factor."""
        ...

    async def release(self, account_id: str, ip: str, reservation: str) -> None:
        """Refund a reservation that was never evaluated."""
        ...

    async def touch(self, account_id: str, ip: str) -> None:
        """Cost what `record_failure` costs, changing nothing (a refusal's timing, B3)."""
        ...


# -- issue 14: deactivation --


class DeactivationCanceller(Protocol):
    """Cancels a pending deactivation (`flows.deactivation.DeactivationFlow`)."""

    async def cancel_on_sign_in(self, account_id: str) -> bool:
        """Inside the login's unit of work: make the account active again; False if too late."""
        ...


SIGN_IN_STATES: Final = frozenset(
    {AccountStatus.ACTIVE.value, AccountStatus.DEACTIVATION_PENDING.value}
)
"""States that may sign in: a sign-in during the cooling-off period cancels the deactivation."""

# -- end deactivation --


class SecondFactor(Protocol):
    """The TOTP factor (`totp.service.TotpService`)."""

    async def is_enrolled(self, account_id: str) -> bool:
        """Whether the account has an active factor."""
        ...

    async def verify_code(self, account_id: str, code: str) -> bool:
        """Accept a current code of the active factor once."""
        ...

    async def use_recovery_code(self, account_id: str, code: str) -> bool:
        """Spend one recovery code."""
        ...


class MfaTicketStore(Protocol):
    """MFA tickets in Redis (`totp.tickets.MfaTickets`)."""

    async def issue(self, binding: MfaBinding) -> IssuedMfaTicket:
        """A new ticket bound to `binding`."""
        ...

    async def check(self, ticket: str) -> MfaBinding | None:
        """Count one presentation; the binding or None."""
        ...

    async def consume(self, ticket: str) -> bool:
        """Delete the ticket; True for exactly one caller."""
        ...


class PolicyVersions(Protocol):
    """The privacy policy store (`privacy.policies.PolicyStore`)."""

    async def current(self, *, fresh: bool = False) -> PolicyVersion:
        """The current version."""
        ...


class LoginMetrics(Protocol):
    """Login counters; labels never carry identifiers."""

    def login(self, method: str, outcome: str) -> None:
        """Count one login attempt and its outcome."""
        ...


# -- issue 14: notify-only policy versions --
class PolicyNotifier(Protocol):
    """Tells an account of a newer policy version it need not accept (`PolicyUpdateNotices`)."""

    async def notify_if_due(self, account: AccountCredentials, client_id: str) -> None:
        """Notify once per version; never raises (a failure is logged)."""
        ...


# -- end notify-only policy versions --


async def session_subject(
    account: AccountCredentials, policies: PolicyVersions
) -> tuple[SessionSubject, NextStep]:
    """What an account's tokens carry now, and the step its client must take next.

    An account whose phone was reported recycled (`phone_stale_at`, SECURITY H3)
    gets a session restricted to `phone_reverify`: its tokens are refused
    everywhere (ValidateToken, every RPC about "me") and only log out or
    refresh; the client binds a phone by BindPhone (login name, password and a
    BIND_PHONE ticket, no token needed), which ends every session, and logs in
    again. This comes before consent: the account's channel is at stake.
    An account that accepted an older privacy policy than the current one gets a
    restricted session (SECURITY I3): its tokens are refused everywhere but by
    `GetPolicy`, `AcceptPolicy` and `Logout`, until a refresh after the consent.
    Only a version that changed purposes gates (issue 14): "older than the current
    one" means older than `consent_floor`; a newer notify-only version is told of
    at sign-in (`PolicyNotifier`).
    """
    restriction, next_step = "", NextStep.NONE
    if account.phone_stale_at is not None:
        restriction, next_step = PHONE_REVERIFY_RESTRICTION, NextStep.PHONE_REVERIFY_REQUIRED
    else:
        current = await policies.current()
        if account.accepted_policy_version < current.consent_floor:
            restriction, next_step = CONSENT_RESTRICTION, NextStep.CONSENT_REQUIRED
    subject = SessionSubject(
        account_id=account.account_id,
        subject_type=account.subject_type.value,
        rn_level=account.real_name_level,
        restriction=restriction,
    )
    return subject, next_step


class ActiveSubjects:
    """Who a session's refreshed tokens speak for: the sessions' `SubjectSource`.

    An account that no longer exists or is not active has no subject, and its
    sessions stop refreshing. The claims are read fresh, so a refresh carries
    the current subject type and real-name level, and is restricted exactly
    while the account has not accepted the current privacy policy.
    """

    def __init__(self, accounts: CredentialStore, policies: PolicyVersions) -> None:
        self._accounts = accounts
        self._policies = policies

    async def __call__(self, account_id: str) -> SessionSubject | None:
        """The subject of an active account, or None."""
        try:
            account = await self._accounts.get_credentials(account_id)
        except NotFound:
            return None
        if account.status != AccountStatus.ACTIVE:
            return None
        subject, _ = await session_subject(account, self._policies)
        return subject


@dataclass
class _Attempt:
    """What one attempt is audited and counted as; filled in as the flow goes."""

    target: str = UNKNOWN_SUBJECT
    outcome: str = ""
    to_audit: bool = True
    """False once recorded with the session, or for a malformed request (never audited)."""

    def failed(self, exc: Exception) -> _Attempt:
        """Settle the outcome of a failed attempt: the one set on the way, else the error's."""
        if not self.outcome:
            self.outcome = outcome_of(exc)
        return self

    def succeeded(self) -> _Attempt:
        """Settle the outcome of a successful attempt (`ok`, unless set: `mfa_required`)."""
        if not self.outcome:
            self.outcome = "ok"
        return self


class LoginFlow:
    """Authenticates end users by password or SMS ticket and starts their sessions."""

    def __init__(
        self,
        uow: UnitOfWork,
        accounts: CredentialStore,
        sessions: SessionIssuer,
        tickets: TicketConsumer,
        hasher: PasswordVerifier,
        throttle: Throttle,
        policies: PolicyVersions,
        clock: Clock,
        audit: AuditSink | None = None,
        metrics: LoginMetrics | None = None,
        allowed_country_codes: Collection[str] = ("86",),
        second_factor: SecondFactor | None = None,
        mfa_tickets: MfaTicketStore | None = None,
        deactivations: DeactivationCanceller | None = None,
        policy_notices: PolicyNotifier | None = None,
        operator_passwords: OperatorPasswords | None = None,
    ) -> None:
        self._policy_notices = policy_notices
        self._operator_passwords = operator_passwords
        self._uow = uow
        self._accounts = accounts
        self._sessions = sessions
        self._tickets = tickets
        self._hasher = hasher
        self._throttle = throttle
        self._policies = policies
        self._clock = clock
        self._audit = audit
        self._metrics = metrics
        self._allowed_country_codes = tuple(allowed_country_codes)
        self._settling: set[asyncio.Task[None]] = set()
        if (second_factor is None) != (mfa_tickets is None):
            raise ValueError("second_factor and mfa_tickets go together")
        self._second_factor = second_factor
        self._mfa_tickets = mfa_tickets
        self._code_attempts = CodeAttempts(throttle)
        self._deactivations = deactivations

    def __repr__(self) -> str:
        return "LoginFlow()"

    async def login_with_password(
        self,
        identifier: str,
        kind: IdentifierKind,
        password: str,
        *,
        audience: str,
        client_id: str,
        ip: str,
        user_agent: str,
    ) -> LoginResult:
        """Log in by identifier and password (steps and their reasons in the module docstring).

        Raises InvalidArgument, InvalidCredentials (unknown, wrong, locked, inactive
        alike), Overloaded (hashing queue full) or Unavailable (Redis, database).
        """
        attempt = _Attempt()
        try:
            account, reservation = await self._authenticate(attempt, identifier, kind, password, ip)
            long_password = long_enough(password)
            if await self._needs_second_factor(account, ip, reservation):
                await self._accept_right_password(attempt, account, password, long_password)
                result = await self._challenge(
                    attempt, account, PASSWORD_AMR, audience, client_id, long_password
                )
                await self._observe(PASSWORD_ACTION, PASSWORD_METHOD, attempt.succeeded())
                return result
            settling = await self._settle(account.account_id, ip, reservation)
            try:
                await self._accept_right_password(attempt, account, password, long_password)
                result = await self._start(
                    attempt,
                    PASSWORD_ACTION,
                    account,
                    (PASSWORD_AMR,),
                    audience,
                    client_id,
                    ip,
                    user_agent,
                    InvalidCredentials,
                )
            finally:
                # Shielded: a cancelled login still lets its reservation be settled.
                await asyncio.shield(settling)
        except Exception as exc:
            await self._observe(PASSWORD_ACTION, PASSWORD_METHOD, attempt.failed(exc))
            raise
        await self._observe(PASSWORD_ACTION, PASSWORD_METHOD, attempt.succeeded())
        return result

    async def login_with_sms_ticket(
        self, ticket: str, *, audience: str, client_id: str, ip: str, user_agent: str
    ) -> LoginResult:
        """Log in the account whose phone a LOGIN ticket proves; TicketInvalid if none.

        Password locks are not consulted (B2); this IP's password failures are cleared.
        """
        attempt = _Attempt()
        try:
            if not ticket.strip() or len(ticket) > MAX_TICKET_CHARS:
                attempt.to_audit = False
                raise InvalidArgument(
                    FieldViolation(TICKET_FIELD, "must be a ticket from VerifyCode")
                )
            claims = await self._tickets.consume(ticket, purpose=Purpose.LOGIN, channel=Channel.SMS)
            if claims.purpose is not Purpose.LOGIN or claims.channel is not Channel.SMS:
                raise TicketInvalid()
            account = await self._accounts.find_by_phone(claims.destination)
            if account is None:
                attempt.outcome = "unknown_account"
                raise TicketInvalid()
            attempt.target = account.account_id
            if account.status not in SIGN_IN_STATES:
                attempt.outcome = "account_inactive"
                raise TicketInvalid()
            if await self._needs_second_factor(account, ip, ""):
                # This IP's failures stay until the second factor is done (module docstring).
                result = await self._challenge(attempt, account, "sms", audience, client_id)
                await self._observe(SMS_ACTION, SMS_METHOD, attempt.succeeded())
                return result
            await self._throttle.clear(account.account_id, ip)
            result = await self._start(
                attempt,
                SMS_ACTION,
                account,
                ("sms",),
                audience,
                client_id,
                ip,
                user_agent,
                TicketInvalid,
            )
        except Exception as exc:
            await self._observe(SMS_ACTION, SMS_METHOD, attempt.failed(exc))
            raise
        await self._observe(SMS_ACTION, SMS_METHOD, attempt.succeeded())
        return result

    # -- second factor -------------------------------------------------------------------

    async def complete_mfa(
        self, ticket: str, code: SecondFactorCode, *, client_id: str, ip: str, user_agent: str
    ) -> LoginResult:
        """Finish a login that answered MFA_REQUIRED: the session, as the login would have made it.

        Raises InvalidArgument (a malformed ticket or code; nothing counted),
        TicketInvalid on `mfa_ticket` (unknown, expired, used, presented too often,
        another client's), InvalidCredentials (wrong or replayed code, or locked:
        alike), FailedPrecondition when this server has no second factor.
        """
        attempt = _Attempt()
        try:
            if self._second_factor is None or self._mfa_tickets is None:
                raise FailedPrecondition("two-step verification is not available")
            if not ticket.strip() or len(ticket) > MAX_TICKET_CHARS:
                attempt.to_audit = False
                raise InvalidArgument(
                    FieldViolation(MFA_TICKET_FIELD, "must be the mfa_ticket Login returned")
                )
            try:
                checked = code.checked()
            except InvalidArgument:
                attempt.to_audit = False
                raise
            binding = await self._mfa_tickets.check(ticket)
            if binding is None or not hmac.compare_digest(
                binding.client_id.encode("utf-8"), client_id.encode("utf-8")
            ):
                raise TicketInvalid(field=MFA_TICKET_FIELD)
            attempt.target = binding.account_id
            try:
                account = await self._accounts.get_credentials(binding.account_id)
            except NotFound:
                attempt.outcome = "unknown_account"
                raise TicketInvalid(field=MFA_TICKET_FIELD) from None
            if binding.method == PASSWORD_AMR:
                # P5: a role granted since the password step meets that password's length.
                # Before the code, so a refused sign-in spends no recovery code; the
                # ticket's holder has proven the password, and a new sign-in would say
                # the same.
                await self._check_operator(attempt, account.account_id, binding.long_password)
            await self._code_attempts.verify(
                self._second_factor,
                account.account_id,
                ip,
                checked,
                despite_lock=binding.method == SMS_METHOD,
            )
            if not await self._mfa_tickets.consume(ticket):
                raise TicketInvalid(field=MFA_TICKET_FIELD)
            result = await self._start(
                attempt,
                MFA_ACTION,
                account,
                (binding.method, OTP_AMR),
                binding.audience,
                client_id,
                ip,
                user_agent,
                lambda: TicketInvalid(field=MFA_TICKET_FIELD),
            )
        except Exception as exc:
            await self._observe(MFA_ACTION, MFA_METHOD, attempt.failed(exc))
            raise
        await self._observe(MFA_ACTION, MFA_METHOD, attempt.succeeded())
        return result

    async def _needs_second_factor(
        self, account: AccountCredentials, ip: str, reservation: str
    ) -> bool:
        """Whether the account must give its second factor; if so, a password's reservation is
        refunded (neither a failure nor a success: this IP's failures stay)."""
        if self._second_factor is None:
            return False
        try:
            enrolled = await self._second_factor.is_enrolled(account.account_id)
        except Exception:
            if reservation:
                # Not known whether a second factor is due: the right password settles nothing.
                await self._throttle.release(account.account_id, ip, reservation)
            raise
        if enrolled and reservation:
            await self._throttle.release(account.account_id, ip, reservation)
        return enrolled

    async def _challenge(
        self,
        attempt: _Attempt,
        account: AccountCredentials,
        first_factor: str,
        audience: str,
        client_id: str,
        long_password: bool = False,
    ) -> LoginResult:
        """MFA_REQUIRED and a ticket bound to the account, the first factor, client and audience,
        and whether a password first factor was long enough for an operator (P5)."""
        assert self._mfa_tickets is not None
        issued = await self._mfa_tickets.issue(
            MfaBinding(
                account_id=account.account_id,
                method=first_factor,
                client_id=client_id,
                audience=audience,
                long_password=long_password,
            )
        )
        attempt.outcome = "mfa_required"
        return LoginResult(
            session=None,
            next_step=NextStep.MFA_REQUIRED,
            mfa_ticket=issued.ticket,
            mfa_ticket_expires_in=issued.expires_in,
        )

    # -- password flow -------------------------------------------------------------------

    async def _authenticate(
        self,
        attempt: _Attempt,
        identifier: str,
        kind: IdentifierKind,
        password: str,
        ip: str,
    ) -> tuple[AccountCredentials, str]:
        """Steps 1-5: the account whose password this is and its reservation, or an exception."""
        resolved = self._check_request(attempt, identifier, kind, password)
        normalised = self._normalise(identifier, resolved)
        account = None
        if normalised is not None:
            account = await self._accounts.find_credentials(normalised[0], normalised[1])
        if account is None:
            await self._fail_unknown(attempt, password, ip)
        attempt.target = account.account_id
        admission = await self._throttle.admit(account.account_id, ip)
        if admission.refusal is not None:
            await self._refuse(attempt, admission.refusal, account.account_id, password, ip)
        if not await self._verify(account, password, ip, admission.reservation):
            await self._throttle.record_failure(account.account_id, ip, admission.reservation)
            attempt.outcome = "invalid_credentials"
            raise InvalidCredentials()
        return account, admission.reservation

    def _check_request(
        self, attempt: _Attempt, identifier: str, kind: IdentifierKind | int, password: str
    ) -> IdentifierKind:
        """Step 1: bounds that need no lookup; InvalidArgument lists every violation."""
        violations: list[FieldViolation] = []
        resolved = IdentifierKind.UNSPECIFIED
        try:
            resolved = IdentifierKind(kind)
        except ValueError:
            violations.append(FieldViolation(KIND_FIELD, "unknown identifier kind"))
        if not identifier.strip():
            violations.append(FieldViolation(IDENTIFIER_FIELD, "must not be empty"))
        elif len(identifier) > MAX_IDENTIFIER_CHARS:
            violations.append(
                FieldViolation(
                    IDENTIFIER_FIELD, f"must be at most {MAX_IDENTIFIER_CHARS} characters"
                )
            )
        if not password:
            violations.append(FieldViolation(PASSWORD_FIELD, "must not be empty"))
        elif len(password) > MAX_PASSWORD_CHARS:
            violations.append(
                FieldViolation(PASSWORD_FIELD, f"must be at most {MAX_PASSWORD_CHARS} characters")
            )
        if violations:
            attempt.to_audit = False
            raise InvalidArgument(violations)
        return resolved

    def _normalise(
        self, identifier: str, kind: IdentifierKind
    ) -> tuple[IdentifierKind, str] | None:
        """Step 2: (kind, normalised value), or None for an identifier no account can hold."""
        return normalize_identifier_or_none(
            kind,
            identifier,
            allowed_country_codes=self._allowed_country_codes,
            today=today_in_china(self._clock),
        )

    async def _fail_unknown(self, attempt: _Attempt, password: str, ip: str) -> NoReturn:
        """Step 3: the known-account path against the shared pseudo-account; always raises."""
        admission = await self._throttle.admit(UNKNOWN_SUBJECT, ip)
        if admission.refusal is not None:
            await self._refuse(attempt, admission.refusal, UNKNOWN_SUBJECT, password, ip)
        try:
            await self._hasher.dummy_verify(password)
        except Overloaded:
            await self._throttle.release(UNKNOWN_SUBJECT, ip, admission.reservation)
            raise
        await self._throttle.record_failure(UNKNOWN_SUBJECT, ip, admission.reservation)
        attempt.outcome = "invalid_credentials"
        raise InvalidCredentials()

    async def _refuse(
        self, attempt: _Attempt, refusal: Refusal, subject: str, password: str, ip: str
    ) -> NoReturn:
        """Step 4, refused: the work of a wrong password (a verify, a second script), then
        InvalidCredentials; nothing is evaluated or counted."""
        await self._hasher.dummy_verify(password)
        await self._throttle.touch(subject, ip)
        attempt.outcome = refusal.value
        raise InvalidCredentials()

    async def _verify(
        self, account: AccountCredentials, password: str, ip: str, reservation: str
    ) -> bool:
        """Step 5: one Argon2 operation whatever the stored hash looks like."""
        stored = account.password_hash
        try:
            if not stored.startswith("$argon2"):
                # No usable hash (never set, or a foreign format): a malformed hash would
                # fail in microseconds, so spend the time of a real verify instead.
                await self._hasher.dummy_verify(password)
                return False
            return await self._hasher.verify(stored, password)
        except Overloaded:
            # Refused before any work was queued: nothing was evaluated, refund the slot.
            await self._throttle.release(account.account_id, ip, reservation)
            raise

    async def _accept_right_password(
        self, attempt: _Attempt, account: AccountCredentials, password: str, long_password: bool
    ) -> None:
        """What a right password still needs: an account that may sign in (else the same
        InvalidCredentials as a wrong password), a length fit for an operator if it holds a
        role (`_check_operator`), and the hash upgraded if its parameters are old."""
        if account.status not in SIGN_IN_STATES:
            attempt.outcome = "account_inactive"
            raise InvalidCredentials()
        await self._check_operator(attempt, account.account_id, long_password)
        await self._rehash_if_needed(account, password)

    async def _check_operator(
        self, attempt: _Attempt, account_id: str, long_password: bool
    ) -> None:
        """P5: FailedPrecondition, audited as `operator_password_too_short`, if the account
        holds a role and the sign-in's password was not `long_enough`."""
        if self._operator_passwords is None:
            return
        try:
            await self._operator_passwords.check_sign_in(account_id, long_password)
        except FailedPrecondition:
            attempt.outcome = TOO_SHORT_OUTCOME
            raise

    async def _settle(self, account_id: str, ip: str, reservation: str) -> asyncio.Task[None]:
        """Step 5, right password: free the reservation and clear this IP's failures.

        It runs while the session is made (its script is sent before this returns),
        and a failure only logs: the password was right, and a reservation left in
        place counts as one more failure, which errs on the safe side.
        """

        async def settle() -> None:
            try:
                await self._throttle.record_success(account_id, ip, reservation)
            except Exception as exc:
                logger.warning(
                    "login of account %s: failures not cleared (%s)",
                    account_id,
                    type(exc).__name__,
                )

        task = asyncio.create_task(settle())
        self._settling.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._settling.discard)
        await asyncio.sleep(0)  # one loop turn: the script goes out before the SQL work
        return task

    async def _rehash_if_needed(self, account: AccountCredentials, password: str) -> None:
        """Step 6 (P4): store a hash with the current parameters; failures only log."""
        if not self._hasher.needs_rehash(account.password_hash):
            return
        try:
            new_hash = await self._hasher.hash(password)
            # Conditional on the hash just verified: if a password change or reset stored
            # a new hash meanwhile, this rehash of the old password must not overwrite it.
            stored = await self._accounts.set_password_hash(
                account.account_id, new_hash, expected_old_hash=account.password_hash
            )
        except Exception:
            logger.warning(
                "rehash at login failed for account %s", account.account_id, exc_info=True
            )
            return
        if not stored:
            logger.debug(
                "rehash at login skipped for account %s: hash changed meanwhile", account.account_id
            )

    # -- common ----------------------------------------------------------------------------

    async def _start(
        self,
        attempt: _Attempt,
        action: str,
        account: AccountCredentials,
        amr: tuple[str, ...],
        audience: str,
        client_id: str,
        ip: str,
        user_agent: str,
        refusal: Callable[[], IdentityError],
    ) -> LoginResult:
        """Step 7: a session for the account and its next step.

        The success is audited in the unit of work that stores the session, so
        neither exists without the other; nothing after that can fail. The account
        is read again, locked, in that unit of work: a recycled-number report that
        lands during the login either restricts this session or ends it, and an
        account deactivated or deleted meanwhile gets no session at all (`refusal`,
        the answer an inactive account gets before the verify). An account in its
        deactivation cooling-off period has the deactivation cancelled here, in the
        same unit of work (`DeactivationCanceller`), or, too late for that, is refused.
        """
        async with self._uow.begin():
            try:
                account = await self._accounts.lock_credentials(account.account_id)
            except NotFound:
                attempt.outcome = "unknown_account"
                raise refusal() from None
            cancelled = False
            if (
                account.status == AccountStatus.DEACTIVATION_PENDING
                and self._deactivations is not None
                and await self._deactivations.cancel_on_sign_in(account.account_id)
            ):
                cancelled = True
                account = await self._accounts.lock_credentials(account.account_id)
            if account.status != AccountStatus.ACTIVE:
                attempt.outcome = "account_inactive"
                raise refusal()
            subject, next_step = await session_subject(account, self._policies)
            session = await self._sessions.create(
                subject,
                amr,
                audience=audience,
                client_id=client_id,
                ip_masked=mask_ip(ip),
                user_agent=user_agent,
            )
            if self._audit is not None:
                await self._audit.record(action, account.account_id, "ok")
        attempt.to_audit = False
        if next_step is NextStep.NONE and self._policy_notices is not None:
            await self._policy_notices.notify_if_due(account, client_id)
        return LoginResult(session=session, next_step=next_step, deactivation_cancelled=cancelled)

    async def _observe(self, action: str, method: str, attempt: _Attempt) -> None:
        """Count the attempt, and audit it unless the request was malformed."""
        if self._metrics is not None:
            try:
                self._metrics.login(method, attempt.outcome)
            except Exception:
                logger.warning("login metrics failed", exc_info=True)
        if attempt.to_audit:
            await record_quietly(self._audit, action, attempt.target, attempt.outcome, logger)


__all__ = [
    "ActiveSubjects",
    "AuditSink",
    "CredentialStore",
    "DeactivationCanceller",
    "LoginFlow",
    "LoginMetrics",
    "LoginResult",
    "MfaTicketStore",
    "NextStep",
    "PasswordVerifier",
    "PolicyNotifier",
    "PolicyVersions",
    "SecondFactor",
    "SessionIssuer",
    "Throttle",
    "TicketConsumer",
    "session_subject",
]
