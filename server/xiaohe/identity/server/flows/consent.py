"""The consent flow (`PrivacyService.AcceptPolicy`, privacy policy 十, SECURITY.md I3).

A login by an account that accepted an older privacy policy than the current one
answers `NEXT_STEP_CONSENT_REQUIRED` with a restricted session, which may only
read and accept the policy and log out. `accept` records the consent and raises
the account's accepted version; the session is a normal one from its next
Refresh on (the refreshed tokens are computed from the account, see
`login.ActiveSubjects`).

In order:

1. The version must be 1 or more (InvalidArgument on `version`).
2. It must be the current version. The per-process cache of the current
   version may predate a publication by another process moments ago, so a
   version that differs is checked once more against the store itself before
   FailedPrecondition names the current version (field `version`). Accepting
   an older version would let a client consent to text the user was not shown
   as current, so it is refused, never recorded.
3. One unit of work: the consent record (account, version, time, client,
   masked IP, channel `consent`), the account's accepted version and the audit
   record `privacy.consent` commit together, or none of them does. The restriction
   is computed afresh from the account on every refresh, so nothing about the
   caller's session has to change here.

Accepting the current version again records another consent (the ledger is a
history of acts, not a state) and changes nothing else. A refused acceptance
(not a malformed one) is audited too, through the group commit, since it
stores nothing. Nothing here touches Redis.

Withdrawing (`withdraw`, issue 14, PIPL Art. 15) is for separate consents
(`WITHDRAWABLE_PURPOSES`: processing identity documents). Withdrawing the
privacy policy itself would leave an account nothing it may be used for, so it
is refused (FailedPrecondition on `purpose`) with a pointer to deactivation; an
unknown purpose is InvalidArgument, one not in force FailedPrecondition. The
withdrawal record (channel `withdrawal`, the current policy version) and the
audit record `privacy.consent.withdraw` commit together. What a withdrawal of
the identity-documents consent does to stored documents is in
docs/decisions.md ("Withdrawing the identity-documents consent"): new uploads
need the consent again; stored documents and submissions stay as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Protocol

from xiaohe.identity.server.accounts.models import AccountCredentials
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.sink import AuditSink, outcome_of, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import FailedPrecondition, FieldViolation, InvalidArgument
from xiaohe.identity.server.flows.registration import PolicyVersions
from xiaohe.identity.server.privacy.consents import (
    NOTIFIED_ACTION,
    PRIVACY_POLICY_PURPOSE,
    WITHDRAWABLE_PURPOSES,
    Consent,
    ConsentLedger,
)
from xiaohe.identity.server.shared.network import mask_ip
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

CONSENT_CHANNEL: Final = "consent"
"""The `consents.channel` of an acceptance after a policy change."""

CONSENT_ACTION: Final = "privacy.consent"
"""Audit action of an acceptance (target: the account id)."""

VERSION_FIELD: Final = "version"

# -- issue 14: consent withdrawal --
WITHDRAWAL_CHANNEL: Final = "withdrawal"
"""The `consents.channel` of a withdrawal."""

WITHDRAW_ACTION: Final = "privacy.consent.withdraw"
"""Audit action of a withdrawal (target: the account id)."""

PURPOSE_FIELD: Final = "purpose"


@dataclass(frozen=True)
class WithdrawConsentCommand:
    """The signed-in account withdraws a separate consent."""

    account_id: str
    purpose: str
    client_id: str
    ip: str


# -- end consent withdrawal --


@dataclass(frozen=True)
class AcceptPolicyCommand:
    """The signed-in account accepts a policy version."""

    account_id: str
    version: int
    client_id: str
    ip: str


class ConsentFlow:
    """Records acceptances of the current privacy policy (steps in the module docstring)."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: AccountService,
        policies: PolicyVersions,
        consents: ConsentLedger,
        clock: Clock,
        audit: AuditSink | None = None,
    ) -> None:
        self._uow = uow
        self._accounts = accounts
        self._policies = policies
        self._consents = consents
        self._clock = clock
        self._audit = audit

    def __repr__(self) -> str:
        return "ConsentFlow()"

    async def accept(self, cmd: AcceptPolicyCommand) -> int:
        """Record the consent and raise the accepted version; returns it.

        A version that is not the current one is FailedPrecondition (naming the
        current version, field `version`); a version below 1 InvalidArgument.
        One unit of work: the consent record (account, version, time, client,
        masked IP, channel), the account's accepted version and the audit record
        `privacy.consent` commit together.
        """
        if cmd.version < 1:
            raise InvalidArgument(
                FieldViolation(VERSION_FIELD, "must be the number of the policy version accepted")
            )
        try:
            await self._check_current(cmd.version)
            async with self._uow.begin():
                await self._consents.record(
                    cmd.account_id,
                    cmd.version,
                    client_id=cmd.client_id,
                    channel=CONSENT_CHANNEL,
                    ip_masked=mask_ip(cmd.ip),
                )
                await self._accounts.accept_policy_version(cmd.account_id, cmd.version)
                if self._audit is not None:
                    await self._audit.record(CONSENT_ACTION, cmd.account_id, "ok")
        except Exception as exc:
            await record_quietly(
                self._audit, CONSENT_ACTION, cmd.account_id, outcome_of(exc), logger
            )
            raise
        return cmd.version

    # -- issue 14: consent withdrawal --
    async def withdraw(self, cmd: WithdrawConsentCommand) -> str:
        """Record the withdrawal of a separate consent; returns the record's id."""
        if cmd.purpose == PRIVACY_POLICY_PURPOSE:
            raise FailedPrecondition(
                "the privacy policy cannot be withdrawn while the account exists: "
                "deactivate the account instead (AccountService.Deactivate)",
                [FieldViolation(PURPOSE_FIELD, "withdrawing the privacy policy is deactivation")],
            )
        if cmd.purpose not in WITHDRAWABLE_PURPOSES:
            allowed = ", ".join(sorted(WITHDRAWABLE_PURPOSES))
            raise InvalidArgument(FieldViolation(PURPOSE_FIELD, f"must be one of: {allowed}"))
        try:
            if not await self._consents.has_consent(cmd.account_id, cmd.purpose):
                raise FailedPrecondition(
                    f"no consent for {cmd.purpose} is in force",
                    [FieldViolation(PURPOSE_FIELD, "has no consent in force to withdraw")],
                )
            version = (await self._policies.current()).version
            async with self._uow.begin():
                consent_id = await self._consents.withdraw(
                    cmd.account_id,
                    version,
                    client_id=cmd.client_id,
                    channel=WITHDRAWAL_CHANNEL,
                    purpose=cmd.purpose,
                    ip_masked=mask_ip(cmd.ip),
                )
                if self._audit is not None:
                    await self._audit.record(WITHDRAW_ACTION, cmd.account_id, "ok")
        except Exception as exc:
            await record_quietly(
                self._audit, WITHDRAW_ACTION, cmd.account_id, outcome_of(exc), logger
            )
            raise
        return consent_id

    async def history(self, account_id: str) -> list[Consent]:
        """The account's consent records, grants and withdrawals, oldest first."""
        return await self._consents.of_account(account_id)

    # -- end consent withdrawal --

    async def _check_current(self, version: int) -> None:
        """Step 2: FailedPrecondition naming the current version unless `version` is it."""
        current = (await self._policies.current()).version
        if version != current:
            # The cache may predate a version published by another process moments ago.
            current = (await self._policies.current(fresh=True)).version
        if version != current:
            raise FailedPrecondition(
                f"only the current privacy policy can be accepted: version {current}",
                [FieldViolation(VERSION_FIELD, f"must be the current version {current}")],
            )


# -- issue 14: notify-only policy versions --

POLICY_NOTICE_KIND: Final = "policy_updated"
"""The notice of a policy version that changed no purpose."""

POLICY_NOTICE_ACTION: Final = "privacy.policy_notice"
"""Audit action of such a notice (target: the account id)."""

NOTICE_CHANNEL: Final = "login"
"""The `consents.channel` of a `notified` record: told at sign-in."""


class PolicyNotices(Protocol):
    """Queues a notice to an account's channels (`delivery.notices.Notices`)."""

    async def send(self, kind: str, *, phone: str = "", email: str = "", **fields: str) -> int:
        """Queue notice `kind` to the phone and/or email given."""
        ...


class PolicyUpdateNotices:
    """Tells an account, once, of a newer policy version that changed no purpose.

    Called by the login flow after a sign-in that needs no consent (the login's
    `PolicyNotifier`). When the current version is newer than the one the account
    accepted, the account accepted at least the consent floor (else the sign-in
    asked for consent instead) and no `notified` record exists for the current
    version, one unit of work queues the `policy_updated` notice to the account's
    phone and email, appends a `notified` record to the consent ledger (evidence of the notice,
    PIPL Art. 17; not a consent) and the audit record `privacy.policy_notice`. Two
    concurrent sign-ins may both notify; a duplicate notice is harmless and rarer
    than a lock is worth. A failure is logged and never fails the sign-in.
    """

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: AccountService,
        policies: PolicyVersions,
        consents: ConsentLedger,
        notices: PolicyNotices,
        audit: AuditSink | None = None,
    ) -> None:
        self._uow = uow
        self._accounts = accounts
        self._policies = policies
        self._consents = consents
        self._notices = notices
        self._audit = audit

    def __repr__(self) -> str:
        return "PolicyUpdateNotices()"

    async def notify_if_due(self, account: AccountCredentials, client_id: str) -> None:
        """Notify once per version when due (see the class docstring); never raises."""
        try:
            current = await self._policies.current()
            accepted = account.accepted_policy_version
            if accepted >= current.version or accepted < current.consent_floor:
                return
            if await self._consents.was_notified(account.account_id, current.version):
                return
            data = await self._accounts.get_personal_data(account.account_id)
            async with self._uow.begin():
                await self._consents.record(
                    account.account_id,
                    current.version,
                    client_id=client_id,
                    channel=NOTICE_CHANNEL,
                    action=NOTIFIED_ACTION,
                )
                await self._notices.send(
                    POLICY_NOTICE_KIND,
                    phone=data.phone,
                    email=data.email,
                    version=str(current.version),
                )
                if self._audit is not None:
                    await self._audit.record(POLICY_NOTICE_ACTION, account.account_id, "ok")
        except Exception as exc:
            logger.warning("policy notice for a sign-in failed: %s", type(exc).__name__)


# -- end notify-only policy versions --


__all__ = [
    "CONSENT_ACTION",
    "CONSENT_CHANNEL",
    "WITHDRAWAL_CHANNEL",
    "WITHDRAW_ACTION",
    "AcceptPolicyCommand",
    "ConsentFlow",
    "PolicyUpdateNotices",
    "WithdrawConsentCommand",
]
