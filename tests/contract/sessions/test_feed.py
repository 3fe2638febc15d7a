"""RevocationFeed against real Redis: embedded, system and a Redis Cluster.

The feed's stream and trim floor share a hash slot (one script writes both), its
reader blocks on XREAD and replays with XRANGE: all of it must hold on a cluster
as on one server. RevocationList appends with each session's account and reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from tests.conftest import WITH_CLUSTER, backend_url, client_for
from tests.contract.sessions.test_revocations import eventually
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.sessions.feed import FEED_KEY, FeedItem, RevocationFeed, Revoked
from xiaohe.identity.server.sessions.revocations import REVOKED_KEY, RevocationList


@pytest.fixture(params=WITH_CLUSTER)
def redis_url(request: pytest.FixtureRequest) -> str:
    """The feed must hold on a Redis Cluster too: embedded, system and cluster."""
    return backend_url(request, request.param)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = client_for(redis_url)
    await client.delete(FEED_KEY, FEED_KEY + ":floor")
    yield client  # type: ignore[misc]
    await client.delete(FEED_KEY, FEED_KEY + ":floor")
    await client.aclose()


def make_feed(redis: aioredis.Redis, clock: FakeClock, retention: float = 3600) -> RevocationFeed:
    return RevocationFeed(
        redis,
        clock,
        retention_seconds=retention,
        heartbeat_seconds=0.2,
        watchers_per_client=4,
        block_seconds=0.2,
        backoff_initial=0.05,
    )


@contextlib.asynccontextmanager
async def reading(feed: RevocationFeed) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(feed.run(stop))
    try:
        await asyncio.wait_for(feed._reading.wait(), 5)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def revocations(watch: AsyncIterator[FeedItem], count: int) -> list[FeedItem]:
    seen: list[FeedItem] = []
    async with asyncio.timeout(5):
        async for item in watch:
            if item.revoked is not None:
                seen.append(item)
                if len(seen) == count:
                    return seen
    raise AssertionError("the watch ended")


async def test_a_revocation_list_announces_sessions_with_account_and_reason(
    redis: aioredis.Redis, clock: FakeClock
) -> None:
    feed = make_feed(redis, clock)
    rl = RevocationList(redis, clock, 600, feed=feed)
    async with reading(feed):
        watch = feed.watch("client-a")
        first = await anext(watch)
        assert first.revoked is None
        await rl.revoke(["sid-1", "sid-2"], account_id="acct-1", reason="password_change")
        seen = await revocations(watch, 2)
        await watch.aclose()
    assert [i.revoked for i in seen] == [
        Revoked("sid-1", "acct-1", "password_change"),
        Revoked("sid-2", "acct-1", "password_change"),
    ]
    assert {i.at for i in seen} == {clock.now()}


async def test_an_append_the_stream_refuses_is_retried_once_with_its_account_and_reason(
    redis: aioredis.Redis, clock: FakeClock
) -> None:
    """Fault injection: the feed's key holds a string, so the append fails (WRONGTYPE) after
    the revocation set took the id. The worker refuses the session at once and keeps it
    pending, the error reaches the caller; once the key is usable again, `run` appends the
    entry, with its account and reason, exactly once."""
    feed = make_feed(redis, clock)
    rl = RevocationList(redis, clock, 600, feed=feed, tick=0.05, backoff_initial=0.05)
    await rl.reload()
    await redis.set(FEED_KEY, "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await rl.revoke(["sid-f"], account_id="acct-f", reason="logout")
    assert rl.is_revoked("sid-f")
    assert rl.pending == {"sid-f"}
    assert await redis.zscore(REVOKED_KEY, "sid-f") is not None
    await redis.delete(FEED_KEY)
    stop = asyncio.Event()
    task = asyncio.create_task(rl.run(stop))
    try:
        assert await eventually(lambda: not rl.pending, within=5) is not None
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    entries = await redis.xrange(FEED_KEY)
    assert [(f[b"sid"], f[b"acct"], f[b"reason"]) for _id, f in entries] == [
        (b"sid-f", b"acct-f", b"logout")
    ]


async def test_a_cursor_replays_after_itself_and_a_trimmed_one_resyncs(
    redis: aioredis.Redis, clock: FakeClock
) -> None:
    feed = make_feed(redis, clock, retention=0.5)
    async with reading(feed):
        await feed.append([Revoked("sid-1", "a", "logout")], clock.now())
        watch = feed.watch("client-a")
        start = (await anext(watch)).cursor
        await watch.aclose()
        await feed.append([Revoked("sid-2", "a", "logout")], clock.now())

        replay = feed.watch("client-a", start)
        assert (await anext(replay)).cursor == start
        (item,) = await revocations(replay, 1)
        assert item.revoked == Revoked("sid-2", "a", "logout")
        await replay.aclose()

        await asyncio.sleep(0.6)  # the window is measured on Redis's clock
        await feed.append([Revoked("sid-3", "a", "logout")], clock.now())
        stale = feed.watch("client-a", start)
        told = await anext(stale)
        assert told.resync_required
        with pytest.raises(StopAsyncIteration):
            await anext(stale)
        # Watching from now gives the newest cursor, and resuming from it needs no resync.
        fresh = feed.watch("client-a")
        now = (await anext(fresh)).cursor
        await fresh.aclose()
        resumed = feed.watch("client-a", now)
        assert not (await anext(resumed)).resync_required
        await feed.append([Revoked("sid-4", "a", "logout")], clock.now())
        (latest,) = await revocations(resumed, 1)
        assert latest.revoked == Revoked("sid-4", "a", "logout")
        await resumed.aclose()
