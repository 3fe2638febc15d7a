"""The TOTP second factor: enrol, confirm, disable (`AccountService.EnrollTotp`,
`ConfirmTotp`, `DisableTotp`), and the code check that `CompleteMfa` shares.

Wrong codes are wrong passwords (SECURITY D3, B1, B2). Every TOTP or recovery
code presented for an account goes through `CodeAttempts`, which runs it under
the login throttle exactly as `credentials.reauth.PasswordCheck` runs a
password: `admit` reserves one evaluation in the account's hourly budget (or
refuses: a locked (account, IP) pair or a spent budget refuse even the right
code, without evaluating it), a wrong code is `record_failure` (ten from one IP
lock the pair, like ten wrong passwords), a right one is `record_success`
(which clears this IP's failures), and an evaluation that raised is refunded
(`release`). Wrong, replayed and refused codes get the same InvalidCredentials.
A code of the wrong shape (not six digits; not a recovery code) is
InvalidArgument and costs nothing.

Enrol (signed in): the current password through `PasswordCheck` (a wrong one
counts toward the lock), then a new pending secret replaces any pending one;
an active factor is FailedPrecondition. The answer carries the otpauth URI and
its QR code; nothing is active yet.

Confirm: the first code of the pending secret. One unit of work makes the factor
active (its time step spent, so the confirming code cannot sign in again),
stores the ten recovery codes' hashes, queues the `totp_enabled` notice and
audits `account.totp.confirm`; the codes are returned once and never again.

Disable: a current TOTP code or a recovery code. One unit of work spends the
code, removes the factor and its recovery codes, queues `totp_disabled` and
audits `account.totp.disable`; a wrong code writes nothing.

Redis side effects (the throttle scripts) run before and after the unit of
work, never inside it; a failed commit refunds the reservation.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from xiaohe.identity.server.accounts.models import AccountCredentials, PersonalData
from xiaohe.identity.server.audit.sink import AuditSink, outcome_of, record_quietly
from xiaohe.identity.server.credentials.reauth import Throttle
from xiaohe.identity.server.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    InvalidCredentials,
)
from xiaohe.identity.server.shared.validation import Violations, check_password_shape
from xiaohe.identity.server.storage.database import UnitOfWork
from xiaohe.identity.server.totp.codes import normalise_code, normalise_recovery_code
from xiaohe.identity.server.totp.service import Enrolment

logger = logging.getLogger(__name__)

ENROLL_ACTION: Final = "account.totp.enroll"
CONFIRM_ACTION: Final = "account.totp.confirm"
DISABLE_ACTION: Final = "account.totp.disable"
ENABLED_NOTICE: Final = "totp_enabled"
DISABLED_NOTICE: Final = "totp_disabled"
WRONG_CODE: Final = "the code is incorrect or was already used"
MAX_CODE_CHARS: Final = 64
"""Longer input is no code: refused by shape, before anything is counted."""


class CodeVerifier(Protocol):
    """Accepts second-factor codes (`totp.service.TotpService`)."""

    async def verify_code(self, account_id: str, code: str) -> bool:
        """Accept a current code of the active factor once."""
        ...

    async def use_recovery_code(self, account_id: str, code: str) -> bool:
        """Spend one recovery code."""
        ...


class SecondFactor(CodeVerifier, Protocol):
    """The TOTP capability (`totp.service.TotpService`)."""

    async def is_enrolled(self, account_id: str) -> bool:
        """Whether the account has an active factor."""
        ...

    async def start_enrolment(self, account_id: str, label: str) -> Enrolment:
        """A new pending secret; FailedPrecondition when a factor is active."""
        ...

    async def activate(self, account_id: str, code: str) -> tuple[str, ...] | None:
        """Activate the pending factor with its first code; recovery codes, or None if wrong."""
        ...

    async def verify_code(self, account_id: str, code: str) -> bool:
        """Accept a current code of the active factor once."""
        ...

    async def use_recovery_code(self, account_id: str, code: str) -> bool:
        """Spend one recovery code."""
        ...

    async def remove(self, account_id: str) -> bool:
        """Remove the factor and its recovery codes."""
        ...


class TotpAccounts(Protocol):
    """What the TOTP flows need of the accounts (`accounts.service.AccountService`)."""

    async def get_credentials(self, account_id: str) -> AccountCredentials:
        """The credentials of an account; NotFound if none."""
        ...

    async def get_personal_data(self, account_id: str) -> PersonalData:
        """The account's decrypted personal data (for the notices)."""
        ...


class CurrentPassword(Protocol):
    """Re-authentication under the login throttle (`credentials.reauth.PasswordCheck`)."""

    async def verify(self, account_id: str, password_hash: str, password: str, ip: str) -> None:
        """Return if `password` is the account's; InvalidCredentials otherwise (or when locked)."""
        ...


class NoticeSender(Protocol):
    """Security notices through the outbox (`delivery.notices.Notices`)."""

    async def send(self, kind: str, *, phone: str = "", email: str = "", **fields: str) -> int:
        """Queue the notice `kind` to each address given."""
        ...


@dataclass(frozen=True)
class SecondFactorCode:
    """A TOTP code or a recovery code as typed (exactly one is set), with the request paths
    that name them in errors."""

    totp_code: str = field(default="", repr=False)
    recovery_code: str = field(default="", repr=False)
    totp_field: str = "totp_code"
    recovery_field: str = "recovery_code"

    def checked(self) -> SecondFactorCode:
        """The code normalised; InvalidArgument when neither or a malformed one is given."""
        if self.totp_code:
            typed = normalise_code(self.totp_code[:MAX_CODE_CHARS])
            if typed is None or len(self.totp_code) > MAX_CODE_CHARS:
                raise InvalidArgument(FieldViolation(self.totp_field, "must be 6 digits"))
            return SecondFactorCode(totp_code=typed, totp_field=self.totp_field)
        if self.recovery_code:
            typed = normalise_recovery_code(self.recovery_code[:MAX_CODE_CHARS])
            if typed is None or len(self.recovery_code) > MAX_CODE_CHARS:
                raise InvalidArgument(
                    FieldViolation(
                        self.recovery_field, "must be a recovery code (xxxx-xxxx-xxxx-xxxx)"
                    )
                )
            return SecondFactorCode(recovery_code=typed, recovery_field=self.recovery_field)
        raise InvalidArgument(
            FieldViolation("factor", f"give a {self.totp_field} or a {self.recovery_field}")
        )

    @property
    def method(self) -> str:
        """`totp` or `recovery_code` (audit and metrics, never the code)."""
        return "totp" if self.totp_code else "recovery_code"


class CodeAttempts:
    """Runs one evaluation of a second-factor code under the login throttle (module docstring)."""

    def __init__(self, throttle: Throttle) -> None:
        self._throttle = throttle

    async def run(
        self,
        account_id: str,
        ip: str,
        evaluate: Callable[[], Awaitable[bool]],
        *,
        despite_lock: bool = False,
    ) -> None:
        """Return if `evaluate()` accepts the code; InvalidCredentials if it does not or the
        account is locked for this IP. An exception from `evaluate` refunds the attempt.

        `despite_lock`: the code completes an SMS login, and a locked account can still
        sign in by SMS (B2), so a lock does not refuse it. Its guesses stay bounded: five
        presentations per MFA ticket, and each ticket needs a new SMS code, whose issue
        is limited per number.
        """
        admission = await self._throttle.admit(account_id, ip)
        if admission.refusal is not None:
            await self._throttle.touch(account_id, ip)
            if not despite_lock or not await evaluate():
                raise InvalidCredentials(WRONG_CODE)
            await self._throttle.clear(account_id, ip)
            return
        try:
            right = await evaluate()
        except BaseException:
            await self._throttle.release(account_id, ip, admission.reservation)
            raise
        if not right:
            await self._throttle.record_failure(account_id, ip, admission.reservation)
            raise InvalidCredentials(WRONG_CODE)
        await self._throttle.record_success(account_id, ip, admission.reservation)

    async def verify(
        self,
        factor: CodeVerifier,
        account_id: str,
        ip: str,
        code: SecondFactorCode,
        *,
        despite_lock: bool = False,
    ) -> None:
        """Accept a checked TOTP code (once: D3) or spend a recovery code, under the throttle
        (`run`)."""

        async def evaluate() -> bool:
            if code.totp_code:
                return await factor.verify_code(account_id, code.totp_code)
            return await factor.use_recovery_code(account_id, code.recovery_code)

        await self.run(account_id, ip, evaluate, despite_lock=despite_lock)


@dataclass(frozen=True)
class EnrollTotpCommand:
    """The signed-in account starts enrolment, proving its password again."""

    account_id: str
    password: str = field(repr=False)
    ip: str


@dataclass(frozen=True)
class ConfirmTotpCommand:
    """The signed-in account confirms the pending secret with its first code."""

    account_id: str
    code: str = field(repr=False)
    ip: str


@dataclass(frozen=True)
class DisableTotpCommand:
    """The signed-in account removes its factor with a current code or a recovery code."""

    account_id: str
    code: SecondFactorCode
    ip: str


class _Wrong(Exception):
    """A code that did not match, raised inside a unit of work to roll it back."""


class OperatorCheck(Protocol):
    """Operator roles (`review.roles.OperatorRoles`)."""

    async def holds(self, account_id: str, role: str) -> bool:
        """Whether the account holds `role` now."""
        ...


REVIEW_ROLE: Final = "review"


class TotpFlow:
    """Enrols, confirms and disables the TOTP factor (steps in the module docstring)."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: TotpAccounts,
        totp: SecondFactor,
        password_check: CurrentPassword,
        throttle: Throttle,
        notices: NoticeSender,
        audit: AuditSink | None = None,
        operators: OperatorCheck | None = None,
    ) -> None:
        self._uow = uow
        self._accounts = accounts
        self._operators = operators
        self._totp = totp
        self._password_check = password_check
        self._attempts = CodeAttempts(throttle)
        self._notices = notices
        self._audit = audit

    def __repr__(self) -> str:
        return "TotpFlow()"

    async def enroll(self, cmd: EnrollTotpCommand) -> Enrolment:
        """A pending secret for the account. Raises InvalidArgument (`password`),
        InvalidCredentials (wrong password or locked), FailedPrecondition (already active)."""
        shape = Violations()
        check_password_shape(shape, cmd.password, field_name="password")
        shape.raise_if_any()
        try:
            if await self._totp.is_enrolled(cmd.account_id):
                raise FailedPrecondition(
                    "two-step verification is already on; disable it before enrolling again"
                )
            account = await self._accounts.get_credentials(cmd.account_id)
            await self._password_check.verify(
                account.account_id, account.password_hash, cmd.password, cmd.ip
            )
            async with self._uow.begin():
                enrolment = await self._totp.start_enrolment(account.account_id, account.login_name)
                await self._record(ENROLL_ACTION, account.account_id)
        except Exception as exc:
            await record_quietly(
                self._audit, ENROLL_ACTION, cmd.account_id, outcome_of(exc), logger
            )
            raise
        return enrolment

    async def confirm(self, cmd: ConfirmTotpCommand) -> tuple[str, ...]:
        """Activate the pending factor; returns the recovery codes (shown once). Raises
        InvalidArgument (`code`), FailedPrecondition (nothing pending), InvalidCredentials."""
        code = normalise_code(cmd.code[:MAX_CODE_CHARS])
        if code is None or len(cmd.code) > MAX_CODE_CHARS:
            raise InvalidArgument(FieldViolation("code", "must be 6 digits"))
        recovery: tuple[str, ...] = ()
        try:
            if await self._totp.is_enrolled(cmd.account_id):
                raise FailedPrecondition("two-step verification is already on")
            data = await self._accounts.get_personal_data(cmd.account_id)

            async def evaluate() -> bool:
                nonlocal recovery
                try:
                    async with self._uow.begin():
                        codes = await self._totp.activate(cmd.account_id, code)
                        if codes is None:
                            raise _Wrong
                        await self._notices.send(ENABLED_NOTICE, phone=data.phone, email=data.email)
                        await self._record(CONFIRM_ACTION, cmd.account_id)
                except _Wrong:
                    return False
                recovery = codes
                return True

            await self._attempts.run(cmd.account_id, cmd.ip, evaluate)
        except Exception as exc:
            await record_quietly(
                self._audit, CONFIRM_ACTION, cmd.account_id, outcome_of(exc), logger
            )
            raise
        return recovery

    async def disable(self, cmd: DisableTotpCommand) -> None:
        """Remove the active factor and its recovery codes. Raises InvalidArgument,
        FailedPrecondition (not on), InvalidCredentials (wrong code or locked)."""
        code = cmd.code.checked()
        try:
            if not await self._totp.is_enrolled(cmd.account_id):
                raise FailedPrecondition("two-step verification is not on")
            if self._operators is not None and await self._operators.holds(
                cmd.account_id, REVIEW_ROLE
            ):
                # P5: an operator's account keeps its second factor while it holds a role.
                raise FailedPrecondition(
                    "an account with an operator role keeps two-step verification; "
                    "revoke the role first"
                )
            data = await self._accounts.get_personal_data(cmd.account_id)

            async def evaluate() -> bool:
                try:
                    async with self._uow.begin():
                        if code.totp_code:
                            right = await self._totp.verify_code(cmd.account_id, code.totp_code)
                        else:
                            right = await self._totp.use_recovery_code(
                                cmd.account_id, code.recovery_code
                            )
                        if not right:
                            raise _Wrong
                        await self._totp.remove(cmd.account_id)
                        await self._notices.send(
                            DISABLED_NOTICE, phone=data.phone, email=data.email
                        )
                        await self._record(DISABLE_ACTION, cmd.account_id)
                except _Wrong:
                    return False
                return True

            await self._attempts.run(cmd.account_id, cmd.ip, evaluate)
        except Exception as exc:
            await record_quietly(
                self._audit, DISABLE_ACTION, cmd.account_id, outcome_of(exc), logger
            )
            raise

    async def _record(self, action: str, account_id: str) -> None:
        if self._audit is not None:
            await self._audit.record(action, account_id, "ok")


__all__ = [
    "CONFIRM_ACTION",
    "DISABLE_ACTION",
    "ENROLL_ACTION",
    "CodeAttempts",
    "CodeVerifier",
    "ConfirmTotpCommand",
    "DisableTotpCommand",
    "EnrollTotpCommand",
    "SecondFactor",
    "SecondFactorCode",
    "TotpFlow",
]
