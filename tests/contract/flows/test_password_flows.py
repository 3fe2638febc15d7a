"""PasswordFlow on the real stores (SQLite and PostgreSQL): a change or reset is all or
nothing, and a change never overwrites a concurrent reset (SECURITY P3, T3, H2, F2).

Accounts, sessions, the outbox and the audit log are real (`database` fixture);
tickets, the login throttle and the revocation list run on the embedded Redis;
Argon2 at its cheapest costs. Faults are injected by a trigger that makes one
table refuse new rows (`tests/contract/faults.py`), after the flow's first write
(the password hash) has happened inside its unit of work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.contract.accounts.conftest import (
    PASSWORD,
    PHONE,
    AccountsEnv,
    build_env,
    natural_command,
)
from tests.contract.faults import INJECTED, failing_writes, row_counts
from tests.contract.flows.conftest import session_service
from xiaohe.identity.server.accounts.models import AccountCredentials, PersonalData
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.codes.models import Channel, Purpose
from xiaohe.identity.server.credentials.hasher import PasswordHasher
from xiaohe.identity.server.credentials.lockout import LoginThrottle
from xiaohe.identity.server.credentials.passwords import PasswordPolicy
from xiaohe.identity.server.credentials.reauth import PasswordCheck
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.delivery.notices import Notices
from xiaohe.identity.server.delivery.outbox import Outbox
from xiaohe.identity.server.errors import Conflict
from xiaohe.identity.server.flows.passwords import (
    ChangePasswordCommand,
    PasswordFlow,
    ResetPasswordCommand,
)
from xiaohe.identity.server.sessions.models import IssuedSession, SessionSubject
from xiaohe.identity.server.sessions.revocations import RevocationList
from xiaohe.identity.server.sessions.service import SessionService
from xiaohe.identity.server.shared.identifiers import IdentifierKind
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis

CLIENT = "xhc_bff"
IP = "203.0.113.7"
NEW_PASSWORD = "Yunshan-Changjiang-2027"
EMAIL = "zhangsan@example.cn"
TABLES = ("outbox", "sessions", "consents", "identifiers")
FAULT_MESSAGES = {"outbox": "could not be queued", "audit_log": INJECTED}
"""How the injected fault surfaces (the outbox reports a failed write as Unavailable)."""


@dataclass
class PasswordEnv:
    """A PasswordFlow on real stores, and what tests inspect."""

    accounts: AccountsEnv
    sessions: SessionService
    revocations: RevocationList
    audit: AuditLog
    flow: PasswordFlow
    redis: aioredis.Redis
    issued: list[IssuedSession] = field(default_factory=list)

    def make(self, **overrides: object) -> PasswordFlow:
        """A PasswordFlow like `flow`, some collaborators replaced."""
        kwargs: dict[str, object] = {
            "uow": self.accounts.database,
            "accounts": self.accounts.service,
            "sessions": self.sessions,
            "tickets": self.accounts.service_kwargs["tickets"],
            "password_check": PasswordCheck(
                self.accounts.hasher,
                LoginThrottle(self.redis, self.accounts.clock, ip_key=b"i" * 32),
            ),
            "password_policy": self.accounts.service_kwargs["password_policy"],
            "hasher": self.accounts.hasher,
            "notices": Notices(
                Outbox(self.accounts.database, self.accounts.cipher, self.accounts.clock),
                self.accounts.clock,
            ),
            "clock": self.accounts.clock,
            "audit": self.audit,
            **overrides,
        }
        return PasswordFlow(**kwargs)  # type: ignore[arg-type]

    async def account(self) -> str:
        """A registered natural person with an email too, signed in twice; its id."""
        account_id = (await self.accounts.register(natural_command())).account_id
        await self.accounts.service.replace_contact(account_id, "email", expected="", new=EMAIL)
        subject = SessionSubject(account_id, "NATURAL_PERSON", 0)
        for _ in range(2):
            self.issued.append(await self.sessions.create(subject, ("pwd",), client_id=CLIENT))
        return account_id

    async def password_hash(self, account_id: str) -> str:
        """The stored hash."""
        return (await self.accounts.service.get_credentials(account_id)).password_hash

    async def live_sessions(self, account_id: str) -> list[str]:
        """Ids of the account's sessions that SQL still holds active."""
        return sorted(s.session_id for s in await self.sessions.list_sessions(account_id))

    async def revoked(self) -> list[bool]:
        """Whether each issued session is on the revocation list (freshly loaded from Redis)."""
        await self.revocations.reload()
        return [self.revocations.is_revoked(s.session_id) for s in self.issued]

    def change(self, **changes: object) -> ChangePasswordCommand:
        """The caller (first session) changes PASSWORD to NEW_PASSWORD, ending the others."""
        caller = self.issued[0]
        fields: dict[str, object] = {
            "account_id": caller.account_id,
            "session_id": caller.session_id,
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "keep_other_sessions": False,
            "ip": IP,
            **changes,
        }
        return ChangePasswordCommand(**fields)  # type: ignore[arg-type]

    async def reset(self) -> ResetPasswordCommand:
        """A reset by login name with a fresh RESET_PASSWORD ticket for the phone."""
        ticket = await self.accounts.ticket(PHONE, Purpose.RESET_PASSWORD, Channel.SMS)
        return ResetPasswordCommand(
            identifier="zhangsan",
            identifier_kind=IdentifierKind.UNSPECIFIED,
            ticket=ticket,
            new_password=NEW_PASSWORD,
            real_name="",
            ip=IP,
        )


@pytest.fixture
async def env(
    database: Database,
    embedded_redis: EmbeddedRedis,
    clock: FakeClock,
    tmp_path: Path,
    password_policy: PasswordPolicy,
    argon2: PasswordHasher,
) -> AsyncIterator[PasswordEnv]:
    """The password flows on `database`, with tickets, throttle and revocations on Redis."""
    client = aioredis.Redis.from_url(embedded_redis.url + "?db=2")
    await client.flushdb()
    accounts = await build_env(database, client, clock, tmp_path, password_policy, argon2)
    sessions, revocations = session_service(accounts, client)
    audit = AuditLog(database, clock, AuditKeys(bytes(range(32))))
    env = PasswordEnv(accounts, sessions, revocations, audit, flow=None, redis=client)  # type: ignore[arg-type]
    env.flow = env.make()
    yield env
    await client.flushdb()
    await client.aclose()


async def successes(env: PasswordEnv, action: str) -> int:
    """Audit records of `action` with outcome ok."""
    return sum(r.outcome == "ok" for r in await env.audit.query(action=action))


@pytest.mark.parametrize("failing", ["outbox", "audit_log"])
async def test_a_password_change_is_all_or_nothing(env: PasswordEnv, failing: str) -> None:
    """F2, P3, T3, H2: a fault after the new hash is written (the notice or an audit record
    fails) leaves the old hash, every session alive (in SQL and on the revocation list) and
    no notice queued; the same change then goes through once the store works."""
    account_id = await env.account()
    old_hash = await env.password_hash(account_id)
    sessions = await env.live_sessions(account_id)
    before = await row_counts(env.accounts.database, *TABLES)
    async with failing_writes(env.accounts.database, failing):
        with pytest.raises(Exception, match=FAULT_MESSAGES[failing]):
            await env.flow.change(env.change())
    assert await env.password_hash(account_id) == old_hash
    assert await env.live_sessions(account_id) == sessions
    assert await env.revoked() == [False, False]
    assert await row_counts(env.accounts.database, *TABLES) == before
    assert await successes(env, "account.password.change") == 0

    assert await env.flow.change(env.change()) == 1
    assert await env.password_hash(account_id) != old_hash
    assert await env.live_sessions(account_id) == [env.issued[0].session_id]
    assert await env.revoked() == [False, True]
    after = await row_counts(env.accounts.database, *TABLES)
    assert after["outbox"] == before["outbox"] + 2  # the notice, to the phone and the email
    assert await successes(env, "account.password.change") == 1


@pytest.mark.parametrize("failing", ["outbox", "audit_log"])
async def test_a_password_reset_is_all_or_nothing(env: PasswordEnv, failing: str) -> None:
    """F2, P3, T3, H2: a fault after the new hash is written leaves the old hash, every
    session alive and no notice queued (the ticket, consumed in Redis, is spent: the user
    asks for a new code); a reset with a new ticket then goes through."""
    account_id = await env.account()
    old_hash = await env.password_hash(account_id)
    sessions = await env.live_sessions(account_id)
    cmd = await env.reset()
    before = await row_counts(env.accounts.database, *TABLES)
    async with failing_writes(env.accounts.database, failing):
        with pytest.raises(Exception, match=FAULT_MESSAGES[failing]):
            await env.flow.reset(cmd)
    assert await env.password_hash(account_id) == old_hash
    assert await env.live_sessions(account_id) == sessions
    assert await env.revoked() == [False, False]
    assert await row_counts(env.accounts.database, *TABLES) == before
    assert await successes(env, "account.password.reset") == 0

    assert await env.flow.reset(await env.reset()) == 2
    assert await env.password_hash(account_id) != old_hash
    assert await env.live_sessions(account_id) == []
    assert await env.revoked() == [True, True]
    after = await row_counts(env.accounts.database, *TABLES)
    assert after["outbox"] == before["outbox"] + 2
    assert await successes(env, "account.password.reset") == 1


@dataclass
class ResetMeanwhile:
    """The real accounts, where a reset commits its hash after the change read the account
    (and verified the current password against the hash it read) but before it writes."""

    inner: AccountService
    reset_hash: str

    async def find_credentials(
        self, kind: IdentifierKind, normalised: str
    ) -> AccountCredentials | None:
        """Delegate."""
        return await self.inner.find_credentials(kind, normalised)

    async def get_credentials(self, account_id: str) -> AccountCredentials:
        """Delegate."""
        return await self.inner.get_credentials(account_id)

    async def get_personal_data(self, account_id: str) -> PersonalData:
        """Delegate, then let the concurrent reset commit its hash."""
        data = await self.inner.get_personal_data(account_id)
        await self.inner.set_password_hash(account_id, self.reset_hash)
        return data

    async def set_password_hash(
        self, account_id: str, new_hash: str, *, expected_old_hash: str | None = None
    ) -> bool:
        """Delegate."""
        return await self.inner.set_password_hash(
            account_id, new_hash, expected_old_hash=expected_old_hash
        )


async def test_a_change_never_overwrites_a_concurrent_reset(env: PasswordEnv) -> None:
    """P3: the change is conditional on the hash it verified; when a reset stored another one
    meanwhile, the change is Conflict and ends no session, sends nothing."""
    account_id = await env.account()
    reset_hash = await env.accounts.hasher.hash("Reset-Meanwhile-Passphrase-9")
    flow = env.make(accounts=ResetMeanwhile(env.accounts.service, reset_hash))
    before = await row_counts(env.accounts.database, *TABLES)
    with pytest.raises(Conflict):
        await flow.change(env.change())
    assert await env.password_hash(account_id) == reset_hash
    assert len(await env.live_sessions(account_id)) == 2
    assert await row_counts(env.accounts.database, *TABLES) == before
    outcomes = [r.outcome for r in await env.audit.query(action="account.password.change")]
    assert outcomes == ["conflict"]
