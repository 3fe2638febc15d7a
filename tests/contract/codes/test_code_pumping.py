"""SMS-pumping defence on real Redis (SECURITY X3): ranges, prefix budgets, the conversion watch."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

import pytest

from tests.contract.codes.conftest import CodeHarness, MakeHarness, digits_from
from xiaohe.identity.server.codes.models import Channel, CodePolicy, IssueCodeCommand, Purpose
from xiaohe.identity.server.codes.store import ISSUE_POLICY
from xiaohe.identity.server.errors import CodeInvalid, InvalidArgument, RateLimited, Unavailable
from xiaohe.identity.server.ratelimit.prefix_watch import PrefixWatch
from xiaohe.identity.server.ratelimit.prefixes import PumpingPolicy, parse_ranges
from xiaohe.identity.server.ratelimit.pumping import (
    PREFIX_BLOCKED_POLICY,
    PREFIX_BUDGET_POLICY,
    RANGE_BUDGET_POLICY,
    RANGE_DENIED_POLICY,
    PrefixBlock,
)
from xiaohe.identity.server.transport.status import to_rpc_status

HOUR = 3600
# Codes are per destination: no cooldown or per-number limit gets in the way of the prefix's.
LOOSE = CodePolicy(
    cooldown=0, per_destination_hour=1000, per_destination_day=1000, per_ip_hour=10**6
)
ATTACKED = "86-1700123"
NORMAL = "86-1391234"


def number(prefix: str, n: int) -> str:
    """The n-th number of a prefix: `86-1700123`, 7 → `+8617001230007`."""
    cc, head = prefix.split("-")
    return f"+{cc}{head}{n:04d}"


@dataclass
class RecordingBlocks:
    """A BlockEvents that remembers every block."""

    blocks: list[PrefixBlock] = field(default_factory=list)

    def prefix_blocked(self, block: PrefixBlock) -> None:
        """Remember the block."""
        self.blocks.append(block)


def pumping(**overrides: object) -> PumpingPolicy:
    """A policy with no default ranges and generous budgets, then the overrides."""
    values: dict[str, object] = {
        "budgeted": (),
        "prefix_per_hour": 1000,
        "prefix_per_day": 1000,
        "watch_min_sent": 1000,
    }
    values.update(overrides)
    return PumpingPolicy(**values)  # type: ignore[arg-type]


def harness(
    make_codes: MakeHarness, policy: PumpingPolicy, **kwargs: object
) -> tuple[CodeHarness, RecordingBlocks]:
    events = RecordingBlocks()
    h = make_codes(LOOSE, pumping=policy, block_events=events, **kwargs)
    return h, events


async def refused(h: CodeHarness, destination: str, *, ip: str = "203.0.113.9") -> RateLimited:
    """Issue and expect a refusal; return it."""
    with pytest.raises(RateLimited) as caught:
        await h.issue(destination, ip=ip)
    return caught.value


def caller_view(exc: RateLimited) -> tuple[int, str, list[str]]:
    """What the caller sees: status code, message, and the detail types (not their values)."""
    status = to_rpc_status(exc, "req")
    return status.code, status.message, [d.type_url for d in status.details]


async def test_a_prefix_budget_spans_its_numbers(make_codes: MakeHarness) -> None:
    """X3: distinct numbers of one prefix share its hourly budget; other prefixes do not."""
    h, _ = harness(make_codes, pumping(prefix_per_hour=3))
    for n in range(3):
        await h.issue(number(ATTACKED, n))
    exc = await refused(h, number(ATTACKED, 3))
    assert exc.policy == ISSUE_POLICY
    assert 0 < exc.retry_after <= HOUR
    assert h.metrics.rejected == [PREFIX_BUDGET_POLICY]
    await h.issue(number(NORMAL, 0))
    h.clock.advance(HOUR)
    await h.issue(number(ATTACKED, 3))


async def test_a_prefix_budget_holds_under_concurrency(make_codes: MakeHarness) -> None:
    """X3, C6: 40 simultaneous issues to 40 numbers of one prefix send exactly its budget."""
    h, _ = harness(make_codes, pumping(prefix_per_hour=7))
    results = await asyncio.gather(
        *(h.issue(number(ATTACKED, n), ip=f"198.51.100.{n}") for n in range(40)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if isinstance(r, str)) == 7
    assert all(isinstance(r, RateLimited) for r in results if not isinstance(r, str))
    assert len(h.queue.messages) == 7


async def test_a_refusal_by_the_prefix_refunds_the_caller_windows(make_codes: MakeHarness) -> None:
    """F1: a prefix refusal gives the IP its charge back, as any later refusal does."""
    strict = dataclasses.replace(LOOSE, per_ip_hour=2)
    h = make_codes(strict, pumping=pumping(prefix_per_hour=1))
    await h.issue(number(ATTACKED, 0), ip="192.0.2.5")
    for n in range(1, 4):
        await refused(h, number(ATTACKED, n), ip="192.0.2.5")
    await h.issue(number(NORMAL, 0), ip="192.0.2.5")  # the IP's second and last issue


async def test_a_refusal_by_the_destination_spends_no_prefix_or_range_budget(
    make_codes: MakeHarness,
) -> None:
    """X3, C6: a number still in its cooldown is refused without spending its prefix's or
    range's budget (on a Cluster the prefix's record is taken back)."""
    policy = pumping(prefix_per_hour=2, budgeted=parse_ranges(["86-170"]), range_per_hour=2)
    h = make_codes(dataclasses.replace(LOOSE, cooldown=60), pumping=policy)
    await h.issue(number(ATTACKED, 0))
    for _ in range(3):
        exc = await refused(h, number(ATTACKED, 0))
        assert exc.retry_after > 0
    assert h.metrics.rejected == [ISSUE_POLICY] * 3
    await h.issue(number(ATTACKED, 1))  # the prefix's and the range's second and last
    await refused(h, number(ATTACKED, 2))


async def test_a_burst_at_one_number_never_throttles_its_prefix(
    make_codes: MakeHarness,
) -> None:
    """X3: thirty simultaneous requests for one number send one code and leave the
    conversion watch (20 sent, none verified) untripped: the rest were refused by the
    number's cooldown before they could count for the prefix."""
    events = RecordingBlocks()
    h = make_codes(
        dataclasses.replace(LOOSE, cooldown=60),  # the number's own limit
        pumping=pumping(watch_min_sent=20, watch_min_ratio=0.2),
        block_events=events,
    )
    results = await asyncio.gather(
        *(h.issue(number(ATTACKED, 7), ip=f"198.51.100.{n}") for n in range(30)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if isinstance(r, str)) == 1
    assert events.blocks == []
    assert PREFIX_BLOCKED_POLICY not in h.metrics.rejected
    await h.issue(number(ATTACKED, 8))  # the prefix's other numbers still get codes


async def test_an_issue_that_sent_nothing_is_refunded_from_the_prefix(
    make_codes: MakeHarness,
) -> None:
    """Refunds: an unavailable queue takes the issue out of the prefix and range windows."""
    policy = pumping(prefix_per_hour=1, budgeted=parse_ranges(["86-170"]), range_per_hour=1)
    h, _ = harness(make_codes, policy)
    h.queue.unavailable = True
    with pytest.raises(Unavailable):
        await h.issue(number(ATTACKED, 0))
    h.queue.unavailable = False
    await h.issue(number(ATTACKED, 1))
    assert h.metrics.rejected == []


async def test_an_issue_that_may_have_gone_out_stays_counted(make_codes: MakeHarness) -> None:
    """Refunds: when it is unknown whether a message left, the prefix keeps the charge."""

    def broken(channel: str, purpose: str, code: str, ttl: int) -> tuple[str, str]:
        raise RuntimeError("template exploded")

    h = make_codes(LOOSE, pumping=pumping(prefix_per_hour=1), composer=broken)
    with pytest.raises(RuntimeError):
        await h.issue(number(ATTACKED, 0))
    ok = make_codes(LOOSE, pumping=pumping(prefix_per_hour=1))
    await refused(ok, number(ATTACKED, 1))


async def test_a_denied_range_looks_like_an_ordinary_limit(make_codes: MakeHarness) -> None:
    """X3: a denied number is refused as RateLimited, shaped exactly as a destination limit."""
    policy = pumping(denied=parse_ranges(["86-1700"]))
    h = make_codes(CodePolicy(per_ip_hour=1), pumping=policy)
    denied = await refused(h, number(ATTACKED, 1), ip="192.0.2.8")
    assert h.queue.messages == []
    assert await h.dump() == []  # the IP's charge was refunded, nothing recorded
    await h.issue(number(NORMAL, 1), ip="192.0.2.8")
    cooldown = await refused(h, number(NORMAL, 1), ip="192.0.2.9")
    assert caller_view(denied) == caller_view(cooldown)
    assert denied.policy == cooldown.policy == ISSUE_POLICY
    assert denied.retry_after > 0
    assert h.metrics.rejected == [RANGE_DENIED_POLICY, ISSUE_POLICY]


async def test_a_budgeted_range_is_shared_by_its_prefixes(make_codes: MakeHarness) -> None:
    """X3: every number of 86-170, whatever its 7-digit prefix, draws on one range budget."""
    h, _ = harness(make_codes, pumping(budgeted=parse_ranges(["86-170"]), range_per_hour=2))
    await h.issue(number("86-1700001", 1))
    await h.issue(number("86-1709999", 2))
    exc = await refused(h, number("86-1705555", 3))
    assert exc.policy == ISSUE_POLICY
    assert h.metrics.rejected == [RANGE_BUDGET_POLICY]
    await h.issue(number("86-1710000", 4))  # 171 is another range, here not budgeted
    h.clock.advance(HOUR)
    await h.issue(number("86-1705555", 3))


async def test_unsent_codes_to_unregistered_numbers_count_the_same(
    make_codes: MakeHarness,
) -> None:
    """B4: numbers no account holds spend the prefix budget exactly like registered ones."""

    async def only_even(channel: Channel, destination: str, purpose: Purpose) -> bool:
        return int(destination[-1]) % 2 == 0

    h, _ = harness(make_codes, pumping(prefix_per_hour=3), recipient_filter=only_even)
    for n in (1, 2, 3):
        await h.codes.issue(
            IssueCodeCommand(Channel.SMS, number(ATTACKED, n), Purpose.LOGIN), client_id="bff"
        )
    assert len(h.queue.messages) == 1
    assert len(h.queue.withheld) == 2
    with pytest.raises(RateLimited) as registered:
        await h.codes.issue(IssueCodeCommand(Channel.SMS, number(ATTACKED, 4), Purpose.LOGIN))
    with pytest.raises(RateLimited) as unregistered:
        await h.codes.issue(IssueCodeCommand(Channel.SMS, number(ATTACKED, 5), Purpose.LOGIN))
    assert caller_view(registered.value) == caller_view(unregistered.value)


async def test_the_watch_throttles_a_prefix_whose_codes_are_never_verified(
    make_codes: MakeHarness,
) -> None:
    """X3: after `min_sent` codes and too few verifications the prefix is blocked for a while."""
    h, events = harness(make_codes, pumping(watch_min_sent=5, block_seconds=12 * HOUR))
    for n in range(5):
        await h.issue(number(ATTACKED, n))
    exc = await refused(h, number(ATTACKED, 5))
    assert exc.policy == ISSUE_POLICY
    assert exc.retry_after == 12 * HOUR
    assert [(b.prefix, b.reason, b.sent, b.verified) for b in events.blocks] == [
        (ATTACKED, "conversion", 5, 0)
    ]
    assert h.metrics.rejected == [PREFIX_BLOCKED_POLICY]
    h.clock.advance(11 * HOUR)
    await refused(h, number(ATTACKED, 6))
    assert len(events.blocks) == 1  # a block is reported once
    h.clock.advance(HOUR + 1)
    await h.issue(number(ATTACKED, 6))


async def test_verifications_keep_a_prefix_open(make_codes: MakeHarness) -> None:
    """X3: ratio exactly at the threshold passes; one verification fewer would block."""
    h, events = harness(make_codes, pumping(watch_min_sent=5, watch_min_ratio=0.2))
    code = await h.issue(number(NORMAL, 0))
    await h.verify(code, number(NORMAL, 0))
    for n in range(1, 5):
        await h.issue(number(NORMAL, n))
    await h.issue(number(NORMAL, 5))  # 5 sent, 1 verified: 0.2 is not below 0.2
    # Six sent, one verified: 1 < 0.2 · 6, so the next request finds the prefix bad.
    await refused(h, number(NORMAL, 6))
    assert [b.verified for b in events.blocks] == [1]


async def test_only_a_successful_verification_counts(make_codes: MakeHarness) -> None:
    """X3: wrong guesses do not feed the watch (else an attacker could verify their way out)."""
    h, events = harness(make_codes, pumping(watch_min_sent=2, watch_min_ratio=0.5))
    code = await h.issue(number(ATTACKED, 0))
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(3):
        with pytest.raises(CodeInvalid):
            await h.verify(wrong, number(ATTACKED, 0))
    await h.issue(number(ATTACKED, 1))
    await refused(h, number(ATTACKED, 2))
    assert events.blocks[0].verified == 0


async def test_attack_on_one_prefix_leaves_a_normal_prefix_working(
    make_codes: MakeHarness,
) -> None:
    """Acceptance: spread requests with no verifications throttle that prefix only."""
    h, events = harness(make_codes, pumping(watch_min_sent=20, watch_min_ratio=0.2))
    attack_sent = normal_verified = 0
    for n in range(200):
        try:
            await h.issue(number(ATTACKED, n), ip=f"10.0.{n // 250}.{n % 250}")
            attack_sent += 1
        except RateLimited:
            pass
        code = await h.issue(number(NORMAL, n))
        await h.verify(code, number(NORMAL, n))
        normal_verified += 1
        h.clock.advance(5)
    assert attack_sent == 20
    assert normal_verified == 200
    assert [b.prefix for b in events.blocks] == [ATTACKED]


async def test_failed_receipts_feed_the_watch(make_codes: MakeHarness) -> None:
    """X3: a failed receipt counts as one more code sent and never verified."""
    policy = pumping(watch_min_sent=5, watch_min_ratio=0.2, failed_receipt_weight=1)
    h, _ = harness(make_codes, policy)
    watch = PrefixWatch(h.redis, h.clock, policy)
    code = await h.issue(number(ATTACKED, 0))
    await h.verify(code, number(ATTACKED, 0))
    await h.issue(number(ATTACKED, 1))
    await h.issue(number(ATTACKED, 2))
    await watch.delivery_failed(ATTACKED)
    await watch.delivery_failed(ATTACKED)  # 3 sent + 2 failed = 5; 1 verified = 0.2: open
    assert await watch.list_blocks() == []
    await watch.on_failed(ATTACKED)  # 6 weighted, 1 verified: blocked by this receipt
    [block] = await watch.list_blocks()
    assert (block.prefix, block.reason, block.sent, block.verified, block.failed) == (
        ATTACKED,
        "failed_receipts",
        3,
        1,
        3,
    )
    assert block.until == h.clock.now() + policy.block_seconds
    await refused(h, number(ATTACKED, 3))
    await h.issue(number(NORMAL, 3))


async def test_an_operator_lifts_a_block_and_its_counts(make_codes: MakeHarness) -> None:
    """X3: lift ends the block at once and forgets the counts, so the prefix starts afresh."""
    policy = pumping(watch_min_sent=3)
    h, _ = harness(make_codes, policy)
    watch = PrefixWatch(h.redis, h.clock, policy)
    for n in range(3):
        await h.issue(number(ATTACKED, n))
    await refused(h, number(ATTACKED, 3))
    assert [b.prefix for b in await watch.list_blocks()] == [ATTACKED]
    assert await watch.lift(NORMAL) is False
    assert await watch.lift(ATTACKED) is True
    assert await watch.lift(ATTACKED) is False
    assert await watch.list_blocks() == []
    for n in range(3, 6):
        await h.issue(number(ATTACKED, n))
    with pytest.raises(InvalidArgument):
        await watch.lift("+8617001230000")
    with pytest.raises(InvalidArgument):
        await watch.delivery_failed("not-a-prefix")
    await watch.delivery_failed("")  # a receipt without an E.164 number: ignored


async def test_redis_holds_prefixes_never_numbers(make_codes: MakeHarness) -> None:
    """I1: the pumping keys name the prefix (10,000 numbers), never the number or code."""
    h, _ = harness(
        make_codes, pumping(budgeted=parse_ranges(["86-170"])), random_digits=digits_from("482913")
    )
    code = await h.issue(number(ATTACKED, 4567))
    await h.verify(code, number(ATTACKED, 4567))
    everything = b"\n".join(await h.dump())
    assert b"17001234567" not in everything
    assert b"482913" not in everything
    keys = [k async for k in h.redis.scan_iter(match="xh:pump:*")]
    assert sorted(keys) == [
        b"xh:pump:{pump}:p:86-1700123:ok",
        b"xh:pump:{pump}:p:86-1700123:sent",
        b"xh:pump:{pump}:r:86-170:sent",
    ]


async def test_email_codes_are_not_counted_per_prefix(make_codes: MakeHarness) -> None:
    """X3 concerns SMS: an email code touches no pumping key."""
    h, _ = harness(make_codes, pumping(prefix_per_hour=0))
    code = await h.issue("zhangsan@example.cn", Purpose.BIND_EMAIL, Channel.EMAIL)
    await h.verify(code, "zhangsan@example.cn", Purpose.BIND_EMAIL, Channel.EMAIL)
    assert [k async for k in h.redis.scan_iter(match="xh:pump:*")] == []
