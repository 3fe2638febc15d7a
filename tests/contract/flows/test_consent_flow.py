"""ConsentFlow on the real stores (SQLite and PostgreSQL): what an acceptance records, and
that it records all of it or nothing (SECURITY I3, I7, F2).

Accounts, consents, policies and the audit log are real (`database` fixture); the
registration that creates the account runs the real flow with tickets on the
embedded Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.contract.accounts.conftest import AccountsEnv, build_env, natural_command
from tests.contract.faults import INJECTED, failing_writes, row_counts
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.credentials.hasher import PasswordHasher
from xiaohe.identity.server.credentials.passwords import PasswordPolicy
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.errors import FailedPrecondition, InvalidArgument
from xiaohe.identity.server.flows.consent import (
    WITHDRAW_ACTION,
    AcceptPolicyCommand,
    ConsentFlow,
    WithdrawConsentCommand,
)
from xiaohe.identity.server.privacy.consents import IDENTITY_DOCUMENTS_PURPOSE, ConsentLedger
from xiaohe.identity.server.privacy.policies import PolicyStore
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis

CLIENT = "xhc_bff"
IP = "203.0.113.7"
NEW_POLICY = "小禾隐私政策（第二版）：新增用途说明。"


@pytest.fixture
async def env(
    database: Database,
    embedded_redis: EmbeddedRedis,
    clock: FakeClock,
    tmp_path: Path,
    password_policy: PasswordPolicy,
    argon2: PasswordHasher,
) -> AsyncIterator[AccountsEnv]:
    """The account service and registration on `database`, tickets on the embedded Redis."""
    client = aioredis.Redis.from_url(embedded_redis.url + "?db=2")
    await client.flushdb()
    yield await build_env(database, client, clock, tmp_path, password_policy, argon2)
    await client.flushdb()
    await client.aclose()


def consent_flow(
    env: AccountsEnv, audit: AuditLog, policies: PolicyStore | None = None
) -> ConsentFlow:
    """A ConsentFlow on the env's stores with a real audit log."""
    return ConsentFlow(
        uow=env.database,
        accounts=env.service,
        policies=policies or env.policies,
        consents=ConsentLedger(env.database, env.clock),
        clock=env.clock,
        audit=audit,
    )


def audit_log(env: AccountsEnv) -> AuditLog:
    """The real, keyed audit log on the env's database."""
    return AuditLog(env.database, env.clock, AuditKeys(bytes(range(32))))


def accept(version: int, account_id: str) -> AcceptPolicyCommand:
    """An acceptance from the usual client and address."""
    return AcceptPolicyCommand(account_id=account_id, version=version, client_id=CLIENT, ip=IP)


async def test_an_acceptance_records_consent_version_and_audit(env: AccountsEnv) -> None:
    """I3, I7: accepting the current version stores the consent (account, version, time,
    client, masked IP, channel `consent`), raises the account's accepted version and writes
    the audit record."""
    account_id = (await env.register(natural_command())).account_id
    env.clock.advance(60)
    await env.policies.publish(NEW_POLICY)
    log = audit_log(env)
    assert await consent_flow(env, log).accept(accept(2, account_id)) == 2

    consents = await ConsentLedger(env.database, env.clock).of_account(account_id)
    latest = consents[-1]
    assert (latest.policy_version, latest.channel, latest.client_id, latest.ip_masked) == (
        2,
        "consent",
        CLIENT,
        "203.0.113.*",
    )
    assert latest.accepted_at == pytest.approx(env.clock.now())
    assert (await env.service.get_credentials(account_id)).accepted_policy_version == 2
    assert [(r.target, r.outcome) for r in await log.query(action="privacy.consent")] == [
        (account_id, "ok")
    ]
    assert (await log.verify_chain()).intact


async def test_a_version_another_process_published_is_accepted(env: AccountsEnv) -> None:
    """I3: the flow's cached current version may be stale; a version published by another
    process is read afresh before refusing. An older version is FailedPrecondition naming
    the current one on `version`, and 0 is InvalidArgument on `version`."""
    account_id = (await env.register(natural_command())).account_id
    cached = PolicyStore(env.database, env.clock, cache_seconds=3600)
    assert (await cached.current()).version == 1  # cached now
    await PolicyStore(env.database, env.clock).publish(NEW_POLICY)  # "another process"
    log = audit_log(env)
    assert await consent_flow(env, log, policies=cached).accept(accept(2, account_id)) == 2
    assert (await env.service.get_credentials(account_id)).accepted_policy_version == 2

    flow = consent_flow(env, log, policies=PolicyStore(env.database, env.clock, cache_seconds=0))
    with pytest.raises(FailedPrecondition) as old:
        await flow.accept(accept(1, account_id))
    assert [(v.field, v.description) for v in old.value.violations] == [
        ("version", "must be the current version 2")
    ]
    with pytest.raises(InvalidArgument) as zero:
        await flow.accept(accept(0, account_id))
    assert [v.field for v in zero.value.violations] == ["version"]
    versions = [
        c.policy_version
        for c in await ConsentLedger(env.database, env.clock).of_account(account_id)
    ]
    assert sorted(versions) == [1, 2]


@pytest.mark.parametrize(("table", "operation"), [("audit_log", "INSERT"), ("accounts", "UPDATE")])
async def test_an_acceptance_is_all_or_nothing(
    env: AccountsEnv, table: str, operation: str
) -> None:
    """F2, I3, I7: a fault after the consent row is written (the account's version, or the
    audit record, fails) leaves no consent, the old accepted version and no success record."""
    account_id = (await env.register(natural_command())).account_id
    await env.policies.publish(NEW_POLICY)
    log = audit_log(env)
    flow = consent_flow(env, log)
    before = await row_counts(env.database, "consents", "outbox")
    async with failing_writes(env.database, table, operation):
        with pytest.raises(Exception, match=INJECTED):
            await flow.accept(accept(2, account_id))
    assert await row_counts(env.database, "consents", "outbox") == before
    assert (await env.service.get_credentials(account_id)).accepted_policy_version == 1
    assert "ok" not in [r.outcome for r in await log.query(action="privacy.consent")]
    # The same acceptance goes through once the store works again.
    assert await flow.accept(accept(2, account_id)) == 2
    assert (await env.service.get_credentials(account_id)).accepted_policy_version == 2


# -- issue 14: consent withdrawal --


def withdraw(account_id: str, purpose: str = IDENTITY_DOCUMENTS_PURPOSE) -> WithdrawConsentCommand:
    """A withdrawal from the usual client and address."""
    return WithdrawConsentCommand(account_id=account_id, purpose=purpose, client_id=CLIENT, ip=IP)


async def grant_documents_consent(env: AccountsEnv, account_id: str) -> None:
    """The separate consent to processing identity documents, as an upload records it."""
    await ConsentLedger(env.database, env.clock).record(
        account_id, 1, client_id=CLIENT, channel="upload", purpose=IDENTITY_DOCUMENTS_PURPOSE
    )


async def test_a_withdrawal_is_appended_audited_and_ends_the_consent(env: AccountsEnv) -> None:
    """I2, I3, I7 (issue 14): withdrawing the identity-documents consent appends a `withdraw`
    record (the grant stays in the history), is audited, and the consent is no longer in
    force; a later grant brings it back; a grant at the same instant as a withdrawal does
    not count (the cautious reading)."""
    account_id = (await env.register(natural_command())).account_id
    ledger = ConsentLedger(env.database, env.clock)
    log = audit_log(env)
    flow = consent_flow(env, log)
    env.clock.advance(1)
    await grant_documents_consent(env, account_id)
    assert await ledger.has_consent(account_id, IDENTITY_DOCUMENTS_PURPOSE)
    env.clock.advance(10)

    withdrawal_id = await flow.withdraw(withdraw(account_id))
    assert not await ledger.has_consent(account_id, IDENTITY_DOCUMENTS_PURPOSE)
    history = await flow.history(account_id)
    assert [(c.purpose, c.action) for c in history] == [
        ("privacy_policy", "grant"),
        (IDENTITY_DOCUMENTS_PURPOSE, "grant"),
        (IDENTITY_DOCUMENTS_PURPOSE, "withdraw"),
    ]
    last = history[-1]
    assert (last.consent_id, last.channel, last.client_id, last.ip_masked) == (
        withdrawal_id,
        "withdrawal",
        CLIENT,
        "203.0.113.*",
    )
    assert [(r.target, r.outcome) for r in await log.query(action=WITHDRAW_ACTION)] == [
        (account_id, "ok")
    ]
    assert (await log.verify_chain()).intact

    await grant_documents_consent(env, account_id)  # same instant as the withdrawal
    assert not await ledger.has_consent(account_id, IDENTITY_DOCUMENTS_PURPOSE)
    env.clock.advance(1)
    await grant_documents_consent(env, account_id)
    assert await ledger.has_consent(account_id, IDENTITY_DOCUMENTS_PURPOSE)
    # The main policy is untouched by all of this.
    assert await ledger.has_consent(account_id, "privacy_policy")


async def test_withdrawal_refusals_are_clear(env: AccountsEnv) -> None:
    """Issue 14: withdrawing the privacy policy is FailedPrecondition pointing at
    deactivation; an unknown purpose InvalidArgument; a consent not in force
    FailedPrecondition; each on `purpose`, and nothing is recorded."""
    account_id = (await env.register(natural_command())).account_id
    flow = consent_flow(env, audit_log(env))
    before = await row_counts(env.database, "consents")
    with pytest.raises(FailedPrecondition) as policy:
        await flow.withdraw(withdraw(account_id, "privacy_policy"))
    assert "Deactivate" in policy.value.message
    assert [v.field for v in policy.value.violations] == ["purpose"]
    with pytest.raises(InvalidArgument) as unknown:
        await flow.withdraw(withdraw(account_id, "marketing"))
    assert [v.field for v in unknown.value.violations] == ["purpose"]
    with pytest.raises(FailedPrecondition) as not_given:
        await flow.withdraw(withdraw(account_id))
    assert [v.field for v in not_given.value.violations] == ["purpose"]
    assert await row_counts(env.database, "consents") == before


async def test_a_withdrawal_is_all_or_nothing(env: AccountsEnv) -> None:
    """F2, I7 (issue 14): when the audit record cannot be written the withdrawal record is
    not kept either, and the consent stays in force; it goes through once the store works."""
    account_id = (await env.register(natural_command())).account_id
    await grant_documents_consent(env, account_id)
    env.clock.advance(1)
    log = audit_log(env)
    flow = consent_flow(env, log)
    before = await row_counts(env.database, "consents")
    async with failing_writes(env.database, "audit_log", "INSERT"):
        with pytest.raises(Exception, match=INJECTED):
            await flow.withdraw(withdraw(account_id))
    assert await row_counts(env.database, "consents") == before
    ledger = ConsentLedger(env.database, env.clock)
    assert await ledger.has_consent(account_id, IDENTITY_DOCUMENTS_PURPOSE)
    await flow.withdraw(withdraw(account_id))
    assert not await ledger.has_consent(account_id, IDENTITY_DOCUMENTS_PURPOSE)


# -- end consent withdrawal --
