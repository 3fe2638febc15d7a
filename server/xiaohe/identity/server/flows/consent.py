"""The consent flow (`PrivacyService.AcceptPolicy`, privacy policy 十, SECURITY.md I3).

A login by an account that accepted an older privacy policy than the current one
answers `NEXT_STEP_CONSENT_REQUIRED` with a restricted session, which may only
read and accept the policy and log out. `accept` records the consent and raises
the account's accepted version; the session is a normal one from its next
Refresh on (the refreshed tokens are computed from the account, see
`login.ActiveSubjects`).
"""

from __future__ import annotations

from dataclasses import dataclass

from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.sink import AuditSink
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import Unimplemented
from xiaohe.identity.server.flows.registration import PolicyVersions
from xiaohe.identity.server.privacy.consents import ConsentLedger
from xiaohe.identity.server.storage.database import UnitOfWork

CONSENT_CHANNEL = "consent"
"""The `consents.channel` of an acceptance after a policy change."""


@dataclass(frozen=True)
class AcceptPolicyCommand:
    """The signed-in account accepts a policy version."""

    account_id: str
    version: int
    client_id: str
    ip: str


class ConsentFlow:
    """Records acceptances of the current privacy policy."""

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

    async def accept(self, cmd: AcceptPolicyCommand) -> int:
        """Record the consent and raise the accepted version; returns it.

        A version that is not the current one is FailedPrecondition (naming the
        current version, field `version`); a version below 1 InvalidArgument.
        One unit of work: the consent record (account, version, time, client,
        masked IP, channel), the account's accepted version and the audit record
        `privacy.consent` commit together.
        """
        raise Unimplemented("this flow is being built")
