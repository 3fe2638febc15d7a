"""SlidingWindowLimiter against real Redis (embedded and system): counts, waits, refunds, races."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tests.conftest import WITH_CLUSTER, backend_url
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.errors import RateLimited
from xiaohe.identity.server.ratelimit.limiter import Charge, SlidingWindowLimiter, Window

KEY = "xh:rl:{test:1}:thing"
POLICY = "test.thing"


@pytest.fixture(params=WITH_CLUSTER)
def redis_url(request: pytest.FixtureRequest) -> str:
    """This store must hold on a Redis Cluster too: embedded, system and cluster."""
    return backend_url(request, request.param)


@pytest.fixture
def limiter(redis_client: aioredis.Redis) -> SlidingWindowLimiter:
    """A limiter on the test Redis."""
    return SlidingWindowLimiter(redis_client)


async def test_limit_and_retry_after_from_the_oldest_event(
    limiter: SlidingWindowLimiter, clock: FakeClock
) -> None:
    """C6: at most `limit` per window; the wait is oldest event + window − now."""
    for _ in range(3):
        await limiter.acquire(POLICY, KEY, 3, 60, clock.now())
        clock.advance(10)
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire(POLICY, KEY, 3, 60, clock.now())
    assert caught.value.policy == POLICY
    assert caught.value.retry_after == pytest.approx(30)
    clock.advance(29.999)
    with pytest.raises(RateLimited):
        await limiter.acquire(POLICY, KEY, 3, 60, clock.now())
    clock.advance(0.001)
    await limiter.acquire(POLICY, KEY, 3, 60, clock.now())


async def test_window_slides_rather_than_resets(
    limiter: SlidingWindowLimiter, clock: FakeClock
) -> None:
    """No burst at a boundary: events stay counted for exactly one window after they happen."""
    await limiter.acquire(POLICY, KEY, 2, 60, clock.now())
    clock.advance(50)
    await limiter.acquire(POLICY, KEY, 2, 60, clock.now())
    clock.advance(15)  # the first event left the window, the second has not
    await limiter.acquire(POLICY, KEY, 2, 60, clock.now())
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire(POLICY, KEY, 2, 60, clock.now())
    assert caught.value.retry_after == pytest.approx(45)


async def test_refused_attempts_are_not_recorded(
    limiter: SlidingWindowLimiter, clock: FakeClock
) -> None:
    """Hammering a full window does not push the wait further out."""
    await limiter.acquire(POLICY, KEY, 1, 60, clock.now())
    for _ in range(20):
        clock.advance(1)
        with pytest.raises(RateLimited):
            await limiter.acquire(POLICY, KEY, 1, 60, clock.now())
    clock.advance(40)
    await limiter.acquire(POLICY, KEY, 1, 60, clock.now())


async def test_several_windows_on_one_key(limiter: SlidingWindowLimiter, clock: FakeClock) -> None:
    """5 per hour AND 10 per day in one call; the wait is the longest one needed."""
    windows = [Window(5, 3600), Window(10, 86400)]
    for _ in range(5):
        await limiter.acquire_windows(POLICY, KEY, windows, clock.now())
        clock.advance(60)
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire_windows(POLICY, KEY, windows, clock.now())
    assert caught.value.retry_after == pytest.approx(3600 - 300)
    clock.advance(3600)
    for _ in range(5):
        await limiter.acquire_windows(POLICY, KEY, windows, clock.now())
        clock.advance(60)
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire_windows(POLICY, KEY, windows, clock.now())
    elapsed = 3600 + 600
    assert caught.value.retry_after == pytest.approx(86400 - elapsed)


async def test_release_refunds_a_reservation(
    limiter: SlidingWindowLimiter, clock: FakeClock
) -> None:
    """A refunded event no longer counts."""
    first = await limiter.acquire(POLICY, KEY, 2, 60, clock.now())
    await limiter.acquire(POLICY, KEY, 2, 60, clock.now())
    with pytest.raises(RateLimited):
        await limiter.acquire(POLICY, KEY, 2, 60, clock.now())
    await limiter.release(first)
    await limiter.release(first)  # idempotent
    await limiter.acquire(POLICY, KEY, 2, 60, clock.now())
    with pytest.raises(RateLimited):
        await limiter.acquire(POLICY, KEY, 2, 60, clock.now())


async def test_keys_are_independent(limiter: SlidingWindowLimiter, clock: FakeClock) -> None:
    """One key's window does not affect another."""
    await limiter.acquire(POLICY, KEY, 1, 60, clock.now())
    await limiter.acquire(POLICY, "xh:rl:{test:2}:thing", 1, 60, clock.now())


async def test_zero_limit_always_refuses(limiter: SlidingWindowLimiter, clock: FakeClock) -> None:
    """A limit of 0 disables the action for a full window."""
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire(POLICY, KEY, 0, 60, clock.now())
    assert caught.value.retry_after == pytest.approx(60)


async def test_concurrent_acquires_never_overshoot(
    limiter: SlidingWindowLimiter, clock: FakeClock
) -> None:
    """C6: 90 concurrent callers (within the client's pool) on a limit of 7 → exactly 7 succeed."""
    results = await asyncio.gather(
        *(limiter.acquire(POLICY, KEY, 7, 60, clock.now()) for _ in range(90)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 7
    assert sum(isinstance(r, RateLimited) for r in results) == 83


async def test_keys_expire_for_garbage_collection_only(
    limiter: SlidingWindowLimiter, redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """Redis expiry is set beyond the longest window, so it never cuts a window short."""
    await limiter.acquire_windows(POLICY, KEY, [Window(5, 60), Window(10, 600)], clock.now())
    ttl_ms = await redis_client.pttl(KEY)
    assert ttl_ms > 600_000


def test_windows_must_be_sensible() -> None:
    """A window needs a positive length and a non-negative limit."""
    with pytest.raises(ValueError, match="window"):
        Window(1, 0)
    with pytest.raises(ValueError, match="window"):
        Window(-1, 60)


OTHER_KEY = "xh:rl:{test:2}:thing"


def _charges(first_limit: int, second_limit: int) -> list[Charge]:
    return [
        Charge("test.first", KEY, (Window(first_limit, 60),)),
        Charge("test.second", OTHER_KEY, (Window(second_limit, 60),)),
    ]


async def test_acquire_all_records_every_charge_in_one_round_trip(
    limiter: SlidingWindowLimiter, redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """Two keys in different slots, both recorded; their reservations refund them."""
    taken = await limiter.acquire_all(_charges(5, 5), clock.now())
    assert [r.policy for r in taken] == ["test.first", "test.second"]
    assert await redis_client.zcard(KEY) == 1
    assert await redis_client.zcard(OTHER_KEY) == 1
    for reservation in taken:
        await limiter.release(reservation)
    assert await redis_client.zcard(KEY) == 0
    assert await redis_client.zcard(OTHER_KEY) == 0


@pytest.mark.parametrize(
    ("limits", "refusing"),
    [((0, 5), "test.first"), ((5, 0), "test.second"), ((0, 0), "test.first")],
)
async def test_acquire_all_refusal_keeps_nothing_and_names_the_first_refusing_policy(
    limiter: SlidingWindowLimiter,
    redis_client: aioredis.Redis,
    clock: FakeClock,
    limits: tuple[int, int],
    refusing: str,
) -> None:
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire_all(_charges(*limits), clock.now())
    assert caught.value.policy == refusing
    assert await redis_client.zcard(KEY) == 0
    assert await redis_client.zcard(OTHER_KEY) == 0


async def test_acquire_all_after_redis_forgot_its_scripts(
    limiter: SlidingWindowLimiter, redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """After a restart (SCRIPT FLUSH) the charges still land, each exactly once."""
    await redis_client.script_flush()
    await limiter.acquire_all(_charges(5, 5), clock.now())
    assert await redis_client.zcard(KEY) == 1
    assert await redis_client.zcard(OTHER_KEY) == 1
    await limiter.acquire_all(_charges(5, 5), clock.now())
    assert await redis_client.zcard(KEY) == 2
