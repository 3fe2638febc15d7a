"""LoginThrottle against real Redis (embedded and system): budget, locks, escalation, clearing."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.conftest import WITH_CLUSTER, backend_url
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.config import Settings
from xiaohe.identity.server.container import lockout_policy
from xiaohe.identity.server.credentials.lockout import (
    Admission,
    LockoutPolicy,
    LoginThrottle,
    Refusal,
)
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.storage.redis import text

ACCOUNT = "acc_0123456789abcdef01234567"
OTHER_ACCOUNT = "acc_fedcba9876543210fedcba98"
IP_A = "203.0.113.7"
IP_B = "198.51.100.23"


@pytest.fixture(params=WITH_CLUSTER)
def redis_url(request: pytest.FixtureRequest) -> str:
    """This store must hold on a Redis Cluster too: embedded, system and cluster."""
    return backend_url(request, request.param)


def throttle(redis: aioredis.Redis, clock: FakeClock, **policy: int) -> LoginThrottle:
    """A throttle on the test Redis with a keyed IP pseudonym."""
    return LoginThrottle(redis, clock, LockoutPolicy(**policy), ip_key=b"k" * 32)


async def admitted(t: LoginThrottle, ip: str, account: str = ACCOUNT) -> Admission:
    """Admit or fail the test."""
    admission = await t.admit(account, ip)
    assert admission.admitted, admission
    return admission


async def fail(t: LoginThrottle, ip: str, times: int = 1, account: str = ACCOUNT) -> float:
    """Admit and record `times` wrong passwords; returns the last lock duration (0: none)."""
    locked_for = 0.0
    for _ in range(times):
        admission = await admitted(t, ip, account)
        locked_for = (await t.record_failure(account, ip, admission.reservation)).locked_for
    return locked_for


def pooled(redis_client: aioredis.Redis, size: int = 32) -> aioredis.Redis:
    """A client on the same server whose callers queue for `size` connections."""
    if isinstance(redis_client, RedisCluster):
        return redis_client  # its pools are per node, and large enough
    pool = redis_client.connection_pool
    return aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool(
            connection_class=pool.connection_class,
            max_connections=size,
            timeout=20,
            **pool.connection_kwargs,
        )
    )


async def test_concurrent_admissions_never_exceed_the_hourly_budget(
    redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """B1: 500 simultaneous admissions from 500 IPs reserve exactly 100 evaluations."""
    client = pooled(redis_client)
    try:
        await _concurrent_admissions(throttle(client, clock))
    finally:
        await client.aclose()


async def _concurrent_admissions(t: LoginThrottle) -> None:
    ips = [f"10.0.{i // 200}.{i % 200}" for i in range(500)]
    answers = await asyncio.gather(*(t.admit(ACCOUNT, ip) for ip in ips))
    granted = [(ip, a) for ip, a in zip(ips, answers, strict=True) if a.admitted]
    assert len(granted) == 100
    refused = [a for a in answers if not a.admitted]
    assert {a.refusal for a in refused} == {Refusal.ACCOUNT_LIMIT}
    assert all(a.retry_after == pytest.approx(3600) for a in refused)
    # All 100 fail: the budget stays spent, and refusals recorded nothing.
    await asyncio.gather(*(t.record_failure(ACCOUNT, ip, a.reservation) for ip, a in granted))
    assert not (await t.admit(ACCOUNT, "10.9.9.9")).admitted
    # Another account has its own budget.
    await admitted(t, IP_A, OTHER_ACCOUNT)


async def test_the_hourly_budget_slides_and_is_temporary(
    redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """B1, B2: a full window refuses until its oldest failure is an hour old, then admits again."""
    t = throttle(redis_client, clock, failures_per_account_hour=3)
    await fail(t, "10.0.0.1")
    clock.advance(600)
    await fail(t, "10.0.0.2")
    last = await admitted(t, "10.0.0.3")
    outcome = await t.record_failure(ACCOUNT, "10.0.0.3", last.reservation)
    assert outcome.account_full
    assert outcome.locked_for == 0
    refused = await t.admit(ACCOUNT, IP_A)
    assert refused.refusal is Refusal.ACCOUNT_LIMIT
    assert refused.retry_after == pytest.approx(3000)
    clock.advance(2999.999)
    assert not (await t.admit(ACCOUNT, IP_A)).admitted
    clock.advance(0.001)
    await admitted(t, IP_A)
    assert not (await t.admit(ACCOUNT, IP_A)).admitted


async def test_pair_lock_escalates_and_is_capped(
    redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """B2: N failures from one IP lock that (account, IP) only, for 60, 120, 240 s … capped."""
    t = throttle(
        redis_client, clock, failures_per_account_ip=3, lock_base_seconds=60, lock_max_seconds=200
    )
    assert await fail(t, IP_A, 2) == 0
    assert await fail(t, IP_A) == 60
    refused = await t.admit(ACCOUNT, IP_A)
    assert refused.refusal is Refusal.PAIR_LOCKED
    assert refused.retry_after == pytest.approx(60)
    await admitted(t, IP_B)  # other IPs, and the account as a whole, are unaffected
    clock.advance(59.999)
    assert not (await t.admit(ACCOUNT, IP_A)).admitted
    clock.advance(0.001)
    assert await fail(t, IP_A, 3) == 120
    clock.advance(120)
    assert await fail(t, IP_A, 3) == 200  # 240, capped
    clock.advance(200)
    assert await fail(t, IP_A, 3) == 200
    # A day without locks: escalation starts over (never permanent).
    clock.advance(86400)
    assert await fail(t, IP_A, 3) == 60


async def test_failures_outside_the_pair_window_do_not_lock(
    redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """B2: the pair counts failures within 15 minutes."""
    t = throttle(redis_client, clock, failures_per_account_ip=3)
    await fail(t, IP_A, 2)
    clock.advance(900)
    assert await fail(t, IP_A, 2) == 0
    assert await fail(t, IP_A) == 60


async def test_success_disregards_this_ips_failures_only(
    redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """B2 (a success clears the failure count) without undoing B1 for other IPs' failures."""
    t = throttle(redis_client, clock, failures_per_account_hour=6, failures_per_account_ip=3)
    await fail(t, IP_B, 2)
    await fail(t, IP_A, 2)
    success = await admitted(t, IP_A)
    await t.record_success(ACCOUNT, IP_A, success.reservation)
    # IP A's count restarted: two more failures do not lock it.
    assert await fail(t, IP_A, 2) == 0
    # B's count survived A's success: one more failure from B locks B.
    assert await fail(t, IP_B) == 60
    # The window holds B's 3 and A's 2 new failures (A's old ones are gone): room for one.
    await admitted(t, IP_A)
    assert (await t.admit(ACCOUNT, IP_A)).refusal is Refusal.ACCOUNT_LIMIT


async def test_success_resets_escalation_and_clear_lifts_a_lock(
    redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """B2: after an SMS login (`clear`) the pair is unlocked and the next lock is short again."""
    t = throttle(redis_client, clock, failures_per_account_ip=2)
    assert await fail(t, IP_A, 2) == 60
    clock.advance(60)
    assert await fail(t, IP_A, 2) == 120
    assert not (await t.admit(ACCOUNT, IP_A)).admitted
    await t.clear(ACCOUNT, IP_A)
    assert await fail(t, IP_A, 2) == 60
    clock.advance(60)
    success = await admitted(t, IP_A)
    await t.record_success(ACCOUNT, IP_A, success.reservation)
    assert await fail(t, IP_A, 2) == 60


async def test_inflight_reservations_survive_a_success_and_release_refunds(
    redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """B1: a success never frees slots of attempts still being evaluated; `release` frees one."""
    t = throttle(redis_client, clock, failures_per_account_hour=3)
    in_flight = [await admitted(t, IP_A) for _ in range(2)]
    mine = await admitted(t, IP_A)
    assert not (await t.admit(ACCOUNT, IP_B)).admitted
    await t.record_success(ACCOUNT, IP_A, mine.reservation)
    await admitted(t, IP_B)  # only the succeeding slot was freed
    assert not (await t.admit(ACCOUNT, IP_B)).admitted
    await t.release(ACCOUNT, IP_A, in_flight[0].reservation)
    await admitted(t, IP_B)
    assert not (await t.admit(ACCOUNT, IP_B)).admitted


async def test_touch_changes_nothing(redis_client: aioredis.Redis, clock: FakeClock) -> None:
    """B3: the round trip a refused attempt makes neither counts, clears nor locks."""
    t = throttle(redis_client, clock, failures_per_account_hour=4, failures_per_account_ip=2)
    await fail(t, IP_A)

    async def state() -> dict[bytes, tuple[bytes | None, int]]:
        keys = await redis_client.keys("xh:login:*")
        return {k: (await redis_client.dump(k), await redis_client.pttl(k)) for k in keys}

    before = await state()
    for _ in range(5):
        await t.touch(ACCOUNT, IP_A)
        await t.touch(ACCOUNT, IP_B)
    after = await state()
    assert after.keys() == before.keys()
    for key, (value, ttl) in after.items():
        assert value == before[key][0]
        assert before[key][1] - 1000 <= ttl <= before[key][1]  # only time has passed
    assert await fail(t, IP_A) == 60  # the earlier failure still counts towards the lock


async def test_keys_share_one_slot_and_hold_no_raw_ip(
    redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    """I1/I7 spirit: an IP never reaches Redis; all keys of an account carry its hash tag."""
    t = throttle(redis_client, clock, failures_per_account_ip=2)
    await fail(t, IP_A, 2)
    await fail(t, "2001:db8::1")
    keys = [text(k) async for k in redis_client.scan_iter()]  # every node, on a cluster
    assert keys
    assert all(k.startswith(f"xh:login:{{acct:{ACCOUNT}}}:") for k in keys)
    dump = " ".join(keys)
    for key in keys:
        if await redis_client.type(key) == b"zset":
            dump += " ".join(text(m) for m in await redis_client.zrange(key, 0, -1))
    for raw in (IP_A, "2001:db8", "203.0.113"):
        assert raw not in dump
    # The pseudonym depends on the key, and an IPv6 /64 is one unit.
    other = LoginThrottle(redis_client, clock, ip_key=b"x" * 32)
    assert other.ip_tag(IP_A) != t.ip_tag(IP_A)
    assert t.ip_tag("2001:db8::1") == t.ip_tag("2001:db8::ffff:1")
    assert t.ip_tag("") == t.ip_tag("  ") != t.ip_tag(IP_A)


def test_policy_from_settings_and_bounds() -> None:
    """B1/B2 defaults come from the settings; nonsense limits are refused."""
    policy = lockout_policy(Settings(login_failures_per_account_hour=50, lock_base_seconds=30))
    assert policy.failures_per_account_hour == 50
    assert policy.failures_per_account_ip == 10
    assert (policy.lock_base_seconds, policy.lock_max_seconds) == (30, 3600)
    for bad in (
        {"failures_per_account_hour": 0},
        {"failures_per_account_ip": 0},
        {"lock_base_seconds": 0},
        {"lock_base_seconds": 10, "lock_max_seconds": 5},
    ):
        with pytest.raises(ValueError, match="must"):
            LockoutPolicy(**bad)


def closed_port() -> int:
    """A local TCP port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_redis_down_fails_closed(clock: FakeClock) -> None:
    """F1: without Redis nothing is admitted; every call raises Unavailable."""
    client = aioredis.Redis(
        host="127.0.0.1",
        port=closed_port(),
        retry=Retry(NoBackoff(), 1),
        socket_connect_timeout=2,
        socket_timeout=2,
    )
    t = LoginThrottle(client, clock)
    try:
        with pytest.raises(Unavailable):
            await t.admit(ACCOUNT, IP_A)
        with pytest.raises(Unavailable):
            await t.record_failure(ACCOUNT, IP_A, "A" * 16)
        with pytest.raises(Unavailable):
            await t.record_success(ACCOUNT, IP_A, "A" * 16)
        with pytest.raises(Unavailable):
            await t.clear(ACCOUNT, IP_A)
    finally:
        await client.aclose()
