"""TotpFlow on the real stores (SQLite and PostgreSQL): confirming and disabling are all or
nothing, and wrong codes count toward the login throttle (SECURITY D3, B2).

Accounts, the outbox and the audit log are real (`database` fixture); the throttle runs
on the embedded Redis; faults are injected by a trigger that makes one table refuse
new rows (`tests/contract/faults.py`) after the flow's first write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from tests.contract.accounts.conftest import PASSWORD, AccountsEnv, build_env, natural_command
from tests.contract.faults import INJECTED, failing_writes, row_counts
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.credentials.hasher import PasswordHasher
from xiaohe.identity.server.credentials.lockout import LoginThrottle
from xiaohe.identity.server.credentials.passwords import PasswordPolicy
from xiaohe.identity.server.credentials.reauth import PasswordCheck
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.delivery.notices import Notices
from xiaohe.identity.server.delivery.outbox import Outbox
from xiaohe.identity.server.errors import InvalidCredentials
from xiaohe.identity.server.flows.totp import (
    ConfirmTotpCommand,
    DisableTotpCommand,
    EnrollTotpCommand,
    SecondFactorCode,
    TotpFlow,
)
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.schema import audit_log
from xiaohe.identity.server.totp.codes import code_at
from xiaohe.identity.server.totp.repository import SqlTotpRepository
from xiaohe.identity.server.totp.service import TotpService

IP = "203.0.113.7"
TABLES = ("outbox", "totp_factors", "totp_recovery_codes")
FAULT_MESSAGES = {"outbox": "could not be queued", "audit_log": INJECTED}


@dataclass
class TotpEnv:
    accounts: AccountsEnv
    totp: TotpService
    throttle: LoginThrottle
    flow: TotpFlow
    account_id: str = ""

    async def enrol(self) -> str:
        """A pending factor for the account; its secret."""
        enrolment = await self.flow.enroll(EnrollTotpCommand(self.account_id, PASSWORD, IP))
        return parse_qs(urlparse(enrolment.otpauth_uri).query)["secret"][0]

    def code(self, secret: str) -> str:
        return code_at(secret, self.accounts.clock.now())

    async def oks(self, action: str) -> int:
        async with self.accounts.database.connect() as conn:
            return int(
                (
                    await conn.execute(
                        sa.select(sa.func.count())
                        .select_from(audit_log)
                        .where(audit_log.c.action == action, audit_log.c.outcome == "ok")
                    )
                ).scalar_one()
            )


@pytest.fixture
async def env(
    database: Database,
    embedded_redis: EmbeddedRedis,
    clock: FakeClock,
    tmp_path: Path,
    password_policy: PasswordPolicy,
    argon2: PasswordHasher,
) -> AsyncIterator[TotpEnv]:
    hasher = argon2
    client = aioredis.Redis.from_url(embedded_redis.url + "?db=2")
    await client.flushdb()
    accounts = await build_env(database, client, clock, tmp_path, password_policy, hasher)
    throttle = LoginThrottle(client, clock, ip_key=b"i" * 32)
    totp = TotpService(
        SqlTotpRepository(database),
        accounts.cipher,
        clock,
        issuer="小禾企服网",
        recovery_key=b"r" * 32,
    )
    flow = TotpFlow(
        uow=database,
        accounts=accounts.service,
        totp=totp,
        password_check=PasswordCheck(hasher, throttle),
        throttle=throttle,
        notices=Notices(Outbox(database, accounts.cipher, clock), clock),
        audit=AuditLog(database, clock, AuditKeys(bytes(range(32)))),
    )
    env = TotpEnv(accounts, totp, throttle, flow)
    env.account_id = (await accounts.register(natural_command())).account_id
    yield env
    await client.flushdb()
    await client.aclose()


@pytest.mark.parametrize("failing", ["outbox", "audit_log"])
async def test_confirming_is_all_or_nothing(env: TotpEnv, failing: str) -> None:
    """D3: activation, recovery codes, notice and audit record commit together or not at all."""
    secret = await env.enrol()
    before = await row_counts(env.accounts.database, *TABLES)
    confirm = ConfirmTotpCommand(env.account_id, env.code(secret), IP)
    async with failing_writes(env.accounts.database, failing):
        with pytest.raises(Exception, match=FAULT_MESSAGES[failing]):
            await env.flow.confirm(confirm)
    assert await row_counts(env.accounts.database, *TABLES) == before
    assert not await env.totp.is_enrolled(env.account_id)
    assert await env.oks("account.totp.confirm") == 0
    codes = await env.flow.confirm(confirm)
    assert len(codes) == 10
    after = await row_counts(env.accounts.database, *TABLES)
    assert after["totp_recovery_codes"] == before["totp_recovery_codes"] + 10
    assert after["outbox"] == before["outbox"] + 1  # the notice, to the phone
    assert await env.oks("account.totp.confirm") == 1


@pytest.mark.parametrize("failing", ["outbox", "audit_log"])
async def test_disabling_is_all_or_nothing(env: TotpEnv, failing: str) -> None:
    """D3: the code is spent and the factor removed only with the notice and the audit."""
    secret = await env.enrol()
    codes = await env.flow.confirm(ConfirmTotpCommand(env.account_id, env.code(secret), IP))
    env.accounts.clock.advance(30)
    disable = DisableTotpCommand(env.account_id, SecondFactorCode(totp_code=env.code(secret)), IP)
    async with failing_writes(env.accounts.database, failing):
        with pytest.raises(Exception, match=FAULT_MESSAGES[failing]):
            await env.flow.disable(disable)
    assert await env.totp.is_enrolled(env.account_id)
    assert await env.totp.recovery_codes_left(env.account_id) == len(codes)
    await env.flow.disable(disable)  # the code was not spent by the failed attempt
    assert not await env.totp.is_enrolled(env.account_id)
    assert await env.oks("account.totp.disable") == 1


async def test_wrong_codes_are_failed_logins(env: TotpEnv) -> None:
    """D3, B2: ten wrong confirmation codes from one address lock that pair: the right code
    is then refused too, without being evaluated."""
    secret = await env.enrol()
    wrong = f"{(int(env.code(secret)) + 1) % 1_000_000:06d}"
    for _ in range(10):
        with pytest.raises(InvalidCredentials):
            await env.flow.confirm(ConfirmTotpCommand(env.account_id, wrong, IP))
    refused = await env.throttle.admit(env.account_id, IP)
    assert refused.refusal is not None
    with pytest.raises(InvalidCredentials):
        await env.flow.confirm(ConfirmTotpCommand(env.account_id, env.code(secret), IP))
    assert not await env.totp.is_enrolled(env.account_id)
    admitted = await env.throttle.admit(env.account_id, "198.51.100.1")  # another address
    assert admitted.refusal is None
