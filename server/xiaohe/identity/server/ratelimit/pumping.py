"""SMS-pumping defence in Redis: prefix and range budgets, the conversion watch, prefix blocks.

On one Redis server the checks run inside the code store's own scripts
(`codes/store.py` splices the Lua below into its issue and verify scripts), so
an issue still costs one script call and the budgets hold under any
concurrency, across all processes: the check and the record happen in one
atomic step (SECURITY.md X3, C6). On a Redis Cluster a script may touch one
slot only, so there the same Lua runs as scripts of their own (see
`PUMP_ISSUE_LUA` and the code store's docstring).

Keys (a prefix or a range names 10,000 numbers or more, never one person). All
of them carry the one hash tag `{pump}`, so every pumping script stays in one
Cluster slot, whatever prefixes and ranges it reads:

- `xh:pump:{pump}:p:<prefix>:sent`  sliding window of codes issued to the prefix
  (member: the code id, so a refund removes exactly its own entry). It serves
  the prefix budget (hour, day) and the watch's "sent" count.
- `xh:pump:{pump}:p:<prefix>:ok`    codes verified, within the watch window.
- `xh:pump:{pump}:p:<prefix>:fail`  failed delivery receipts, within the watch window.
- `xh:pump:{pump}:p:<prefix>:block` hash of a block in force: reason, at, until and
  the counts that tripped it; Redis drops it after `until` (plus grace).
- `xh:pump:{pump}:blocks`           sorted set prefix → until, for operators' lists.
- `xh:pump:{pump}:r:<range>:sent`   sliding window of codes issued into a budgeted range.

One slot for all of them costs nothing that matters: they are written once per
SMS code issued (hundreds a second at most), which one Cluster master serves
many times over, and the destination's own keys, the busy ones, still spread.

The conversion watch. Over the last `window` ms, with S codes sent, V codes
verified and F failed receipts, a prefix is throttled when
`S + w·F ≥ min_sent` and `V < ratio · (S + w·F)`: a failed receipt counts as
`w` more codes sent and never verified (the message itself was already counted
once when issued). The watch is evaluated where new evidence arrives and the
decision matters: before recording an issue (so the request that finds the ratio
bad is refused too) and on each failed receipt. A block lasts `block` ms;
refusals record nothing, so a throttled prefix gathers no counts, and the
window has long passed when a default 12-hour block ends.

The prefix's keys are read together with the destination's (`{d:<tag>}`): on
one Redis server in the same script, on a Cluster in two (docs/decisions.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from xiaohe.identity.server.errors import RateLimited
from xiaohe.identity.server.ratelimit.prefixes import PrefixScope, PumpingPolicy

log = logging.getLogger("xiaohe.identity.pumping")

PREFIX_BUDGET_POLICY = "code.issue.prefix"
RANGE_BUDGET_POLICY = "code.issue.range"
RANGE_DENIED_POLICY = "code.issue.range.denied"
PREFIX_BLOCKED_POLICY = "code.issue.prefix.blocked"
"""Internal names of the pumping refusals: metrics use them, callers never see them."""

REASON_CONVERSION = "conversion"
REASON_FAILED_RECEIPTS = "failed_receipts"

DENIED_RETRY_SECONDS = 86400.0
"""The retry-after of a denied range: as a day window would say, and no hint it is final."""

PUMPING_TAG = "{pump}"
"""The hash tag of every pumping key: one Cluster slot for all of them."""

BLOCK_INDEX_KEY = f"xh:pump:{PUMPING_TAG}:blocks"

_DAY_MS = 86_400_000


def prefix_key(prefix: str, part: str) -> str:
    """One of a prefix's keys: `sent`, `ok`, `fail` or `block`."""
    return f"xh:pump:{PUMPING_TAG}:p:{prefix}:{part}"


def range_key(number_range: str) -> str:
    """The issue window of a budgeted range."""
    return f"xh:pump:{PUMPING_TAG}:r:{number_range}:sent"


def watch_keys(prefix: str) -> list[str]:
    """sent, ok, fail, block and the block index: the keys every watch step reads."""
    return [*(prefix_key(prefix, p) for p in ("sent", "ok", "fail", "block")), BLOCK_INDEX_KEY]


def watch_args(policy: PumpingPolicy, prefix: str) -> list[str | int]:
    """The policy as the Lua `pp_args` reads it (10 values, in order)."""
    return [
        policy.prefix_per_hour,
        policy.prefix_per_day,
        policy.range_per_hour,
        policy.range_per_day,
        policy.watch_window * 1000,
        policy.watch_min_sent,
        repr(float(policy.watch_min_ratio)),
        policy.block_seconds * 1000,
        policy.failed_receipt_weight,
        prefix,
    ]


# Lua helpers, spliced after `ratelimit.scripts.SLIDING_WINDOW_LUA`. `K` is the
# index of the first pumping key (sent, ok, fail, block, index, then range
# windows up to #KEYS), `A` the index of the first `watch_args` value.
PUMPING_LUA = r"""
local function pp_args(A)
  return {
    prefix_hour = tonumber(ARGV[A]), prefix_day = tonumber(ARGV[A + 1]),
    range_hour = tonumber(ARGV[A + 2]), range_day = tonumber(ARGV[A + 3]),
    window = tonumber(ARGV[A + 4]), min_sent = tonumber(ARGV[A + 5]),
    ratio = tonumber(ARGV[A + 6]), block = tonumber(ARGV[A + 7]),
    weight = tonumber(ARGV[A + 8]), prefix = ARGV[A + 9],
  }
end

local function pp_keys(K)
  return {sent = KEYS[K], ok = KEYS[K + 1], fail = KEYS[K + 2], blk = KEYS[K + 3],
    idx = KEYS[K + 4], first_range = K + 5}
end

-- ms until the prefix's block ends, 0 if none is in force.
local function pp_blocked(k, now)
  local untl = redis.call('HGET', k.blk, 'until')
  if untl and tonumber(untl) > now then
    return tonumber(untl) - now
  end
  return 0
end

-- Codes sent, codes verified and failed receipts in the watch window.
local function pp_counts(p, k, now)
  sw_trim(k.ok, now, p.window)
  sw_trim(k.fail, now, p.window)
  local sent = redis.call('ZCOUNT', k.sent, '(' .. sw_ms(now - p.window), '+inf')
  return sent, redis.call('ZCARD', k.ok), redis.call('ZCARD', k.fail)
end

local function pp_trips(p, sent, ok, failed)
  local volume = sent + p.weight * failed
  return volume >= p.min_sent and ok < p.ratio * volume
end

local function pp_block(p, k, now, reason, sent, ok, failed, grace)
  local untl = now + p.block
  redis.call('DEL', k.blk)
  redis.call('HSET', k.blk, 'reason', reason, 'at', sw_ms(now), 'until', sw_ms(untl),
    'sent', sent, 'verified', ok, 'failed', failed)
  redis.call('PEXPIRE', k.blk, sw_ms(p.block + grace))
  redis.call('ZREMRANGEBYSCORE', k.idx, '-inf', '(' .. sw_ms(now))
  redis.call('ZADD', k.idx, sw_ms(untl), p.prefix)
end

local function pp_longest(p)
  return math.max(86400000, p.window)
end

-- Before an issue: nil if it may go, else {0, retry ms, cause} where cause is
-- 2 prefix budget, 3 range budget, 4 prefix blocked, 5 blocked by this very
-- check (then also sent, verified, failed).
local function pp_issue_check(K, A, now, grace)
  local p, k = pp_args(A), pp_keys(K)
  local wait = pp_blocked(k, now)
  if wait > 0 then
    return {0, wait, 4}
  end
  for i = k.first_range, #KEYS do
    sw_trim(KEYS[i], now, 86400000)
    local r = math.max(sw_retry(KEYS[i], now, p.range_hour, 3600000),
      sw_retry(KEYS[i], now, p.range_day, 86400000))
    if r > 0 then
      return {0, r, 3}
    end
  end
  sw_trim(k.sent, now, pp_longest(p))
  local r = math.max(sw_retry(k.sent, now, p.prefix_hour, 3600000),
    sw_retry(k.sent, now, p.prefix_day, 86400000))
  if r > 0 then
    return {0, r, 2}
  end
  local sent, ok, failed = pp_counts(p, k, now)
  if pp_trips(p, sent, ok, failed) then
    pp_block(p, k, now, 'conversion', sent, ok, failed, grace)
    return {0, p.block, 5, sent, ok, failed}
  end
  return nil
end

-- Record an issue (member: the code id) in the prefix and range windows.
local function pp_issue_record(K, A, now, member, grace)
  local p, k = pp_args(A), pp_keys(K)
  for i = k.first_range, #KEYS do
    sw_record(KEYS[i], now, member, 86400000, grace)
  end
  sw_record(k.sent, now, member, pp_longest(p), grace)
end
"""

# KEYS: watch_keys(prefix). ARGV: now, grace, failure member, then watch_args.
# Returns {0} or, when this receipt tripped the watch, {1, sent, verified, failed}.
FAILED_RECEIPT_LUA = r"""
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local p, k = pp_args(4), pp_keys(1)
sw_record(k.fail, now, ARGV[3], p.window, grace)
if pp_blocked(k, now) > 0 then
  return {0}
end
sw_trim(k.sent, now, pp_longest(p))
local sent, ok, failed = pp_counts(p, k, now)
if pp_trips(p, sent, ok, failed) then
  pp_block(p, k, now, 'failed_receipts', sent, ok, failed, grace)
  return {1, sent, ok, failed}
end
return {0}
"""

# KEYS: watch_keys(prefix). ARGV: now, prefix.
# Lifts the block and forgets the prefix's counts; 1 if a block was in force.
LIFT_LUA = r"""
local untl = redis.call('HGET', KEYS[4], 'until')
local in_force = untl and tonumber(untl) > tonumber(ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[2])
if in_force then
  return 1
end
return 0
"""


@dataclass(frozen=True)
class PrefixBlock:
    """A throttled prefix: why, since and until when (seconds), and the counts that tripped it."""

    prefix: str
    reason: str
    blocked_at: float
    until: float
    sent: int
    verified: int
    failed: int = 0


@dataclass(frozen=True)
class PrefixCheck:
    """What the issue script needs about one SMS destination: its scope and the policy."""

    scope: PrefixScope
    policy: PumpingPolicy

    def keys(self) -> list[str]:
        """The pumping keys of the issue script, in `pp_keys` order."""
        return [*watch_keys(self.scope.prefix), *(range_key(r) for r in self.scope.ranges)]

    def refund_keys(self) -> list[str]:
        """The windows an issue was recorded in, for a refund."""
        return [prefix_key(self.scope.prefix, "sent"), *(range_key(r) for r in self.scope.ranges)]


class PumpingLimited(RateLimited):
    """A pumping refusal, shown to the caller exactly as the limit it imitates.

    `policy` (what the caller sees in QuotaFailure and the message) is the
    ordinary per-destination policy; `cause` (one of the `*_POLICY` names above)
    is for metrics only. `new_block` is set when this request tripped the watch.
    """

    def __init__(
        self,
        shown_policy: str,
        cause: str,
        retry_after: float,
        new_block: PrefixBlock | None = None,
    ) -> None:
        super().__init__(shown_policy, retry_after)
        self.cause = cause
        self.new_block = new_block


class PumpingMetrics(Protocol):
    """Counters of the defence; labels are reasons, never a prefix or a number."""

    def prefix_blocked(self, reason: str) -> None:
        """The watch throttled a prefix."""
        ...

    def prefix_block_lifted(self) -> None:
        """An operator lifted a block that was in force."""
        ...

    def failed_receipt_watched(self) -> None:
        """A failed delivery receipt reached the watch."""
        ...


class BlockReporter:
    """Says that a prefix was throttled: one structured log event and a metric."""

    def __init__(self, metrics: PumpingMetrics | None = None) -> None:
        self._metrics = metrics

    def prefix_blocked(self, block: PrefixBlock) -> None:
        """Log (the prefix and counts only) and count a new block."""
        log.warning(
            "number prefix throttled by the SMS-pumping watch",
            extra={
                "event": "pumping.prefix_blocked",
                "prefix": block.prefix,
                "reason": block.reason,
                "sent": block.sent,
                "verified": block.verified,
                "failed": block.failed,
                "until": block.until,
            },
        )
        if self._metrics is not None:
            self._metrics.prefix_blocked(block.reason)


def block_from_counts(
    prefix: str, reason: str, now: float, policy: PumpingPolicy, counts: list[object]
) -> PrefixBlock:
    """The block a script just wrote, from its reply's counts (sent, verified, failed)."""
    sent, verified, failed = (int(str(c)) for c in counts[:3])
    return PrefixBlock(
        prefix=prefix,
        reason=reason,
        blocked_at=now,
        until=now + policy.block_seconds,
        sent=sent,
        verified=verified,
        failed=failed,
    )


__all__ = [
    "BLOCK_INDEX_KEY",
    "DENIED_RETRY_SECONDS",
    "FAILED_RECEIPT_LUA",
    "LIFT_LUA",
    "PREFIX_BLOCKED_POLICY",
    "PREFIX_BUDGET_POLICY",
    "PUMPING_LUA",
    "RANGE_BUDGET_POLICY",
    "RANGE_DENIED_POLICY",
    "REASON_CONVERSION",
    "REASON_FAILED_RECEIPTS",
    "BlockReporter",
    "PrefixBlock",
    "PrefixCheck",
    "PumpingLimited",
    "PumpingMetrics",
    "block_from_counts",
    "prefix_key",
    "range_key",
    "watch_args",
    "watch_keys",
]
