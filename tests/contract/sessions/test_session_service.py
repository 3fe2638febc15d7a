"""Sessions end to end on SQLite and PostgreSQL: rotation, replay, logout, revocation, expiry.

Access tokens are real EdDSA JWTs from a fresh key. The revocation lists run on
the embedded Redis; "worker B" is a second SessionService with its own
RevocationList and Redis client (and, for T2, its own Database) on the same stores.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from nacl.signing import SigningKey
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from xiaohe.identity.server.accounts.repository import SqlAccountRepository
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.errors import (
    InvalidArgument,
    NotFound,
    TokenInvalid,
    Unavailable,
)
from xiaohe.identity.server.observability.logging import redact
from xiaohe.identity.server.sessions.models import (
    IssuedSession,
    RevokeReason,
    SessionLifetimes,
    SessionSubject,
)
from xiaohe.identity.server.sessions.repository import SqlSessionRepository
from xiaohe.identity.server.sessions.revocations import REVOKED_KEY, RevocationList
from xiaohe.identity.server.sessions.service import (
    AuditSink,
    SessionService,
    hash_refresh_token,
)
from xiaohe.identity.server.sessions.tokens import AccessTokenIssuer, AccessTokenValidator
from xiaohe.identity.server.shared.pseudonyms import Pseudonyms
from xiaohe.identity.server.storage.database import Database, utc
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.schema import accounts, refresh_tokens, sessions

ISSUER = "https://id.xiaohe.test"
AUDIENCE = "xiaohe-platform"
CLIENT = "xhc_bff"
LIFETIMES = SessionLifetimes(access_ttl=600, idle=3600, absolute=4 * 3600)


@dataclass(frozen=True)
class SigningKeys:
    """A one-key stand-in for the key ring, with a fresh Ed25519 seed."""

    kid: str
    seed: bytes

    def signing_key(self) -> tuple[str, bytes]:
        return self.kid, self.seed

    def public_keys(self) -> dict[str, bytes]:
        return {self.kid: bytes(SigningKey(self.seed).verify_key)}


@dataclass
class Worker:
    """One worker's view: its service, revocation list and the connections they use."""

    service: SessionService
    revocations: RevocationList
    redis: aioredis.Redis


@dataclass
class Env:
    """Two workers on one database and one Redis, plus the shared clock."""

    a: Worker
    b: Worker
    database: Database
    database_url: str
    clock: FakeClock
    keys: SigningKeys
    redis_url: str


class StoredSubjects:
    """The sessions' SubjectSource over the real accounts table (as the login flow provides)."""

    def __init__(self, database: Database) -> None:
        self._accounts = SqlAccountRepository(database)

    async def __call__(self, account_id: str) -> SessionSubject | None:
        record = await self._accounts.get(account_id)
        if record is None or record.status != "active":
            return None
        return SessionSubject(account_id, record.subject_type, record.real_name_level)


def make_service(
    database: Database,
    revocations: RevocationList,
    clock: FakeClock,
    keys: SigningKeys,
    audit: AuditSink | None = None,
) -> SessionService:
    """A SessionService with real token issuer and validator (and the given audit sink)."""
    return SessionService(
        database,
        SqlSessionRepository(database),
        StoredSubjects(database),
        AccessTokenIssuer(keys.signing_key, ISSUER, clock, ttl=LIFETIMES.access_ttl),
        AccessTokenValidator(keys.public_keys, ISSUER, clock),
        revocations,
        clock,
        LIFETIMES,
        AUDIENCE,
        audit=audit,
        log_pseudonym=Pseudonyms(b"p" * 32).for_log,
    )


async def add_account(
    database: Database,
    clock: FakeClock,
    account_id: str,
    *,
    subject_type: str = "natural_person",
    rn_level: int = 0,
    status: str = "active",
) -> SessionSubject:
    """Insert an account row directly; returns the subject a login would produce."""
    async with database.begin() as conn:
        await conn.execute(
            sa.insert(accounts).values(
                account_id=account_id,
                subject_type=subject_type,
                login_name=f"user_{account_id}",
                password_hash="x",
                status=status,
                accepted_policy_version=1,
                real_name_level=rn_level,
                master_key_id="mk",
                created_at=utc(clock.now()),
                updated_at=utc(clock.now()),
            )
        )
    return SessionSubject(account_id, subject_type, rn_level)


async def set_account(database: Database, account_id: str, **values: object) -> None:
    """Change columns of an account row."""
    async with database.begin() as conn:
        await conn.execute(
            sa.update(accounts).where(accounts.c.account_id == account_id).values(**values)
        )


async def session_row(database: Database, session_id: str) -> sa.Row[tuple[object, ...]]:
    """The raw `sessions` row."""
    async with database.connect() as conn:
        return (
            await conn.execute(sa.select(sessions).where(sessions.c.session_id == session_id))
        ).one()


async def eventually(check: Callable[[], bool], within: float = 1.0) -> bool:
    """Poll `check` for up to `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def rejects(service: SessionService, access_token: str) -> Callable[[], bool]:
    """A check that holds once `service.validate` refuses the token."""

    def check() -> bool:
        try:
            service.validate(access_token)
        except TokenInvalid:
            return True
        return False

    return check


async def login(env: Env, subject: SessionSubject, **kwargs: str) -> IssuedSession:
    """Create a session on worker A as a password login would."""
    return await env.a.service.create(
        subject,
        ("pwd",),
        audience=kwargs.get("audience", ""),
        client_id=kwargs.get("client_id", CLIENT),
        ip_masked=kwargs.get("ip_masked", "203.0.113.0/24"),
        user_agent=kwargs.get("user_agent", "Mozilla/5.0 test"),
    )


@pytest.fixture
async def env(
    database: Database, database_url: str, embedded_redis: EmbeddedRedis, clock: FakeClock
) -> AsyncIterator[Env]:
    """Workers A and B, each with a running revocation list; the database is shared."""
    redis_url = embedded_redis.url + "?db=2"
    keys = SigningKeys(kid=f"k{secrets.token_hex(2)}", seed=secrets.token_bytes(32))
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    await clients[0].flushdb()
    lists = [
        RevocationList(c, clock, LIFETIMES.access_ttl, tick=0.02, backoff_max=0.2) for c in clients
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(rl.run(stop)) for rl in lists]
    try:
        for rl in lists:
            await asyncio.wait_for(rl.wait_ready(), 5)
        workers = [
            Worker(make_service(database, rl, clock, keys), rl, c)
            for rl, c in zip(lists, clients, strict=True)
        ]
        yield Env(workers[0], workers[1], database, database_url, clock, keys, redis_url)
    finally:
        stop.set()
        for task in tasks:
            await asyncio.wait_for(task, 5)
        for c in clients:
            await c.aclose()


# ---------------------------------------------------------------- create and validate


async def test_create_issues_tokens_with_the_subject_claims(env: Env) -> None:
    """A new session yields an access token (validated on both workers) and a refresh token."""
    subject = await add_account(env.database, env.clock, "acc_1", rn_level=2)
    issued = await env.a.service.create(
        subject, ("pwd", "sms"), client_id=CLIENT, ip_masked="203.0.113.0/24", user_agent="UA"
    )
    assert issued.account_id == "acc_1"
    assert issued.session_id.startswith("ses_")
    assert issued.access_expires_in == LIFETIMES.access_ttl
    assert issued.refresh_expires_in == LIFETIMES.idle
    for worker in (env.a, env.b):
        claims = worker.service.validate(issued.access_token)
        assert (claims.sub, claims.sid, claims.aud) == ("acc_1", issued.session_id, (AUDIENCE,))
        assert (claims.amr, claims.subject_type, claims.rn_level) == (
            ("pwd", "sms"),
            "natural_person",
            2,
        )
    assert issued.access_token not in repr(issued)
    assert issued.refresh_token not in repr(issued)
    # An explicit audience is stored with the session, and refresh keeps it.
    other = await login(env, subject, audience="biz.orders")
    assert env.a.service.validate(other.access_token, "biz.orders").aud == ("biz.orders",)
    with pytest.raises(TokenInvalid):
        env.a.service.validate(other.access_token)
    again = await env.a.service.refresh(other.refresh_token)
    assert env.a.service.validate(again.access_token, "biz.orders").sid == other.session_id


async def test_validate_refuses_bad_tokens_without_saying_why(env: Env) -> None:
    """T1 at the service: wrong audience, expiry, garbage, a foreign key: all one TokenInvalid."""
    subject = await add_account(env.database, env.clock, "acc_1")
    issued = await login(env, subject)
    foreign = AccessTokenIssuer(
        SigningKeys(env.keys.kid, secrets.token_bytes(32)).signing_key, ISSUER, env.clock
    ).issue("acc_1", issued.session_id, AUDIENCE, ["pwd"], "natural_person", 0)[0]
    messages = set()
    for token, audience in (
        (issued.access_token, "other.system"),
        ("not-a-jwt", ""),
        (foreign, ""),
        (issued.refresh_token, ""),
    ):
        with pytest.raises(TokenInvalid) as caught:
            env.a.service.validate(token, audience)
        messages.add(caught.value.message)
    env.clock.advance(LIFETIMES.access_ttl + 10)
    with pytest.raises(TokenInvalid) as caught:
        env.a.service.validate(issued.access_token)
    messages.add(caught.value.message)
    assert len(messages) == 1


# ---------------------------------------------------------------- T4: refresh token storage


async def test_refresh_token_has_256_bits_and_only_its_hash_is_stored(env: Env) -> None:
    """T4: refresh tokens are `xhr_` + 32 random bytes; the database holds only SHA-256 of them."""
    subject = await add_account(env.database, env.clock, "acc_1")
    issued = await login(env, subject)
    rotated = await env.a.service.refresh(issued.refresh_token)
    for token in (issued.refresh_token, rotated.refresh_token):
        assert token.startswith("xhr_")
        body = token.removeprefix("xhr_")
        assert len(base64.urlsafe_b64decode(body + "=")) == 32
    assert issued.refresh_token != rotated.refresh_token
    async with env.database.connect() as conn:
        rows = [
            tuple(str(v) for v in row)
            for table in (refresh_tokens, sessions)
            for row in (await conn.execute(sa.select(table))).all()
        ]
        hashes = set((await conn.execute(sa.select(refresh_tokens.c.token_hash))).scalars())
    assert len(rows) == 3  # two refresh tokens, one session
    for token in (issued.refresh_token, rotated.refresh_token):
        body = token.removeprefix("xhr_")
        assert not any(body in value for row in rows for value in row)
    assert hashes == {
        hashlib.sha256(t.encode()).hexdigest()
        for t in (issued.refresh_token, rotated.refresh_token)
    }
    assert hash_refresh_token(issued.refresh_token) in hashes


# ---------------------------------------------------------------- refresh and T2


async def test_refresh_rotates_and_reads_the_current_account_claims(env: Env) -> None:
    """Refresh returns new tokens; the access token carries the account's current rn_level."""
    subject = await add_account(env.database, env.clock, "acc_1", rn_level=0)
    issued = await login(env, subject)
    env.clock.advance(120)
    await set_account(env.database, "acc_1", real_name_level=3, subject_type="legal_person")
    rotated = await env.b.service.refresh(issued.refresh_token)
    assert rotated.session_id == issued.session_id
    assert rotated.refresh_token != issued.refresh_token
    assert rotated.access_token != issued.access_token
    claims = env.a.service.validate(rotated.access_token)
    assert (claims.rn_level, claims.subject_type) == (3, "legal_person")
    row = await session_row(env.database, issued.session_id)
    assert row.revoked_at is None
    listed = await env.a.service.list_sessions("acc_1")
    assert [s.last_used_at for s in listed] == [env.clock.now()]


async def test_concurrent_refreshes_of_one_token_succeed_exactly_once(env: Env) -> None:
    """T2: 2 and 10 concurrent refreshes of one token (asyncio.gather) yield exactly one success.

    The losers present a token that is used by then: a replay, so the session
    is revoked too (strict RFC 9700, no grace window) and even the winner's new
    refresh token is refused afterwards.
    """
    subject = await add_account(env.database, env.clock, "acc_1")
    for racers in (2, 10):
        issued = await login(env, subject)
        results = await asyncio.gather(
            *(env.a.service.refresh(issued.refresh_token) for _ in range(racers)),
            return_exceptions=True,
        )
        wins = [r for r in results if isinstance(r, IssuedSession)]
        assert len(wins) == 1, f"{len(wins)} of {racers} racers won"
        assert all(isinstance(r, TokenInvalid) for r in results if r is not wins[0])
        with pytest.raises(TokenInvalid):
            await env.a.service.refresh(wins[0].refresh_token)
        row = await session_row(env.database, issued.session_id)
        assert row.revoke_reason == RevokeReason.REFRESH_REPLAY


async def test_concurrent_refreshes_from_two_workers_succeed_exactly_once(env: Env) -> None:
    """T2: the same race between two workers with their own Database objects (connection pools)."""
    subject = await add_account(env.database, env.clock, "acc_1")
    issued = await login(env, subject)
    other_db = Database.from_url(env.database_url)
    try:
        other = make_service(other_db, env.b.revocations, env.clock, env.keys)
        results = await asyncio.gather(
            *(
                service.refresh(issued.refresh_token)
                for _ in range(4)
                for service in (env.a.service, other)
            ),
            return_exceptions=True,
        )
    finally:
        await other_db.close()
    wins = [r for r in results if isinstance(r, IssuedSession)]
    assert len(wins) == 1
    assert sum(isinstance(r, TokenInvalid) for r in results) == len(results) - 1
    async with env.database.connect() as conn:
        tokens = (
            await conn.execute(sa.select(refresh_tokens.c.token_hash, refresh_tokens.c.used_at))
        ).all()
    # The original token (used) and exactly one successor; the losers inserted nothing.
    assert len(tokens) == 2
    assert sum(t.used_at is None for t in tokens) == 1


async def test_replaying_a_used_refresh_token_revokes_the_session(env: Env) -> None:
    """T2: a used token presented again kills the family: newest token and access token too."""
    subject = await add_account(env.database, env.clock, "acc_1")
    first = await login(env, subject)
    second = await env.a.service.refresh(first.refresh_token)
    third = await env.a.service.refresh(second.refresh_token)
    assert env.b.service.validate(third.access_token).sid == first.session_id
    with pytest.raises(TokenInvalid):
        await env.a.service.refresh(first.refresh_token)  # the replay
    with pytest.raises(TokenInvalid):
        await env.a.service.refresh(third.refresh_token)
    assert await eventually(rejects(env.b.service, third.access_token)), "B still accepts it"
    row = await session_row(env.database, first.session_id)
    assert row.revoke_reason == RevokeReason.REFRESH_REPLAY
    assert await env.a.service.list_sessions("acc_1") == []


async def test_refused_refresh_tokens_all_look_the_same(env: Env) -> None:
    """Unknown, malformed, revoked-session and other-client refresh tokens: one TokenInvalid."""
    subject = await add_account(env.database, env.clock, "acc_1")
    revoked = await login(env, subject)
    await env.a.service.logout(refresh_token=revoked.refresh_token)
    unknown = "xhr_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    messages = set()
    for token in (unknown, "xhr_short", "", "x" * 5000, revoked.refresh_token):
        with pytest.raises(TokenInvalid) as caught:
            await env.a.service.refresh(token)
        messages.add(caught.value.message)
    # A refresh token is bound to its client: another client is refused the same way,
    # and the refusal does not consume the token.
    issued = await login(env, subject)
    with pytest.raises(TokenInvalid) as caught:
        await env.a.service.refresh(issued.refresh_token, client_id="xhc_other")
    messages.add(caught.value.message)
    assert len(messages) == 1
    rotated = await env.a.service.refresh(issued.refresh_token, client_id=CLIENT)
    assert rotated.session_id == issued.session_id


async def test_refresh_is_refused_for_an_inactive_account(env: Env) -> None:
    """A deactivated or frozen account cannot refresh; its session is revoked."""
    subject = await add_account(env.database, env.clock, "acc_1")
    issued = await login(env, subject)
    await set_account(env.database, "acc_1", status="deactivated")
    with pytest.raises(TokenInvalid):
        await env.a.service.refresh(issued.refresh_token)
    assert await eventually(rejects(env.b.service, issued.access_token))
    row = await session_row(env.database, issued.session_id)
    assert row.revoke_reason == RevokeReason.ACCOUNT_INACTIVE


# ---------------------------------------------------------------- expiry


async def test_idle_expiry_and_refresh_extends_it(env: Env) -> None:
    """A session unused for `idle` seconds ends; each refresh moves the idle deadline."""
    subject = await add_account(env.database, env.clock, "acc_1")
    issued = await login(env, subject)
    env.clock.advance(LIFETIMES.idle - 10)
    rotated = await env.a.service.refresh(issued.refresh_token)
    env.clock.advance(LIFETIMES.idle - 10)  # past the first deadline, inside the second
    rotated = await env.a.service.refresh(rotated.refresh_token)
    env.clock.advance(LIFETIMES.idle)
    with pytest.raises(TokenInvalid):
        await env.a.service.refresh(rotated.refresh_token)
    assert await env.a.service.list_sessions("acc_1") == []
    # Not a replay: the expired token was not consumed and the session not revoked.
    row = await session_row(env.database, issued.session_id)
    assert row.revoked_at is None


async def test_absolute_expiry_ends_a_session_however_often_it_is_refreshed(env: Env) -> None:
    """A session ends `absolute` seconds after login; refresh lifetimes shrink towards it."""
    subject = await add_account(env.database, env.clock, "acc_1")
    issued = await login(env, subject)
    token = issued.refresh_token
    for _ in range(3):
        env.clock.advance(LIFETIMES.idle - 60)
        token = (await env.a.service.refresh(token)).refresh_token
    env.clock.advance(LIFETIMES.idle - 60)  # now 4 * (idle - 60) = absolute - 240
    last = await env.a.service.refresh(token)
    assert last.refresh_expires_in == 240
    env.clock.advance(241)
    with pytest.raises(TokenInvalid):
        await env.a.service.refresh(last.refresh_token)
    assert await env.a.service.list_sessions("acc_1") == []


# ---------------------------------------------------------------- T3: logout and revoke_all


async def test_logout_by_refresh_token_is_seen_by_another_worker_within_a_second(
    env: Env,
) -> None:
    """T3: after logout, ValidateToken on another worker says invalid within one second."""
    subject = await add_account(env.database, env.clock, "acc_1")
    issued = await login(env, subject)
    assert env.b.service.validate(issued.access_token).sid == issued.session_id
    await env.a.service.logout(refresh_token=issued.refresh_token)
    with pytest.raises(TokenInvalid):
        env.a.service.validate(issued.access_token)  # at once on the same worker
    assert await eventually(rejects(env.b.service, issued.access_token)), "B still accepts it"
    with pytest.raises(TokenInvalid):
        await env.b.service.refresh(issued.refresh_token)
    await env.a.service.logout(refresh_token=issued.refresh_token)  # idempotent
    row = await session_row(env.database, issued.session_id)
    assert row.revoke_reason == RevokeReason.LOGOUT


async def test_logout_by_access_token(env: Env) -> None:
    """T3: logging out with the access token ends the session; twice is fine; unknown is not."""
    subject = await add_account(env.database, env.clock, "acc_1")
    issued = await login(env, subject)
    await env.b.service.logout(access_token=issued.access_token)
    assert await eventually(rejects(env.a.service, issued.access_token))
    with pytest.raises(TokenInvalid):
        await env.a.service.refresh(issued.refresh_token)
    await env.a.service.logout(access_token=issued.access_token)
    # Tokens it does not know are refused, and no token at all is a bad request.
    unknown = "xhr_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    with pytest.raises(TokenInvalid):
        await env.a.service.logout(refresh_token=unknown)
    with pytest.raises(TokenInvalid):
        await env.a.service.logout(access_token="eyJhbGciOiJub25lIn0.e30.")
    with pytest.raises(InvalidArgument):
        await env.a.service.logout()


async def test_revoke_all_ends_every_session_of_the_account(env: Env) -> None:
    """T3: revoke_all (password change, …) kills all the account's sessions, no one else's."""
    subject = await add_account(env.database, env.clock, "acc_1")
    other = await add_account(env.database, env.clock, "acc_2")
    mine = [await login(env, subject) for _ in range(3)]
    theirs = await login(env, other)
    await env.a.service.logout(refresh_token=mine[0].refresh_token)
    assert await env.a.service.revoke_all("acc_1", RevokeReason.PASSWORD_CHANGE) == 2
    for issued in mine:
        assert await eventually(rejects(env.b.service, issued.access_token))
        with pytest.raises(TokenInvalid):
            await env.a.service.refresh(issued.refresh_token)
    assert await env.a.service.list_sessions("acc_1") == []
    assert env.b.service.validate(theirs.access_token).sub == "acc_2"
    assert len(await env.a.service.list_sessions("acc_2")) == 1
    assert await env.a.service.revoke_all("acc_1", RevokeReason.PASSWORD_CHANGE) == 0
    row = await session_row(env.database, mine[1].session_id)
    assert row.revoke_reason == RevokeReason.PASSWORD_CHANGE


# ---------------------------------------------------------------- T5: list and revoke own sessions


async def test_list_and_revoke_own_sessions(env: Env) -> None:
    """T5: a user lists and revokes their sessions; another account's session is NotFound."""
    subject = await add_account(env.database, env.clock, "acc_1")
    phone = await login(env, subject, ip_masked="198.51.100.0/24", user_agent="XiaoheApp/1.0")
    env.clock.advance(60)
    laptop = await login(env, subject, ip_masked="203.0.113.0/24", user_agent="Firefox")
    listed = await env.a.service.list_sessions("acc_1")
    assert [s.session_id for s in listed] == [laptop.session_id, phone.session_id]
    assert (listed[1].ip_masked, listed[1].user_agent, listed[1].amr) == (
        "198.51.100.0/24",
        "XiaoheApp/1.0",
        ("pwd",),
    )
    assert listed[1].created_at == listed[1].last_used_at == env.clock.now() - 60
    await env.a.service.revoke_session("acc_1", phone.session_id, RevokeReason.USER_REQUEST)
    assert [s.session_id for s in await env.a.service.list_sessions("acc_1")] == [laptop.session_id]
    assert await eventually(rejects(env.b.service, phone.access_token))
    assert env.b.service.validate(laptop.access_token).sid == laptop.session_id
    await env.a.service.revoke_session("acc_1", phone.session_id)  # idempotent
    # Another account's session (or an unknown id) is NotFound and stays alive.
    victim = await login(env, await add_account(env.database, env.clock, "acc_2"))
    with pytest.raises(NotFound):
        await env.a.service.revoke_session("acc_1", victim.session_id, RevokeReason.USER_REQUEST)
    with pytest.raises(NotFound):
        await env.a.service.revoke_session("acc_1", "ses_" + "0" * 32)
    assert len(await env.a.service.list_sessions("acc_2")) == 1
    await asyncio.sleep(0.1)
    assert env.b.service.validate(victim.access_token).sub == "acc_2"
    with pytest.raises(ValueError, match="reason"):
        await env.a.service.revoke_session("acc_2", victim.session_id, "Not A Reason!")


# ---------------------------------------------------------------- Redis down, storage upkeep


async def test_logout_with_redis_down_commits_in_sql_and_reports_unavailable(env: Env) -> None:
    """SQL first, then Redis: the caller sees Unavailable, but the session is already dead."""
    subject = await add_account(env.database, env.clock, "acc_1")
    issued = await login(env, subject)
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    cut_off = RevocationList(dead, env.clock, LIFETIMES.access_ttl)
    service = make_service(env.database, cut_off, env.clock, env.keys)
    try:
        with pytest.raises(Unavailable):
            await service.logout(refresh_token=issued.refresh_token)
        assert cut_off.pending == {issued.session_id}
        with pytest.raises(TokenInvalid):
            await env.a.service.refresh(issued.refresh_token)
        assert await env.a.service.list_sessions("acc_1") == []
        # Retrying once Redis is reachable (here: through worker A) closes the gap.
        await env.a.service.logout(refresh_token=issued.refresh_token)
        assert await eventually(rejects(env.b.service, issued.access_token))
    finally:
        await dead.aclose()


async def test_a_refused_publication_after_a_commit_fails_nothing_and_stays_pending(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """T3: a change that committed is not reported as failed when Redis refuses its revocation.

    Here Redis answers, but refuses the command (the list's key holds a string:
    WRONGTYPE), which is not an outage. The ids wait in the pending set, to be
    published when Redis accepts them, like after an outage.
    """
    subject = await add_account(env.database, env.clock, "acc_1")
    issued = await login(env, subject)
    refusing = aioredis.Redis.from_url(env.redis_url.replace("?db=2", "?db=3"))
    await refusing.flushdb()
    await refusing.set(REVOKED_KEY, "not a sorted set")
    broken = RevocationList(refusing, env.clock, LIFETIMES.access_ttl)
    service = make_service(env.database, broken, env.clock, env.keys)
    try:
        with caplog.at_level(logging.WARNING):
            async with env.database.begin():
                ended = await service.revoke_all("acc_1", RevokeReason.PASSWORD_CHANGE)
        assert ended == 1
        assert broken.pending == {issued.session_id}
        assert await env.a.service.list_sessions("acc_1") == []
        with pytest.raises(TokenInvalid):
            await env.a.service.refresh(issued.refresh_token)
        pending_lines = [r.getMessage() for r in caplog.records if "left pending" in r.getMessage()]
        assert pending_lines == [pending_lines[0]]
        assert "ResponseError" in pending_lines[0]
        assert issued.session_id not in caplog.text
    finally:
        await refusing.flushdb()
        await refusing.aclose()


async def test_delete_ended_removes_old_sessions_and_their_tokens(env: Env) -> None:
    """Ended sessions (revoked or expired) can be purged; live ones stay."""
    subject = await add_account(env.database, env.clock, "acc_1")
    ended = await login(env, subject)
    await env.a.service.logout(refresh_token=ended.refresh_token)
    env.clock.advance(LIFETIMES.idle - 100)
    live = await login(env, subject)
    repo = SqlSessionRepository(env.database)
    assert await repo.delete_ended(env.clock.now()) == 1
    assert await repo.get(ended.session_id) is None
    assert await repo.find_by_token(hash_refresh_token(ended.refresh_token)) is None
    assert (await env.a.service.refresh(live.refresh_token)).session_id == live.session_id


# ---------------------------------------------------------------- I7: revocations are audited


@dataclass
class FailingAudit:
    """An audit sink that always fails, counting the attempts."""

    calls: int = 0

    async def record(self, action: str, target: str, outcome: str) -> object:
        self.calls += 1
        raise RuntimeError("audit store unreachable")


def audited(env: Env, audit: AuditSink) -> SessionService:
    """Worker A's service with an audit sink."""
    return make_service(env.database, env.a.revocations, env.clock, env.keys, audit=audit)


async def trail(audit: AuditLog) -> list[tuple[str, str, str]]:
    """(action, target, outcome) of every audit record, oldest first."""
    return [(r.action, r.target, r.outcome) for r in await audit.query(limit=1000)]


async def test_logout_and_revocations_are_audited_in_the_chain(env: Env) -> None:
    """[I7] logout, revoke and revoke_all each leave a record with a pseudonymous target."""
    audit = AuditLog(env.database, env.clock, AuditKeys(bytes(range(32))))
    service = audited(env, audit)
    subject = await add_account(env.database, env.clock, "acc_1")
    by_refresh, by_access, revoked, *rest = [await login(env, subject) for _ in range(5)]
    await service.logout(refresh_token=by_refresh.refresh_token)
    await service.logout(access_token=by_access.access_token)
    await service.revoke_session("acc_1", revoked.session_id, RevokeReason.USER_REQUEST)
    assert await service.revoke_all("acc_1", RevokeReason.PASSWORD_CHANGE) == 2
    await service.revoke_all("acc_1", RevokeReason.DEACTIVATION)  # nothing left: still audited
    assert await trail(audit) == [
        ("session.logout", by_refresh.session_id, "ok"),
        ("session.logout", by_access.session_id, "ok"),
        ("session.revoke", revoked.session_id, "user_request"),
        ("session.revoke_all", "acc_1", "password_change"),
        ("session.revoke_all", "acc_1", "deactivation"),
    ]
    # Both tokens of one session: one session ended, one record.
    last = await login(env, subject)
    await service.logout(refresh_token=last.refresh_token, access_token=last.access_token)
    assert (await trail(audit))[-1] == ("session.logout", last.session_id, "ok")
    assert len(await trail(audit)) == 6
    # Refused requests change nothing and are not recorded as revocations.
    with pytest.raises(NotFound):
        await service.revoke_session("acc_2", rest[0].session_id)
    assert len(await trail(audit)) == 6
    report = await audit.verify_chain()
    assert (report.intact, report.records_checked) == (True, 6)


async def test_refresh_token_replay_is_audited(env: Env) -> None:
    """[I7] A replayed refresh token revokes its session and records session.refresh.replay."""
    audit = AuditLog(env.database, env.clock, AuditKeys(bytes(range(32))))
    service = audited(env, audit)
    subject = await add_account(env.database, env.clock, "acc_1")
    first = await login(env, subject)
    await service.refresh(first.refresh_token)
    assert await trail(audit) == []  # an ordinary rotation is not a revocation
    with pytest.raises(TokenInvalid):
        await service.refresh(first.refresh_token)
    assert await trail(audit) == [("session.refresh.replay", first.session_id, "revoked")]
    row = await session_row(env.database, first.session_id)
    assert row.revoke_reason == RevokeReason.REFRESH_REPLAY
    # Refresh of a session whose account went inactive revokes it too, and says why.
    other = await login(env, subject)
    await set_account(env.database, "acc_1", status="deactivated")
    with pytest.raises(TokenInvalid):
        await service.refresh(other.refresh_token)
    assert (await trail(audit))[-1] == ("session.revoke", other.session_id, "account_inactive")
    report = await audit.verify_chain()
    assert (report.intact, report.records_checked) == (True, 2)


async def test_a_failing_audit_never_fails_or_undoes_a_revocation(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """[I7] An audit error is logged by type; logout, revoke and revoke_all still succeed."""
    audit = FailingAudit()
    service = audited(env, audit)
    subject = await add_account(env.database, env.clock, "acc_1")
    one, two, three = [await login(env, subject) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="xiaohe.identity.server.sessions.service"):
        await service.logout(refresh_token=one.refresh_token)
        await service.revoke_session("acc_1", two.session_id)
        assert await service.revoke_all("acc_1", RevokeReason.PASSWORD_CHANGE) == 1
    assert audit.calls == 3
    for issued in (one, two, three):
        assert (await session_row(env.database, issued.session_id)).revoked_at is not None
        assert await eventually(rejects(env.b.service, issued.access_token))
    assert await env.a.service.list_sessions("acc_1") == []
    messages = [r.getMessage() for r in caplog.records]
    assert sum("RuntimeError" in m for m in messages) == 3
    assert not any("unreachable" in m for m in messages)  # the type, not the message
    assert all(r.exc_info is None for r in caplog.records)


async def test_logout_is_audited_even_when_redis_is_down(env: Env) -> None:
    """[I7] SQL has ended the session, so the logout is recorded although the caller sees
    Unavailable."""
    audit = AuditLog(env.database, env.clock, AuditKeys(bytes(range(32))))
    subject = await add_account(env.database, env.clock, "acc_1")
    issued = await login(env, subject)
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    cut_off = RevocationList(dead, env.clock, LIFETIMES.access_ttl)
    service = make_service(env.database, cut_off, env.clock, env.keys, audit=audit)
    try:
        with pytest.raises(Unavailable):
            await service.logout(refresh_token=issued.refresh_token)
    finally:
        await dead.aclose()
    assert await trail(audit) == [("session.logout", issued.session_id, "ok")]
    assert (await audit.verify_chain()).intact


async def test_logs_name_sessions_by_a_keyed_pseudonym(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """C4, I7: a log line about a session carries a stable keyed tag, never the session id, so
    lines can be correlated after redaction without revealing what they name."""
    subject = await add_account(env.database, env.clock, "acc_1")
    first = await login(env, subject)
    await env.a.service.refresh(first.refresh_token)
    caplog.set_level(logging.INFO, logger="xiaohe.identity.server.sessions.service")
    with pytest.raises(TokenInvalid):
        await env.a.service.refresh(first.refresh_token)  # a replay: logged
    lines = [redact(r.getMessage()) for r in caplog.records if "replayed" in r.getMessage()]
    assert len(lines) == 1
    tag = Pseudonyms(b"p" * 32).for_log(first.session_id)
    assert f"sid~{tag}" in lines[0]
    assert first.session_id not in lines[0]
    assert first.session_id.removeprefix("ses_") not in lines[0]
