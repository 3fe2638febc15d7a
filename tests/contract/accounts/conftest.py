"""Fixtures for the account contract suites: the real stores, real tickets, cheap Argon2.

Accounts, identifiers and consents live in the `database` fixture (SQLite and
PostgreSQL). Tickets are real: the real CodeService issues a code to a
list-backed queue, the test reads it from the message text and verifies it
into a ticket, which the real TicketService consumes. To keep the suite fast,
most tests take their tickets from the embedded Redis only; the tests about
ticket binding run over `redis_client` (embedded and system Redis).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from tests.contract.codes.conftest import ListQueue, RecordingAudit, compose
from xiaohe.identity.server.accounts.models import SubjectType
from xiaohe.identity.server.accounts.repository import AccountRepository, SqlAccountRepository
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.codes.models import (
    Channel,
    CodePolicy,
    IssueCodeCommand,
    Purpose,
    VerifyCodeCommand,
)
from xiaohe.identity.server.codes.service import CodeService
from xiaohe.identity.server.codes.tickets import TicketService
from xiaohe.identity.server.credentials.hasher import Argon2Parameters, PasswordHasher
from xiaohe.identity.server.credentials.passwords import CommonPasswords, PasswordPolicy
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.crypto.envelope import DataKeyCipher
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.delivery.notices import Notices
from xiaohe.identity.server.delivery.outbox import Outbox
from xiaohe.identity.server.flows.registration import (
    RegisterCommand,
    RegisteredAccount,
    RegistrationFlow,
)
from xiaohe.identity.server.privacy.consents import ConsentLedger
from xiaohe.identity.server.privacy.policies import PolicyStore
from xiaohe.identity.server.shared.identifiers import IdType
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis

PHONE = "13812345678"
PHONE_E164 = "+8613812345678"
OTHER_PHONE = "13987654321"
THIRD_PHONE = "15011112222"
ID_NUMBER = "11010519491231002X"
OTHER_ID_NUMBER = "440524188001010014"
USCC = "91350100M000100Y43"
OTHER_USCC = "91310110666007217T"
NAME = "张三丰"
ORGANIZATION = "青海小禾科技服务有限公司"
PASSWORD = "Blue-Orchid-Lantern-47"

# Codes can be requested as often as a test likes; the limits are tested in the codes suite.
_OPEN_CODE_POLICY = CodePolicy(
    cooldown=0,
    per_destination_hour=10_000,
    per_destination_day=10_000,
    failures_per_destination_hour=10_000,
)


def natural_command(**changes: Any) -> RegisterCommand:
    """A valid natural-person registration (without a ticket); keyword arguments override."""
    base = RegisterCommand(
        subject_type=SubjectType.NATURAL_PERSON,
        login_name="zhangsan",
        password=PASSWORD,
        phone=PHONE,
        phone_ticket="",
        accepted_policy_version=1,
        name=NAME,
        id_type=IdType.RESIDENT_ID_CARD,
        id_number=ID_NUMBER,
    )
    return replace(base, **changes)


def legal_command(**changes: Any) -> RegisterCommand:
    """A valid legal-person registration (without a ticket); keyword arguments override."""
    base = RegisterCommand(
        subject_type=SubjectType.LEGAL_PERSON,
        login_name="qinghai-tech",
        password=PASSWORD,
        phone=OTHER_PHONE,
        phone_ticket="",
        accepted_policy_version=1,
        organization_name=ORGANIZATION,
        uscc=USCC,
    )
    return replace(base, **changes)


_ACCOUNT_SERVICE_ARGS = frozenset(
    {
        "repository",
        "uow",
        "cipher",
        "master_keys",
        "blind_index",
        "clock",
        "token_bytes",
        "rewrap_batch_size",
    }
)
_SHARED_ARGS = frozenset({"clock", "uow"})


@dataclass
class AccountsEnv:
    """The account service and the registration flow on the test database with real tickets,
    and what a test inspects."""

    service: AccountService
    registration: RegistrationFlow
    repository: AccountRepository
    policies: PolicyStore
    database: Database
    keyring: KeyRing
    cipher: DataKeyCipher
    blind: BlindIndex
    hasher: PasswordHasher
    codes: CodeService
    queue: ListQueue
    audit: RecordingAudit
    clock: FakeClock
    service_kwargs: dict[str, Any]

    async def ticket(
        self,
        phone: str = PHONE,
        purpose: Purpose = Purpose.REGISTER,
        channel: Channel = Channel.SMS,
    ) -> str:
        """A real, live ticket for (channel, phone, purpose)."""
        await self.codes.issue(IssueCodeCommand(channel, phone, purpose))
        code = self.queue.last_code()
        verified = await self.codes.verify(VerifyCodeCommand(channel, phone, purpose, code))
        return verified.ticket

    async def register(self, cmd: RegisterCommand) -> RegisteredAccount:
        """Register `cmd`, with a fresh REGISTER ticket for its phone unless it carries one."""
        if not cmd.phone_ticket:
            cmd = replace(cmd, phone_ticket=await self.ticket(cmd.phone))
        return await self.registration.register(cmd, client_id="bff-web", channel="web")

    async def counts(self) -> dict[str, int]:
        """Rows in the tables a registration writes."""
        out: dict[str, int] = {}
        async with self.database.connect() as conn:
            for table in ("accounts", "identifiers", "consents"):
                out[table] = int(
                    (await conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}"))).scalar_one()  # noqa: S608
                )
        return out

    def with_accounts(self, **overrides: Any) -> AccountService:
        """Another account service on the same stores, some collaborators replaced."""
        kwargs = {**self.service_kwargs, **overrides}
        return AccountService(**{k: v for k, v in kwargs.items() if k in _ACCOUNT_SERVICE_ARGS})

    def with_registration(self, **overrides: Any) -> RegistrationFlow:
        """Another registration flow on the same stores, some collaborators replaced (those of
        its account service too, such as the repository)."""
        kwargs = {**self.service_kwargs, **overrides}
        flow_args = {
            k: v for k, v in kwargs.items() if k not in _ACCOUNT_SERVICE_ARGS - _SHARED_ARGS
        }
        return RegistrationFlow(accounts=self.with_accounts(**overrides), **flow_args)


@pytest.fixture(scope="session")
def password_policy() -> PasswordPolicy:
    """The real policy with the bundled common-password list (loaded once)."""
    return PasswordPolicy(CommonPasswords.load())


@pytest.fixture(scope="session")
def hasher() -> Iterator[PasswordHasher]:
    """Argon2id at the cheapest parameters: real hashes, test speed."""
    h = PasswordHasher(Argon2Parameters.cheap())
    yield h
    h.close()


@pytest.fixture
async def ticket_redis(embedded_redis: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    """An emptied database on the embedded Redis, for tests that only need tickets to work."""
    client = aioredis.Redis.from_url(embedded_redis.url + "?db=2")
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


async def build_env(
    database: Database,
    redis: aioredis.Redis,
    clock: FakeClock,
    tmp_path: Path,
    password_policy: PasswordPolicy,
    hasher: PasswordHasher,
    **service_overrides: Any,
) -> AccountsEnv:
    """Wire an AccountsEnv; the policy table is seeded with the packaged version 1."""
    keyring = KeyRing.load_or_create(tmp_path / "keyring.json", clock)
    cipher = DataKeyCipher(keyring)
    blind = BlindIndex(keyring.blind_index_key)
    policies = PolicyStore(database, clock)
    await policies.ensure_seeded()
    queue = ListQueue()
    codes = CodeService(
        redis=redis,
        hmac_key=keyring.code_hmac_key,
        clock=clock,
        queue=queue,
        compose=compose,
        policy=_OPEN_CODE_POLICY,
    )
    tickets = TicketService(
        redis=redis, hmac_key=keyring.code_hmac_key, clock=clock, policy=_OPEN_CODE_POLICY
    )
    audit = RecordingAudit()
    repository = SqlAccountRepository(database)
    kwargs: dict[str, Any] = {
        "repository": repository,
        "cipher": cipher,
        "master_keys": keyring,
        "blind_index": blind,
        "clock": clock,
        "uow": database,
        "policies": policies,
        "consents": ConsentLedger(database, clock),
        "tickets": tickets,
        "password_policy": password_policy,
        "hasher": hasher,
        "notices": Notices(Outbox(database, cipher, clock), clock),
        "audit": audit,
    }
    kwargs.update(service_overrides)
    service = AccountService(**{k: v for k, v in kwargs.items() if k in _ACCOUNT_SERVICE_ARGS})
    registration = RegistrationFlow(
        accounts=service,
        **{k: v for k, v in kwargs.items() if k not in _ACCOUNT_SERVICE_ARGS - _SHARED_ARGS},
    )
    return AccountsEnv(
        service=service,
        registration=registration,
        repository=repository,
        policies=policies,
        database=database,
        keyring=keyring,
        cipher=cipher,
        blind=blind,
        hasher=hasher,
        codes=codes,
        queue=queue,
        audit=audit,
        clock=clock,
        service_kwargs=kwargs,
    )


@pytest.fixture
async def env(
    database: Database,
    ticket_redis: aioredis.Redis,
    clock: FakeClock,
    tmp_path: Path,
    password_policy: PasswordPolicy,
    hasher: PasswordHasher,
) -> AccountsEnv:
    """The account service on `database` (SQLite, PostgreSQL), tickets on embedded Redis."""
    return await build_env(database, ticket_redis, clock, tmp_path, password_policy, hasher)


@pytest.fixture
async def env_any_redis(
    database: Database,
    redis_client: aioredis.Redis,
    clock: FakeClock,
    tmp_path: Path,
    password_policy: PasswordPolicy,
    hasher: PasswordHasher,
) -> AccountsEnv:
    """The account service with tickets on every Redis (`redis_client`: embedded and system)."""
    return await build_env(database, redis_client, clock, tmp_path, password_policy, hasher)
