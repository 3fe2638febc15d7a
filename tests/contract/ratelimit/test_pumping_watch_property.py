"""The conversion watch's window arithmetic, checked against a plain model (hypothesis).

Random sequences of time steps, issues (verified or not) and failed receipts run
against the real scripts on the embedded Redis; after each step the service's
answer (sent or refused) and the blocks must be what a few lines of Python say.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.contract.codes.conftest import HMAC_KEY, ListQueue, compose
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.codes.models import (
    Channel,
    CodePolicy,
    IssueCodeCommand,
    Purpose,
    VerifyCodeCommand,
)
from xiaohe.identity.server.codes.service import CodeService
from xiaohe.identity.server.errors import RateLimited
from xiaohe.identity.server.ratelimit.prefix_watch import PrefixWatch
from xiaohe.identity.server.ratelimit.prefixes import PumpingPolicy
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis

PREFIX = "86-1700123"
WINDOW, MIN_SENT, RATIO, BLOCK, WEIGHT = 600, 4, 0.5, 900, 2

Step = tuple[int, str]


@dataclass
class Model:
    """What the watch should decide, in seconds."""

    sent: list[float] = field(default_factory=list)
    ok: list[float] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)
    until: float = 0.0

    def _trips(self, now: float) -> bool:
        def recent(times: list[float]) -> int:
            return sum(1 for t in times if t > now - WINDOW)

        volume = recent(self.sent) + WEIGHT * recent(self.failed)
        return volume >= MIN_SENT and recent(self.ok) < RATIO * volume

    def issue(self, now: float) -> bool:
        if now < self.until:
            return False
        if self._trips(now):
            self.until = now + BLOCK
            return False
        self.sent.append(now)
        return True

    def receipt(self, now: float) -> None:
        self.failed.append(now)
        if now >= self.until and self._trips(now):
            self.until = now + BLOCK


async def _run(url: str, steps: list[Step]) -> None:
    redis = aioredis.Redis.from_url(url)
    await redis.flushdb()
    clock = FakeClock()
    policy = PumpingPolicy(
        budgeted=(),
        prefix_per_hour=10**6,
        prefix_per_day=10**6,
        watch_window=WINDOW,
        watch_min_sent=MIN_SENT,
        watch_min_ratio=RATIO,
        block_seconds=BLOCK,
        failed_receipt_weight=WEIGHT,
    )
    queue = ListQueue()
    codes = CodeService(
        redis=redis,
        hmac_key=HMAC_KEY,
        clock=clock,
        queue=queue,
        compose=compose,
        policy=CodePolicy(cooldown=0, per_destination_hour=1000, per_destination_day=1000),
        pumping=policy,
    )
    watch = PrefixWatch(redis, clock, policy)
    model = Model()
    try:
        for n, (advance, action) in enumerate(steps):
            clock.advance(advance)
            now = clock.now()
            if action == "receipt":
                await watch.delivery_failed(PREFIX)
                model.receipt(now)
            else:
                phone = f"+861700123{n:04d}"
                expected = model.issue(now)
                try:
                    await codes.issue(IssueCodeCommand(Channel.SMS, phone, Purpose.REGISTER))
                    sent = True
                except RateLimited:
                    sent = False
                assert sent == expected, (n, action, now - 1_790_000_000)
                if sent and action == "verified":
                    code = queue.last_code()
                    await codes.verify(
                        VerifyCodeCommand(Channel.SMS, phone, Purpose.REGISTER, code)
                    )
                    model.ok.append(now)
            blocked = [b.prefix for b in await watch.list_blocks()]
            assert blocked == ([PREFIX] if now < model.until else []), n
    finally:
        await redis.flushdb()
        await redis.aclose()


steps = st.lists(
    st.tuples(
        st.sampled_from([0, 0, 0, 1, 299, 300, 599, 600, 601, 900]),
        st.sampled_from(["unverified", "verified", "verified", "receipt"]),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps)
def test_the_watch_matches_the_model(embedded_redis: EmbeddedRedis, steps: list[Step]) -> None:
    """X3: sent/verified/failed counts over a sliding window, blocks and their end, exactly."""
    asyncio.run(_run(embedded_redis.url + "?db=5", steps))
