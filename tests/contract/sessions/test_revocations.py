"""The revocation list: shared through Redis, visible in another worker within a second (T3).

Each test runs on the embedded and on the system Redis (`redis_url`). "Another
worker" is a second RevocationList on its own Redis client, as a second process
would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.conftest import WITH_CLUSTER, backend_url, client_for
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.sessions.revocations import (
    REVOCATION_CHANNEL,
    REVOKED_KEY,
    SKEW_MARGIN,
    RevocationList,
    decode_revocation_message,
    encode_revocation_message,
)
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis

ACCESS_TTL = 600
VALIDATOR_LEEWAY = 5
LEEWAY = VALIDATOR_LEEWAY + SKEW_MARGIN
FAST_FAIL = {"retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 1, "socket_timeout": 2}


@pytest.fixture(params=WITH_CLUSTER)
def redis_url(request: pytest.FixtureRequest) -> str:
    """This store must hold on a Redis Cluster too: embedded, system and cluster."""
    return backend_url(request, request.param)


def make_list(client: aioredis.Redis, clock: FakeClock) -> RevocationList:
    """A RevocationList with short ticks and backoff, so tests stop and recover quickly."""
    return RevocationList(
        client,
        clock,
        ACCESS_TTL,
        validator_leeway=VALIDATOR_LEEWAY,
        tick=0.05,
        backoff_initial=0.05,
        backoff_max=0.2,
    )


@contextlib.asynccontextmanager
async def following(rl: RevocationList, *, ready: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    """Run `rl.run` in the background (waiting for its first load if `ready`); stop it after."""
    stop = asyncio.Event()
    task = asyncio.create_task(rl.run(stop))
    try:
        if ready:
            await asyncio.wait_for(rl.wait_ready(), 5)
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def eventually(check: Callable[[], bool], within: float = 1.0) -> float | None:
    """Poll `check` until it holds; the seconds it took, or None if it never held in time."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            return None
        await asyncio.sleep(0.01)


@pytest.fixture
async def second_client(
    redis_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[aioredis.Redis]:
    """Another client on the same (already emptied) database: the other worker's connection."""
    client = client_for(redis_url)
    yield client
    await client.aclose()


async def test_revocation_reaches_another_worker_within_a_second(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, clock: FakeClock
) -> None:
    """T3: a session revoked on worker A is revoked on worker B within one second."""
    a, b = make_list(redis_client, clock), make_list(second_client, clock)
    async with following(a), following(b):
        assert not b.is_revoked("ses_1")
        await a.revoke(["ses_1", "ses_2"])
        assert a.is_revoked("ses_1")  # at once, locally
        took = await eventually(lambda: b.is_revoked("ses_1") and b.is_revoked("ses_2"))
        assert took is not None, "B did not see the revocation within 1 s"
        assert not b.is_revoked("ses_3")


async def test_a_worker_starting_later_loads_earlier_revocations(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, clock: FakeClock
) -> None:
    """T3: the full reload on subscribe brings in revocations published before it started."""
    a = make_list(redis_client, clock)
    async with following(a):
        await a.revoke(["ses_early"])
    b = make_list(second_client, clock)
    async with following(b):
        assert b.is_revoked("ses_early")
    score = await redis_client.zscore(REVOKED_KEY, "ses_early")
    assert score == pytest.approx(clock.now() + ACCESS_TTL + LEEWAY)


async def test_entries_expire_after_the_access_token_lifetime(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, clock: FakeClock
) -> None:
    """A revoked id matters only until its access tokens have expired; reloads prune it."""
    a = make_list(redis_client, clock)
    async with following(a):
        await a.revoke(["ses_old"])
        clock.advance(ACCESS_TTL / 2)
        await a.revoke(["ses_new"])
    clock.advance(ACCESS_TTL / 2 + LEEWAY + 1)
    b = make_list(second_client, clock)
    async with following(b):
        assert not b.is_revoked("ses_old")
        assert b.is_revoked("ses_new")
    members = await redis_client.zrange(REVOKED_KEY, 0, -1)
    assert members == [b"ses_new"]


async def test_a_later_revocation_never_shortens_an_entry(
    redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """Revoking again keeps the later expiry in Redis (ZADD GT)."""
    a = make_list(redis_client, clock)
    async with following(a):
        await a.revoke(["ses_x"])
        first = await redis_client.zscore(REVOKED_KEY, "ses_x")
        clock.advance(100)
        await a.revoke(["ses_x"])
        second = await redis_client.zscore(REVOKED_KEY, "ses_x")
    assert first is not None
    assert second is not None
    assert second == pytest.approx(first + 100)


async def test_not_loaded_yet_fails_closed(redis_client: aioredis.Redis, clock: FakeClock) -> None:
    """Before its first load the list cannot say "not revoked", so it raises Unavailable."""
    rl = make_list(redis_client, clock)
    with pytest.raises(Unavailable):
        rl.is_revoked("ses_1")
    await rl.reload()
    assert rl.is_revoked("ses_1") is False


async def test_malformed_messages_are_ignored(
    redis_client: aioredis.Redis, second_client: aioredis.Redis, clock: FakeClock
) -> None:
    """Garbage on the channel is logged and skipped; the feed keeps working."""
    b = make_list(second_client, clock)
    async with following(b) as task:
        for junk in (b"not json", b"[1,2]", b'{"sids":"ses_1","exp":1}', b'{"sids":["ses_1"]}'):
            await redis_client.publish(REVOCATION_CHANNEL, junk)
        await redis_client.publish(
            REVOCATION_CHANNEL, encode_revocation_message(["ses_ok"], clock.now() + 60)
        )
        assert await eventually(lambda: b.is_revoked("ses_ok")) is not None
        assert not b.is_revoked("ses_1")
        assert not task.done()


def test_message_round_trip() -> None:
    """The published message is a JSON object with the sid list and the expiry."""
    data = encode_revocation_message(["ses_1", "ses_2"], 1234.5)
    assert data == '{"sids":["ses_1","ses_2"],"exp":1234.5}'
    assert decode_revocation_message(data.encode()) == (["ses_1", "ses_2"], 1234.5)
    for bad in ('{"sids":[1],"exp":1}', '{"sids":["a"],"exp":true}', "null"):
        with pytest.raises(ValueError):  # noqa: PT011 - JSONDecodeError is a ValueError too
            decode_revocation_message(bad)


# ---------------------------------------------------------------- Redis outages


def closed_port() -> int:
    """A local TCP port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, which the test may stop and start."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_redis_down_revoke_is_unavailable_and_run_survives(clock: FakeClock) -> None:
    """No Redis: revoke is Unavailable but holds the id locally; run retries and never crashes."""
    client = aioredis.Redis(host="127.0.0.1", port=closed_port(), **FAST_FAIL)  # type: ignore[arg-type]
    rl = make_list(client, clock)
    try:
        async with following(rl, ready=False) as task:
            with pytest.raises(Unavailable):
                await rl.revoke(["ses_1"])
            assert rl.pending == {"ses_1"}
            await asyncio.sleep(0.5)  # several failed connection attempts
            assert not task.done()
            with pytest.raises(Unavailable):  # never loaded: fails closed
                rl.is_revoked("ses_1")
        assert task.exception() is None
    finally:
        await client.aclose()


async def test_pending_revocations_are_published_when_redis_returns(
    private_redis: EmbeddedRedis, clock: FakeClock
) -> None:
    """T3 gap: what could not be published during an outage reaches other workers afterwards.

    Also: a worker whose connection dropped reloads on reconnect, so it learns of
    revocations published while it was cut off.
    """
    a_client = aioredis.Redis.from_url(private_redis.url, **FAST_FAIL)  # type: ignore[arg-type]
    b_client = aioredis.Redis.from_url(private_redis.url, **FAST_FAIL)  # type: ignore[arg-type]
    a, b = make_list(a_client, clock), make_list(b_client, clock)
    try:
        async with following(a), following(b):
            await asyncio.to_thread(private_redis.stop)
            with pytest.raises(Unavailable):
                await a.revoke(["ses_during_outage"])
            assert a.is_revoked("ses_during_outage")
            assert not b.is_revoked("ses_during_outage")
            await asyncio.to_thread(private_redis.start)
            took = await eventually(lambda: b.is_revoked("ses_during_outage"), within=5.0)
            assert took is not None, "the pending revocation never reached B"
            assert a.pending == frozenset()
            assert await a_client.zscore(REVOKED_KEY, "ses_during_outage") is not None
    finally:
        await a_client.aclose()
        await b_client.aclose()


async def test_reconnect_reloads_what_was_missed(
    redis_url: str, redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """A revocation written while a worker's subscription was cut is found by its reload."""
    name = f"rl-test-{secrets.token_hex(4)}"
    a_client = client_for(redis_url, client_name=name)
    a = make_list(a_client, clock)
    try:
        async with following(a):
            # Written straight into the set, never published: only a reload can find it.
            await redis_client.zadd(REVOKED_KEY, {"ses_missed": clock.now() + 300})
            assert not a.is_revoked("ses_missed")
            killed = 0
            for entry in await redis_client.client_list(_type="pubsub"):
                if entry.get("name") == name:
                    killed += await redis_client.client_kill_filter(_id=entry["id"])
            assert killed == 1
            took = await eventually(lambda: a.is_revoked("ses_missed"), within=5.0)
            assert took is not None, "A did not reload after its subscription was cut"
    finally:
        await a_client.aclose()


@pytest.mark.parametrize("validator_leeway", [0.0, 5.0, 30.0, 60.0])
def test_an_entry_outlives_every_token_the_validator_may_accept(
    redis_client: aioredis.Redis, clock: FakeClock, validator_leeway: float
) -> None:
    """T3: the list keeps a revocation past exp + the validator's leeway, whatever it is set to."""
    revocations = RevocationList(redis_client, clock, ACCESS_TTL, validator_leeway=validator_leeway)
    assert revocations.leeway >= validator_leeway + SKEW_MARGIN
