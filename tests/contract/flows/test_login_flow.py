"""LoginFlow end to end: real accounts, sessions, tickets, throttle and Argon2 (cheap costs).

Everything that stores, counts or hashes is real: AccountService and
SessionService on the `database` fixture (SQLite and PostgreSQL), TicketService
and LoginThrottle on `redis_client` (embedded and system Redis), PasswordHasher
at the cheapest Argon2id costs. The hasher is wrapped to count the Argon2
operations of each path (B1, B3); audit and metrics are recording fakes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from argon2 import extract_parameters
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.contract.accounts.conftest import (
    ID_NUMBER,
    OTHER_PHONE,
    PASSWORD,
    PHONE,
    AccountsEnv,
    RecordingAudit,
    build_env,
    legal_command,
    natural_command,
)
from tests.contract.flows.conftest import AUDIENCE, ISSUER, session_service
from xiaohe.identity.server.accounts.models import AccountCredentials
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.codes.models import Purpose
from xiaohe.identity.server.codes.tickets import TicketService, new_ticket
from xiaohe.identity.server.credentials.hasher import Argon2Parameters, PasswordHasher
from xiaohe.identity.server.credentials.lockout import (
    Admission,
    FailureOutcome,
    LockoutPolicy,
    LoginThrottle,
)
from xiaohe.identity.server.credentials.passwords import PasswordPolicy
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.errors import (
    IdentityError,
    InvalidArgument,
    InvalidCredentials,
    Overloaded,
    TicketInvalid,
    Unavailable,
)
from xiaohe.identity.server.flows.login import (
    LoginFlow,
    LoginResult,
    NextStep,
    mask_ip,
)
from xiaohe.identity.server.sessions.service import SessionService
from xiaohe.identity.server.sessions.tokens import AccessTokenValidator
from xiaohe.identity.server.shared.identifiers import IdentifierKind
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.schema import accounts

CLIENT = "xhc_bff"
IP_A = "203.0.113.7"
IP_B = "198.51.100.23"
CHEAP = Argon2Parameters.cheap()


@dataclass
class CountingHasher:
    """The real hasher, counting its Argon2 operations by kind."""

    inner: PasswordHasher
    verifies: int = 0
    dummies: int = 0
    hashes: int = 0
    overload_next_verify: bool = False

    @property
    def operations(self) -> int:
        """Argon2 operations so far."""
        return self.verifies + self.dummies + self.hashes

    async def verify(self, hash: str, password: str) -> bool:
        """Count, then verify (or refuse like a full queue, once, when told to)."""
        if self.overload_next_verify:
            self.overload_next_verify = False
            raise Overloaded()
        self.verifies += 1
        return await self.inner.verify(hash, password)

    async def dummy_verify(self, password: str) -> None:
        """Count, then dummy-verify."""
        self.dummies += 1
        await self.inner.dummy_verify(password)

    async def hash(self, password: str) -> str:
        """Count, then hash."""
        self.hashes += 1
        return await self.inner.hash(password)

    def needs_rehash(self, hash: str) -> bool:
        """Ask the real hasher."""
        return self.inner.needs_rehash(hash)


@dataclass
class RecordingMetrics:
    """LoginMetrics that remembers every call."""

    logins: list[tuple[str, str]] = field(default_factory=list)

    def login(self, method: str, outcome: str) -> None:
        """Remember one attempt."""
        self.logins.append((method, outcome))


class CountingThrottle(LoginThrottle):
    """The real throttle, counting its round trips to Redis."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scripts = 0

    async def admit(self, account_id: str, ip: str) -> Admission:
        self.scripts += 1
        return await super().admit(account_id, ip)

    async def record_failure(self, account_id: str, ip: str, reservation: str) -> FailureOutcome:
        self.scripts += 1
        return await super().record_failure(account_id, ip, reservation)

    async def record_success(self, account_id: str, ip: str, reservation: str) -> None:
        self.scripts += 1
        await super().record_success(account_id, ip, reservation)

    async def touch(self, account_id: str, ip: str) -> None:
        self.scripts += 1
        await super().touch(account_id, ip)


@dataclass
class LoginEnv:
    """A LoginFlow on real stores, and what tests inspect."""

    accounts: AccountsEnv
    sessions: SessionService
    tokens: AccessTokenValidator
    hasher: CountingHasher
    audit: RecordingAudit
    metrics: RecordingMetrics
    redis: aioredis.Redis
    clock: FakeClock
    service: LoginFlow = field(init=False)
    throttle: CountingThrottle = field(init=False)

    def __post_init__(self) -> None:
        self.throttle = CountingThrottle(self.redis, self.clock, LockoutPolicy(), ip_key=b"i" * 32)
        self.service = self.make()

    def make(self, **overrides: Any) -> LoginFlow:
        """A LoginFlow on these collaborators; keyword arguments replace some."""
        kwargs: dict[str, Any] = {
            "uow": self.accounts.database,
            "accounts": self.accounts.service,
            "sessions": self.sessions,
            "tickets": self.accounts.service_kwargs["tickets"],
            "hasher": self.hasher,
            "throttle": self.throttle,
            "policies": self.accounts.policies,
            "clock": self.clock,
            "audit": self.audit,
            "metrics": self.metrics,
        }
        kwargs.update(overrides)
        return LoginFlow(**kwargs)

    async def register(self, **changes: Any) -> str:
        """Register a natural person (keyword arguments override); returns the account id."""
        return (await self.accounts.register(natural_command(**changes))).account_id

    async def login(
        self,
        identifier: str = "zhangsan",
        password: str = PASSWORD,
        *,
        ip: str = IP_A,
        kind: IdentifierKind = IdentifierKind.UNSPECIFIED,
        service: LoginFlow | None = None,
    ) -> LoginResult:
        """A password login with the usual request context."""
        return await (service or self.service).login_with_password(
            identifier,
            kind,
            password,
            audience=AUDIENCE,
            client_id=CLIENT,
            ip=ip,
            user_agent="Mozilla/5.0 test",
        )

    async def sms_login(self, ticket: str, *, ip: str = IP_A) -> LoginResult:
        """An SMS-ticket login with the usual request context."""
        return await self.service.login_with_sms_ticket(
            ticket, audience=AUDIENCE, client_id=CLIENT, ip=ip, user_agent="Mozilla/5.0 test"
        )

    async def refused(self, password: str = "Wrong-Password-1", **kwargs: Any) -> IdentityError:
        """A password login that must fail with InvalidCredentials; returns the error."""
        with pytest.raises(InvalidCredentials) as caught:
            await self.login(password=password, **kwargs)
        return caught.value

    async def set_status(self, account_id: str, status: str) -> None:
        """Change an account's stored status."""
        async with self.accounts.database.begin() as conn:
            await conn.execute(
                sa.update(accounts).where(accounts.c.account_id == account_id).values(status=status)
            )


def pooled(redis_client: aioredis.Redis, size: int = 32) -> aioredis.Redis:
    """A client on the same server whose callers queue for `size` connections."""
    pool = redis_client.connection_pool
    return aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool(
            connection_class=pool.connection_class,
            max_connections=size,
            timeout=20,
            **pool.connection_kwargs,
        )
    )


@pytest.fixture(scope="module")
def argon2() -> Iterator[PasswordHasher]:
    """Argon2id at the cheapest costs, with a queue long enough for the concurrency tests."""
    hasher = PasswordHasher(CHEAP, max_workers=4, max_queue=1024)
    yield hasher
    hasher.close()


@pytest.fixture
async def env(
    database: Database,
    redis_client: aioredis.Redis,
    clock: FakeClock,
    tmp_path: Path,
    password_policy: PasswordPolicy,
    argon2: PasswordHasher,
) -> AsyncIterator[LoginEnv]:
    """The login service on `database` × `redis_client`."""
    client = pooled(redis_client)
    accounts_env = await build_env(database, client, clock, tmp_path, password_policy, argon2)
    sessions, _ = session_service(accounts_env, client)
    yield LoginEnv(
        accounts=accounts_env,
        sessions=sessions,
        tokens=AccessTokenValidator(accounts_env.keyring.public_keys, ISSUER, clock),
        hasher=CountingHasher(argon2),
        audit=RecordingAudit(),
        metrics=RecordingMetrics(),
        redis=client,
        clock=clock,
    )
    await client.aclose()


# -- success ------------------------------------------------------------------------------


async def test_password_login_by_each_identifier_starts_a_session(env: LoginEnv) -> None:
    """A right password logs in by login name, phone (any spelling) and ID number; amr pwd."""
    account_id = await env.register()
    attempts = [
        ("ZhangSan", IdentifierKind.UNSPECIFIED),
        ("138 1234 5678", IdentifierKind.PHONE),
        ("+86 13812345678", IdentifierKind.UNSPECIFIED),
        (ID_NUMBER.lower(), IdentifierKind.ID_NUMBER),
    ]
    for identifier, kind in attempts:
        before = env.hasher.operations
        result = await env.login(identifier, kind=kind)
        assert env.hasher.operations - before == 1  # one verify, no rehash
        assert result.next_step is NextStep.NONE
        assert result.session.account_id == account_id
        claims = env.tokens.validate(result.session.access_token, AUDIENCE)
        assert claims.sub == account_id
        assert tuple(claims.amr) == ("pwd",)
        assert claims.subject_type == "NATURAL_PERSON"
    listed = await env.sessions.list_sessions(account_id)
    assert len(listed) == len(attempts)
    assert {s.ip_masked for s in listed} == {"203.0.113.*"}
    assert env.audit.records == [("auth.login.password", account_id, "ok")] * len(attempts)
    assert env.metrics.logins == [("password", "ok")] * len(attempts)


async def test_consent_required_when_the_accepted_policy_is_older(env: LoginEnv) -> None:
    """I3: an account that accepted version 1 gets CONSENT_REQUIRED once version 2 is out."""
    await env.register()
    assert (await env.login()).next_step is NextStep.NONE
    await env.accounts.policies.publish("小禾隐私政策（第二版）：新增用途说明。")
    assert (await env.login()).next_step is NextStep.CONSENT_REQUIRED
    ticket = await env.accounts.ticket(PHONE, Purpose.LOGIN)
    assert (await env.sms_login(ticket)).next_step is NextStep.CONSENT_REQUIRED


async def test_rehash_at_login_when_parameters_changed(env: LoginEnv) -> None:
    """P4: a hash made with other Argon2 parameters is replaced by one with the current ones."""
    older = PasswordHasher(Argon2Parameters(memory_cost=16, time_cost=2))
    try:
        service = env.accounts.with_registration(hasher=older)
        cmd = replace(natural_command(), phone_ticket=await env.accounts.ticket(PHONE))
        account_id = (await service.register(cmd, client_id=CLIENT, channel="web")).account_id
    finally:
        older.close()
    stored = await env.accounts.service.get_credentials(account_id)
    assert extract_parameters(stored.password_hash) == older.parameters.as_argon2()

    await env.login()
    assert env.hasher.hashes == 1
    rehashed = (await env.accounts.service.get_credentials(account_id)).password_hash
    assert extract_parameters(rehashed) == CHEAP.as_argon2()
    assert await env.hasher.inner.verify(rehashed, PASSWORD)
    # The new hash is current: the next login does not rehash again.
    await env.login()
    assert env.hasher.hashes == 1
    assert (await env.accounts.service.get_credentials(account_id)).password_hash == rehashed


@dataclass
class RacingStore:
    """The real accounts, where a password change lands just before the login's rehash."""

    inner: AccountService
    changed_hash: str
    results: list[bool] = field(default_factory=list)

    async def find_credentials(
        self, kind: IdentifierKind, normalised: str
    ) -> AccountCredentials | None:
        """Delegate."""
        return await self.inner.find_credentials(kind, normalised)

    async def find_by_phone(self, e164: str) -> AccountCredentials | None:
        """Delegate."""
        return await self.inner.find_by_phone(e164)

    async def lock_credentials(self, account_id: str) -> AccountCredentials:
        """Delegate."""
        return await self.inner.lock_credentials(account_id)

    async def set_password_hash(
        self, account_id: str, new_hash: str, *, expected_old_hash: str | None = None
    ) -> bool:
        """Store the concurrent change first, then attempt the login's update."""
        await self.inner.set_password_hash(account_id, self.changed_hash)
        result = await self.inner.set_password_hash(
            account_id, new_hash, expected_old_hash=expected_old_hash
        )
        self.results.append(result)
        return result


async def test_rehash_never_overwrites_a_concurrent_password_change(env: LoginEnv) -> None:
    """P4: the rehash is conditional on the verified hash; losing the race is silent."""
    older = PasswordHasher(Argon2Parameters(memory_cost=16, time_cost=2))
    try:
        service = env.accounts.with_registration(hasher=older)
        cmd = replace(natural_command(), phone_ticket=await env.accounts.ticket(PHONE))
        account_id = (await service.register(cmd, client_id=CLIENT, channel="web")).account_id
    finally:
        older.close()
    changed = await env.hasher.inner.hash("Changed-Long-Passphrase-3")
    store = RacingStore(env.accounts.service, changed)
    result = await env.login(service=env.make(accounts=store))
    assert result.session.account_id == account_id
    assert env.hasher.hashes == 1  # the rehash was computed ...
    assert store.results == [False]  # ... but not stored over the newer hash
    assert (await env.accounts.service.get_credentials(account_id)).password_hash == changed
    assert env.audit.records == [("auth.login.password", account_id, "ok")]


# -- brute force ------------------------------------------------------------------------


async def test_concurrent_wrong_passwords_evaluate_at_most_100(env: LoginEnv) -> None:
    """B1: 300 simultaneous wrong guesses from 300 IPs → ≤ 100 Argon2 verifies; then even the
    right password is refused until the hour has passed. B2: SMS login still works meanwhile."""
    account_id = await env.register()
    ips = [f"10.1.{i // 200}.{i % 200}" for i in range(300)]
    results = await asyncio.gather(
        *(env.login(password=f"Wrong-{i}-x", ip=ip) for i, ip in enumerate(ips)),
        return_exceptions=True,
    )
    others = [r for r in results if not isinstance(r, InvalidCredentials)]
    assert not others, f"{len(others)} other results, e.g. {others[0]!r}"
    assert env.hasher.verifies <= 100
    assert env.hasher.verifies == 100  # every slot was used, none more
    assert env.hasher.operations == 300  # refused guesses cost a dummy verify each (B3)
    outcomes = [o for _, _, o in env.audit.records]
    assert outcomes.count("invalid_credentials") == 100
    assert outcomes.count("rate_limited") == 200

    await env.refused(PASSWORD, ip=IP_B)
    assert env.audit.records[-1] == ("auth.login.password", account_id, "rate_limited")
    ticket = await env.accounts.ticket(PHONE, Purpose.LOGIN)
    assert (await env.sms_login(ticket, ip=IP_B)).session.account_id == account_id
    await env.refused(PASSWORD, ip=IP_B)  # the SMS login did not hand out a new budget
    env.clock.advance(3600)
    assert (await env.login(ip=IP_B)).session.account_id == account_id


async def test_failures_from_one_ip_lock_it_temporarily_and_escalate(env: LoginEnv) -> None:
    """B2: 10 failures from one IP lock that (account, IP) for 60 s, then 120 s; never forever."""
    account_id = await env.register()
    for _ in range(10):
        await env.refused()
    await env.refused(PASSWORD)  # the right password, but locked
    assert env.audit.records[-1] == ("auth.login.password", account_id, "locked")
    await env.login(ip=IP_B)  # other IPs are not locked out
    env.clock.advance(60)
    for _ in range(10):
        await env.refused()
    env.clock.advance(60)
    await env.refused(PASSWORD)  # the second lock is longer
    env.clock.advance(60)
    assert (await env.login()).session.account_id == account_id


async def test_locked_account_logs_in_by_sms_which_clears_the_lock(env: LoginEnv) -> None:
    """B2: a locked (account, IP) can still log in by SMS code; that success clears the lock."""
    account_id = await env.register()
    for _ in range(10):
        await env.refused()
    await env.refused(PASSWORD)
    ticket = await env.accounts.ticket(PHONE, Purpose.LOGIN)
    result = await env.sms_login(ticket)
    assert result.session.account_id == account_id
    claims = env.tokens.validate(result.session.access_token, AUDIENCE)
    assert tuple(claims.amr) == ("sms",)
    assert env.audit.records[-1] == ("auth.login.sms", account_id, "ok")
    assert (await env.login()).session.account_id == account_id


async def test_a_success_clears_the_failure_count(env: LoginEnv) -> None:
    """B2: 9 failures, a success, 9 failures: no lock (without the reset the 10th would lock)."""
    await env.register()
    for _ in range(2):
        for _ in range(9):
            await env.refused()
        await env.login()


async def test_a_login_and_its_audit_record_commit_together(env: LoginEnv) -> None:
    """I7: the real audit log holds the success in the session's transaction; when the
    record cannot be written, no session is stored and the login fails."""
    account_id = await env.register()
    log = AuditLog(env.accounts.database, env.clock, AuditKeys(bytes(range(32))))
    result = await env.login(service=env.make(audit=log))
    records = await log.query(action="auth.login.password")
    assert [(r.target, r.outcome) for r in records] == [(account_id, "ok")]
    assert [s.session_id for s in await env.sessions.list_sessions(account_id)] == [
        result.session.session_id
    ]
    assert (await log.verify_chain()).intact

    class Unwritable(AuditLog):
        """Fails inside the login's unit of work; the failed attempt is still recorded."""

        async def record(self, action: str, target: str, outcome: str, **kw: Any) -> int:
            if env.accounts.database.in_transaction():
                raise Unavailable("the audit log is temporarily unavailable")
            return await super().record(action, target, outcome, **kw)

    with pytest.raises(Unavailable):
        await env.login(
            service=env.make(
                audit=Unwritable(env.accounts.database, env.clock, AuditKeys(bytes(range(32))))
            )
        )
    assert len(await env.sessions.list_sessions(account_id)) == 1
    assert [(r.target, r.outcome) for r in await log.query(action="auth.login.password")] == [
        (account_id, "ok"),
        (account_id, "unavailable"),
    ]


class SettleFails(LoginThrottle):
    """The real throttle, except that settling a success finds Redis gone."""

    async def record_success(self, account_id: str, ip: str, reservation: str) -> None:
        raise Unavailable("redis went away")


async def test_a_right_password_logs_in_when_clearing_failures_fails(
    env: LoginEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """The password was verified: a Redis error while settling only logs, and the
    reservation stays counted as a failure (the safe side)."""
    account_id = await env.register()
    service = env.make(throttle=SettleFails(env.redis, env.clock, ip_key=b"i" * 32))
    with caplog.at_level(logging.WARNING):
        result = await env.login(service=service)
    assert result.session.account_id == account_id
    assert env.audit.records == [("auth.login.password", account_id, "ok")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"login of account {account_id}: failures not cleared (Unavailable)"]
    # The reservation is still in the account's hourly window, counted like a failure.
    assert await env.redis.zcard(f"xh:login:{{acct:{account_id}}}:window") == 1


async def test_unknown_wrong_and_locked_look_the_same(env: LoginEnv) -> None:
    """B3: unknown identifier, wrong password, locked account (and a malformed identifier or an
    inactive account) raise the same error and message, each after exactly one Argon2 operation
    and two throttle scripts; unknown and locked use the dummy verify."""
    account_id = await env.register()
    inactive_id = (await env.accounts.register(legal_command())).account_id
    await env.set_status(inactive_id, "deactivated")
    for _ in range(10):
        await env.refused(ip=IP_B)

    async def one(expect_dummy: bool, **kwargs: Any) -> tuple[str, str, str]:
        verifies, dummies = env.hasher.verifies, env.hasher.dummies
        scripts = env.throttle.scripts
        error = await env.refused(**kwargs)
        assert env.hasher.verifies + env.hasher.dummies - verifies - dummies == 1
        assert env.hasher.dummies - dummies == (1 if expect_dummy else 0)
        assert env.throttle.scripts - scripts == 2  # the same Redis round trips, too
        return type(error).__name__, error.reason, str(error)

    answers = {
        "unknown": await one(True, identifier="nobody_here"),
        "unknown phone": await one(True, identifier="13900001111", kind=IdentifierKind.PHONE),
        "malformed": await one(True, identifier="1381234567"),
        "wrong": await one(False),
        "locked": await one(True, password=PASSWORD, ip=IP_B),
        "inactive": await one(False, identifier="qinghai-tech", password=PASSWORD),
    }
    assert len(set(answers.values())) == 1, answers
    assert answers["wrong"] == (
        "InvalidCredentials",
        "INVALID_CREDENTIALS",
        InvalidCredentials().message,
    )
    tail = env.audit.records[-6:]
    assert tail == [
        ("auth.login.password", "unknown", "invalid_credentials"),
        ("auth.login.password", "unknown", "invalid_credentials"),
        ("auth.login.password", "unknown", "invalid_credentials"),
        ("auth.login.password", account_id, "invalid_credentials"),
        ("auth.login.password", account_id, "locked"),
        ("auth.login.password", inactive_id, "account_inactive"),
    ]
    for _, target, _ in env.audit.records:
        assert target in {account_id, inactive_id, "unknown"}


async def test_unknown_identifiers_cost_the_same_once_their_budget_is_spent(
    env: LoginEnv,
) -> None:
    """B3: every unknown identifier shares one hourly budget; once it is spent, an unknown
    identifier is refused, and that refusal costs what a wrong password for a real account
    costs (one Argon2 operation, two throttle scripts)."""
    await env.register()
    for i in range(100):  # ten addresses, so no (account, IP) lock is reached first
        await env.refused(identifier=f"nobody_{i}", ip=f"192.0.2.{i // 10}")

    async def cost(**kwargs: Any) -> tuple[int, int]:
        operations, scripts = env.hasher.operations, env.throttle.scripts
        await env.refused(**kwargs)
        return env.hasher.operations - operations, env.throttle.scripts - scripts

    assert await cost(identifier="nobody_else") == await cost() == (1, 2)
    assert [o for _, _, o in env.audit.records[-2:]] == ["rate_limited", "invalid_credentials"]


async def test_an_unevaluated_attempt_is_refunded(env: LoginEnv) -> None:
    """B1 accounting: a verify refused by a full hashing queue does not spend the budget."""
    await env.register()
    strict = env.make(
        throttle=LoginThrottle(env.redis, env.clock, LockoutPolicy(failures_per_account_hour=1))
    )
    env.hasher.overload_next_verify = True
    with pytest.raises(Overloaded):
        await env.login(service=strict)
    assert env.audit.records[-1][2] == "overloaded"
    await env.login(service=strict)  # the one slot is still free


# -- tickets, bad requests, outages ------------------------------------------------------


async def test_sms_ticket_for_an_unregistered_phone_is_spent(env: LoginEnv) -> None:
    """C5: a LOGIN ticket for a phone without an account → TicketInvalid, and it is used up."""
    ticket = await env.accounts.ticket(OTHER_PHONE, Purpose.LOGIN)
    with pytest.raises(TicketInvalid):
        await env.sms_login(ticket)
    assert env.audit.records[-1] == ("auth.login.sms", "unknown", "unknown_account")
    await env.register(phone=OTHER_PHONE)
    with pytest.raises(TicketInvalid):
        await env.sms_login(ticket)
    # A ticket for another purpose, or no ticket at all, does not log in either.
    register_ticket = await env.accounts.ticket(OTHER_PHONE, Purpose.REGISTER)
    with pytest.raises(TicketInvalid):
        await env.sms_login(register_ticket)
    with pytest.raises(TicketInvalid):
        await env.sms_login("not-a-ticket")
    with pytest.raises(InvalidArgument) as caught:
        await env.sms_login(" ")
    assert [v.field for v in caught.value.violations] == ["sms_ticket"]


async def test_malformed_requests_are_refused_before_any_work(env: LoginEnv) -> None:
    """F3: empty fields, oversized inputs and unknown kinds → InvalidArgument, no Argon2."""
    await env.register()
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"identifier": " "}, {"password.identifier"}),
        ({"password": ""}, {"password.password"}),
        ({"identifier": "", "password": ""}, {"password.identifier", "password.password"}),
        ({"password": "x" * 4097}, {"password.password"}),
        ({"identifier": "a" * 257}, {"password.identifier"}),
        ({"kind": 99}, {"password.identifier_kind"}),
    ]
    for kwargs, fields in cases:
        with pytest.raises(InvalidArgument) as caught:
            await env.login(**kwargs)
        assert {v.field for v in caught.value.violations} == fields
    assert env.hasher.operations == 0
    assert env.audit.records == []
    assert env.metrics.logins == [("password", "invalid_argument")] * len(cases)
    # The longest allowed password is evaluated like any other.
    await env.refused("x" * 4096)
    assert env.hasher.verifies == 1


def closed_port() -> int:
    """A local TCP port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_redis_down_fails_closed_for_every_identifier(env: LoginEnv) -> None:
    """F1, B3: without Redis, known and unknown identifiers alike get Unavailable, unevaluated."""
    await env.register()
    down = aioredis.Redis(
        host="127.0.0.1",
        port=closed_port(),
        retry=Retry(NoBackoff(), 1),
        socket_connect_timeout=2,
        socket_timeout=2,
    )
    try:
        ring = env.accounts.keyring
        service = env.make(
            throttle=LoginThrottle(down, env.clock),
            tickets=TicketService(redis=down, hmac_key=ring.code_hmac_key, clock=env.clock),
        )
        for identifier in ("zhangsan", "nobody_here"):
            with pytest.raises(Unavailable):
                await env.login(identifier, PASSWORD, service=service)
        assert env.hasher.operations == 0
        with pytest.raises(Unavailable):
            await service.login_with_sms_ticket(
                new_ticket("0" * 32), audience=AUDIENCE, client_id=CLIENT, ip=IP_A, user_agent=""
            )
    finally:
        await down.aclose()
    assert [o for _, _, o in env.audit.records] == ["unavailable"] * 3


def test_mask_ip() -> None:
    """I1 spirit: sessions keep only a network prefix of the end-user IP."""
    assert mask_ip("203.0.113.7") == "203.0.113.*"
    assert mask_ip("::ffff:203.0.113.7") == "203.0.113.*"
    assert mask_ip("2001:db8:85a3::8a2e:370:7334") == "2001:0db8:85a3:*"
    assert mask_ip("") == ""
    assert mask_ip("203.0.113.*") == "-"
    assert mask_ip("not an ip") == "-"
