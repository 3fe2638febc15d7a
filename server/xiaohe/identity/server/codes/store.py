"""Where codes, their limits and tickets live: Redis, one Lua script per check-and-update.

Keys never contain a raw destination. Every key of a destination carries the
hash tag `{d:<tag>}`, where the tag is a keyed pseudonym of (channel,
destination) computed by the service, so each script touches exactly one Redis
Cluster slot:

- `xh:code:{d:<tag>}:<purpose>`  hash: mac (HMAC of the code), tries, exp, id, iat
- `xh:fail:{d:<tag>}`            sliding window of failed verifications
- `xh:rl:{d:<tag>}:issue`        sliding window of issued codes (cooldown, hour, day)
- `xh:ticket:{d:<tag>}:<sha256>` hash: ch, pu, dx, exp, iat, miss

A ticket must give its consumer the normalised destination back (an SMS-login
ticket alone must say which phone), but Redis persists what it holds (the
append-only file, RDB snapshots, replicas), and a raw phone or email must never
reach a file (SECURITY.md I1). So `dx` is the destination sealed by the service
under a key derived from the ticket's secret part (see
`tickets.seal_destination`): this module only stores and returns that opaque
text. Whoever reads Redis has the SHA-256 of the ticket, not the ticket, and so
cannot open it. Redis drops a ticket one minute after its logical expiry
(`TICKET_GC_GRACE_MS`); codes and windows hold no personal data at all. Times
are integer milliseconds from the caller's clock; logical expiry is checked
against it, and `PEXPIRE` only collects garbage (see
`ratelimit.scripts.GC_GRACE_MS`).

On one Redis server an SMS destination's issue and verify scripts also carry
its number prefix's keys (`ratelimit/pumping.py`): the prefix and range budgets
and the conversion watch are checked and recorded in the same script as the
destination's own windows, so they add no round trip, and a refund takes the
issue back out of every window it was recorded in. On a Redis Cluster the
prefix's part runs as a script of its own after the destination's
(`RedisCodeStore`).

The failure window counts only wrong guesses compared against a live code. A
verification that finds no live code (never issued, expired, replaced, used,
used up) spends nothing: anyone may send those without access to the phone, so
counting them would let a stranger lock the owner out of SMS login (B2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import NoReturn, Protocol

from xiaohe.identity.server.errors import RateLimited
from xiaohe.identity.server.ratelimit.pumping import (
    PREFIX_BLOCKED_POLICY,
    PREFIX_BUDGET_POLICY,
    PUMPING_LUA,
    RANGE_BUDGET_POLICY,
    REASON_CONVERSION,
    PrefixCheck,
    PumpingLimited,
    block_from_counts,
    prefix_key,
    watch_args,
)
from xiaohe.identity.server.ratelimit.scripts import (
    CONSTANT_TIME_EQUAL_LUA,
    GC_GRACE_MS,
    SLIDING_WINDOW_LUA,
)
from xiaohe.identity.server.storage.redis import RedisClient, is_cluster, run_script, text

log = logging.getLogger(__name__)

ISSUE_POLICY = "code.issue.destination"
VERIFY_POLICY = "code.verify.destination"

_HOUR_MS = 3_600_000

# A ticket holds personal data (sealed), so Redis drops it soon after its logical
# expiry: one minute covers any skew between the servers' clocks and Redis.
TICKET_GC_GRACE_MS = 60_000


def code_key(tag: str, purpose: str) -> str:
    """The hash holding the current code of (destination, purpose)."""
    return f"xh:code:{{d:{tag}}}:{purpose}"


def fail_key(tag: str) -> str:
    """The destination's failure budget (a sliding window)."""
    return f"xh:fail:{{d:{tag}}}"


def issue_key(tag: str) -> str:
    """The destination's issue windows (cooldown, per hour, per day)."""
    return f"xh:rl:{{d:{tag}}}:issue"


def ticket_key(tag: str, ticket_hash: str) -> str:
    """The hash of one ticket, named by the SHA-256 of the ticket string."""
    return f"xh:ticket:{{d:{tag}}}:{ticket_hash}"


# KEYS: issue window set, code hash, then (SMS) the pumping keys of `PrefixCheck.keys`.
# ARGV: now, cooldown, hour limit, day limit, grace, mac, code id, exp, then (SMS)
#       the 10 `pumping.watch_args`.
# Returns {1}, {0, retry_ms} (the destination's windows) or {0, retry_ms, cause, ...}
# (a pumping refusal, see `pp_issue_check`).
_ISSUE_LUA = (
    SLIDING_WINDOW_LUA
    + PUMPING_LUA
    + r"""
local issues, code = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local cooldown = tonumber(ARGV[2])
local grace = tonumber(ARGV[5])
local pumping = #KEYS > 2
sw_trim(issues, now, 86400000)
local last = redis.call('ZREVRANGE', issues, 0, 0, 'WITHSCORES')
if last[2] ~= nil then
  local wait = tonumber(last[2]) + cooldown - now
  if wait > 0 then
    return {0, wait}
  end
end
local retry = sw_retry(issues, now, tonumber(ARGV[3]), 3600000)
local day = sw_retry(issues, now, tonumber(ARGV[4]), 86400000)
if day > retry then
  retry = day
end
if retry > 0 then
  return {0, retry}
end
if pumping then
  local refused = pp_issue_check(3, 9, now, grace)
  if refused then
    return refused
  end
  pp_issue_record(3, 9, now, ARGV[7], grace)
end
sw_record(issues, now, ARGV[7], 86400000, grace)
redis.call('DEL', code)
redis.call('HSET', code, 'mac', ARGV[6], 'tries', 0, 'exp', ARGV[8], 'id', ARGV[7], 'iat', ARGV[1])
redis.call('PEXPIRE', code, sw_ms(tonumber(ARGV[8]) - now + grace))
return {1}
"""
)

# KEYS: issue window set, code hash, then (SMS) the prefix and range windows.
# ARGV: code id, refund ('1' or '0').
# Undoes one issue whose message did not go out: the code if it is still the
# current one, and (when refunding) its entry in every window it was recorded in.
_CANCEL_LUA = r"""
if redis.call('HGET', KEYS[2], 'id') == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
if ARGV[2] == '1' then
  for i = 1, #KEYS do
    if i ~= 2 then
      redis.call('ZREM', KEYS[i], ARGV[1])
    end
  end
end
return 1
"""

# KEYS: code hash, failure window set, ticket hash, then (SMS) the prefix's verified set.
# ARGV: now, mac, max attempts, failure limit, failure window, failure member, grace,
#       ticket exp, channel, purpose, sealed destination, ticket grace, then (SMS)
#       the conversion watch's window.
# Returns {0} ok (ticket stored), {1, retry_ms} failure budget spent,
#         {2} no live code, {3} attempts used up, {4} wrong code.
# Only {4}, a guess compared against a live code, is recorded in the failure
# window: {2} and {3} compare nothing, and anyone can provoke them.
_VERIFY_LUA = (
    SLIDING_WINDOW_LUA
    + CONSTANT_TIME_EQUAL_LUA
    + r"""
local code, fails, ticket = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
local max_attempts = tonumber(ARGV[3])
local fail_window = tonumber(ARGV[5])
local grace = tonumber(ARGV[7])

sw_trim(fails, now, fail_window)
local retry = sw_retry(fails, now, tonumber(ARGV[4]), fail_window)
if retry > 0 then
  return {1, retry}
end

local stored = redis.call('HMGET', code, 'mac', 'exp', 'id')
if not stored[1] or not stored[2] or tonumber(stored[2]) <= now then
  redis.call('DEL', code)
  return {2}
end
-- Count the attempt before comparing: concurrent guesses each spend one try.
local tries = redis.call('HINCRBY', code, 'tries', 1)
if tries > max_attempts then
  redis.call('DEL', code)
  return {3}
end
if not ct_equal(stored[1], ARGV[2]) then
  if tries >= max_attempts then
    redis.call('DEL', code)
  end
  sw_record(fails, now, ARGV[6], fail_window, grace)
  return {4}
end
redis.call('DEL', code)
if KEYS[4] then
  -- The conversion watch: one more code of this prefix was verified.
  local window = tonumber(ARGV[13])
  sw_trim(KEYS[4], now, window)
  sw_record(KEYS[4], now, stored[3] or ARGV[6], window, grace)
end
redis.call('HSET', ticket, 'ch', ARGV[9], 'pu', ARGV[10], 'dx', ARGV[11],
  'exp', ARGV[8], 'iat', ARGV[1], 'miss', 0)
redis.call('PEXPIRE', ticket, sw_ms(tonumber(ARGV[8]) - now + tonumber(ARGV[12])))
return {0, stored[3] or ARGV[6]}
"""
)

# On a Redis Cluster the pumping keys (`{pump}`) and the destination's (`{d:<tag>}`)
# live in different slots, so the issue and verify scripts run without them and
# these three do the pumping part on their own (see `RedisCodeStore`).

# KEYS: `PrefixCheck.keys`. ARGV: now, grace, code id, then the 10 `pumping.watch_args`.
# Returns {1} (recorded) or a pumping refusal as the issue script returns it.
_PUMP_ISSUE_LUA = (
    SLIDING_WINDOW_LUA
    + PUMPING_LUA
    + r"""
local now, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local refused = pp_issue_check(1, 4, now, grace)
if refused then
  return refused
end
pp_issue_record(1, 4, now, ARGV[3], grace)
return {1}
"""
)

# KEYS: `PrefixCheck.refund_keys`. ARGV: code id. Takes one issue back out of the windows.
_PUMP_REFUND_LUA = r"""
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return 1
"""

# KEYS[1]: the prefix's verified set. ARGV: now, watch window, code id, grace.
_PUMP_VERIFIED_LUA = (
    SLIDING_WINDOW_LUA
    + r"""
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
sw_trim(KEYS[1], now, window)
sw_record(KEYS[1], now, ARGV[3], window, tonumber(ARGV[4]))
return 1
"""
)

# KEYS: ticket hash. ARGV: now, purpose (or several, comma-separated), channel ('' = any),
# destination matches ('1'/'0'),
# max misses, 6 '1' to keep a matching ticket (a check before the flow consumes it).
# Returns {1, channel, purpose, sealed destination, iat} and deletes the ticket (unless
# kept), or {0}.
# A presentation for another purpose/channel/destination does not consume the
# ticket, but after `max misses` of them it is deleted.
_CONSUME_LUA = r"""
local ticket = KEYS[1]
local now = tonumber(ARGV[1])
local t = redis.call('HMGET', ticket, 'ch', 'pu', 'dx', 'exp', 'iat')
if not t[1] or not t[2] or not t[3] or not t[4] then
  return {0}
end
if tonumber(t[4]) <= now then
  redis.call('DEL', ticket)
  return {0}
end
local wrong_channel = ARGV[3] ~= '' and t[1] ~= ARGV[3]
local wrong_destination = ARGV[4] ~= '1'
local wrong_purpose = string.find(',' .. ARGV[2] .. ',', ',' .. t[2] .. ',', 1, true) == nil
if wrong_purpose or wrong_channel or wrong_destination then
  local misses = redis.call('HINCRBY', ticket, 'miss', 1)
  if misses >= tonumber(ARGV[5]) then
    redis.call('DEL', ticket)
  end
  return {0}
end
if ARGV[6] ~= '1' then
  redis.call('DEL', ticket)
end
return {1, t[1], t[2], t[3], t[5] or ARGV[1]}
"""


# KEYS[1] the ticket hash. ARGV: now, channel, purpose, sealed destination, exp, grace.
# Stores a ticket that no code verification produced (a grant to an identified account).
_GRANT_LUA = r"""
redis.call('HSET', KEYS[1], 'ch', ARGV[2], 'pu', ARGV[3], 'dx', ARGV[4],
  'exp', ARGV[5], 'iat', ARGV[1], 'miss', 0)
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', tonumber(ARGV[5]) - tonumber(ARGV[1])
  + tonumber(ARGV[6])))
return 1
"""


class VerifyOutcome(Enum):
    """How a verification attempt ended; only OK yields a ticket, the rest look alike to callers."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    MISSING = "missing"
    EXHAUSTED = "exhausted"
    MISMATCH = "mismatch"


_NEW_BLOCK = 5
_PUMPING_CAUSES = {
    2: PREFIX_BUDGET_POLICY,
    3: RANGE_BUDGET_POLICY,
    4: PREFIX_BLOCKED_POLICY,
    _NEW_BLOCK: PREFIX_BLOCKED_POLICY,
}

_VERIFY_OUTCOMES = {
    0: VerifyOutcome.OK,
    1: VerifyOutcome.RATE_LIMITED,
    2: VerifyOutcome.MISSING,
    3: VerifyOutcome.EXHAUSTED,
    4: VerifyOutcome.MISMATCH,
}


@dataclass(frozen=True)
class VerifyResult:
    """The outcome, and for RATE_LIMITED the seconds until the budget has room."""

    outcome: VerifyOutcome
    retry_after: float = 0.0


@dataclass(frozen=True)
class StoredTicket:
    """The fields of a consumed ticket, as stored (the destination still sealed)."""

    channel: str
    purpose: str
    sealed_destination: str = field(repr=False)
    issued_at_ms: int


@dataclass(frozen=True)
class NewCode:
    """A code to store: its HMAC, random id and logical expiry."""

    mac: str = field(repr=False)
    code_id: str
    expires_at_ms: int


@dataclass(frozen=True)
class TicketToStore:
    """What a successful verification writes as a ticket; the destination arrives sealed."""

    ticket_hash: str
    channel: str
    purpose: str
    sealed_destination: str = field(repr=False)
    expires_at_ms: int


class CodeStore(Protocol):
    """Storage the code service needs; every method is one atomic step."""

    async def issue(
        self,
        tag: str,
        purpose: str,
        code: NewCode,
        *,
        now_ms: int,
        cooldown_ms: int,
        per_hour: int,
        per_day: int,
        prefix: PrefixCheck | None = None,
    ) -> None:
        """Check cooldown and windows (and the prefix's, if given), record the issue, replace
        the code; or raise RateLimited (PumpingLimited for a prefix or range refusal)."""
        ...

    async def cancel_issue(
        self,
        tag: str,
        purpose: str,
        code_id: str,
        *,
        refund: bool,
        prefix: PrefixCheck | None = None,
    ) -> None:
        """Delete an undelivered code (if still current); with `refund`, uncount its issue."""
        ...

    async def verify(
        self,
        tag: str,
        purpose: str,
        mac: str,
        ticket: TicketToStore,
        *,
        now_ms: int,
        max_attempts: int,
        failure_limit: int,
        failure_member: str,
        prefix: PrefixCheck | None = None,
    ) -> VerifyResult:
        """Compare and consume the code (wrong guesses spend budget); on success store a ticket
        (and count a verification for the prefix, if given)."""
        ...


class TicketStore(Protocol):
    """Storage the ticket service needs."""

    async def store_ticket(self, tag: str, ticket: TicketToStore, *, now_ms: int) -> None:
        """Store a ticket that no verification produced (a grant)."""
        ...

    async def consume_ticket(
        self,
        tag: str,
        ticket_hash: str,
        *,
        now_ms: int,
        purpose: str,
        channel: str,
        destination_matches: bool,
        max_misses: int,
        keep: bool = False,
    ) -> StoredTicket | None:
        """Delete (unless `keep`) and return a live ticket if it matches; None otherwise (a
        mismatch is counted)."""
        ...


class RedisCodeStore:
    """CodeStore and TicketStore on Redis (standalone or Cluster: one slot per script).

    On one Redis server an SMS issue checks and records the destination's windows
    and its prefix's budgets in one script, atomically. On a Redis Cluster those
    keys live in two slots, so the destination's script goes first (cooldown,
    windows, replace the code), then the prefix's (check and record,
    `_PUMP_ISSUE_LUA`); when the prefix refuses, the destination's issue is undone.
    Each script is atomic on its own keys, and only a request the number's own
    limits let through reaches the prefix's counts, so a burst at one number cannot
    trip the conversion watch. What differs from one server: a prefix refusal also
    deletes the number's previous code (the new one had replaced it), and a
    verification's count for the watch is written after its ticket, so a failure
    between the two loses that count (logged; the watch then errs towards a block).
    """

    async def store_ticket(self, tag: str, ticket: TicketToStore, *, now_ms: int) -> None:
        """Store a ticket that no verification produced (a grant); it lives until it expires."""
        await run_script(
            self._grant,
            [ticket_key(tag, ticket.ticket_hash)],
            [
                now_ms,
                ticket.channel,
                ticket.purpose,
                ticket.sealed_destination,
                ticket.expires_at_ms,
                TICKET_GC_GRACE_MS,
            ],
        )

    def __init__(self, redis: RedisClient, *, one_slot_per_script: bool | None = None) -> None:
        """`one_slot_per_script` defaults to whether `redis` is a Redis Cluster client."""
        self._split = is_cluster(redis) if one_slot_per_script is None else one_slot_per_script
        self._issue = redis.register_script(_ISSUE_LUA)
        self._cancel = redis.register_script(_CANCEL_LUA)
        self._verify = redis.register_script(_VERIFY_LUA)
        self._consume = redis.register_script(_CONSUME_LUA)
        self._grant = redis.register_script(_GRANT_LUA)
        self._pump_issue = redis.register_script(_PUMP_ISSUE_LUA)
        self._pump_refund = redis.register_script(_PUMP_REFUND_LUA)
        self._pump_verified = redis.register_script(_PUMP_VERIFIED_LUA)

    async def issue(
        self,
        tag: str,
        purpose: str,
        code: NewCode,
        *,
        now_ms: int,
        cooldown_ms: int,
        per_hour: int,
        per_day: int,
        prefix: PrefixCheck | None = None,
    ) -> None:
        """Check cooldown and windows (and the prefix's, if given), record the issue, replace
        the code; or raise RateLimited (PumpingLimited for a prefix or range refusal)."""
        keys = [issue_key(tag), code_key(tag, purpose)]
        args: list[str | int] = [
            now_ms,
            cooldown_ms,
            per_hour,
            per_day,
            GC_GRACE_MS,
            code.mac,
            code.code_id,
            code.expires_at_ms,
        ]
        if prefix is not None and self._split:
            await self._issue_in_two_slots(keys, args, prefix, code.code_id, now_ms)
            return
        if prefix is not None:
            keys += prefix.keys()
            args += watch_args(prefix.policy, prefix.scope.prefix)
        reply = await run_script(self._issue, keys, args)
        if int(reply[0]) == 1:
            return
        self._raise_refusal(reply, prefix, now_ms)

    async def _issue_in_two_slots(
        self,
        keys: list[str],
        args: list[str | int],
        prefix: PrefixCheck,
        code_id: str,
        now_ms: int,
    ) -> None:
        """The destination's script, then the prefix's; the destination's issue undone
        (code and windows) if the prefix refuses or its script cannot run.

        The destination goes first so that only a request its own cooldown and windows
        let through ever reaches the prefix's counts: concurrent requests for one number
        can never add up in the conversion watch and throttle a prefix between a record
        and its refund.
        """
        reply = await run_script(self._issue, keys, args)
        if int(reply[0]) != 1:
            self._raise_refusal(reply, None, now_ms)
        try:
            pumping = await run_script(
                self._pump_issue,
                prefix.keys(),
                [now_ms, GC_GRACE_MS, code_id, *watch_args(prefix.policy, prefix.scope.prefix)],
            )
        except BaseException:
            await self._undo_destination(keys, code_id)
            raise
        if int(pumping[0]) != 1:
            await self._undo_destination(keys, code_id)
            self._raise_refusal(pumping, prefix, now_ms)

    async def _undo_destination(self, keys: list[str], code_id: str) -> None:
        """Delete the code just stored and take its issue out of the destination's windows."""
        try:
            await run_script(self._cancel, keys[:2], [code_id, "1"])
        except Exception:  # the code expires by itself; the window entry ages out
            log.warning("could not undo an issue its number prefix refused")

    @staticmethod
    def _raise_refusal(reply: list[object], prefix: PrefixCheck | None, now_ms: int) -> NoReturn:
        """RateLimited for a refusal by the destination's windows, PumpingLimited for the
        prefix's or a range's."""
        retry = int(str(reply[1])) / 1000
        if len(reply) < 3 or prefix is None:
            raise RateLimited(ISSUE_POLICY, retry)
        cause = int(str(reply[2]))
        new_block = None
        if cause == _NEW_BLOCK:
            new_block = block_from_counts(
                prefix.scope.prefix, REASON_CONVERSION, now_ms / 1000, prefix.policy, reply[3:]
            )
        raise PumpingLimited(ISSUE_POLICY, _PUMPING_CAUSES[cause], retry, new_block)

    async def cancel_issue(
        self,
        tag: str,
        purpose: str,
        code_id: str,
        *,
        refund: bool,
        prefix: PrefixCheck | None = None,
    ) -> None:
        """Delete an undelivered code (if still current); with `refund`, uncount its issue."""
        keys = [issue_key(tag), code_key(tag, purpose)]
        if prefix is not None and not self._split:
            keys += prefix.refund_keys()
        await run_script(self._cancel, keys, [code_id, "1" if refund else "0"])
        if prefix is not None and self._split and refund:
            await run_script(self._pump_refund, prefix.refund_keys(), [code_id])

    async def verify(
        self,
        tag: str,
        purpose: str,
        mac: str,
        ticket: TicketToStore,
        *,
        now_ms: int,
        max_attempts: int,
        failure_limit: int,
        failure_member: str,
        prefix: PrefixCheck | None = None,
    ) -> VerifyResult:
        """Compare and consume the code (wrong guesses spend budget); on success store a ticket
        (and count a verification for the prefix, if given)."""
        keys = [code_key(tag, purpose), fail_key(tag), ticket_key(tag, ticket.ticket_hash)]
        args: list[str | int] = [
            now_ms,
            mac,
            max_attempts,
            failure_limit,
            _HOUR_MS,
            failure_member,
            GC_GRACE_MS,
            ticket.expires_at_ms,
            ticket.channel,
            ticket.purpose,
            ticket.sealed_destination,
            TICKET_GC_GRACE_MS,
        ]
        if prefix is not None and not self._split:
            keys.append(prefix_key(prefix.scope.prefix, "ok"))
            args.append(prefix.policy.watch_window * 1000)
        reply = await run_script(self._verify, keys, args)
        outcome = _VERIFY_OUTCOMES[int(reply[0])]
        if outcome is VerifyOutcome.RATE_LIMITED:
            return VerifyResult(outcome, int(reply[1]) / 1000)
        if outcome is VerifyOutcome.OK and prefix is not None and self._split:
            await self._count_verified(prefix, text(reply[1]), now_ms)
        return VerifyResult(outcome)

    async def _count_verified(self, prefix: PrefixCheck, code_id: str, now_ms: int) -> None:
        """Count a verification for the prefix's watch; the ticket exists already, so a
        failure here is logged, never raised (the caller must get its ticket)."""
        try:
            await run_script(
                self._pump_verified,
                [prefix_key(prefix.scope.prefix, "ok")],
                [now_ms, prefix.policy.watch_window * 1000, code_id, GC_GRACE_MS],
            )
        except Exception:
            log.warning("could not count a verification for its number prefix")

    async def consume_ticket(
        self,
        tag: str,
        ticket_hash: str,
        *,
        now_ms: int,
        purpose: str,
        channel: str,
        destination_matches: bool,
        max_misses: int,
        keep: bool = False,
    ) -> StoredTicket | None:
        """Delete (unless `keep`) and return a live ticket if it matches; None otherwise (a
        mismatch is counted)."""
        reply = await run_script(
            self._consume,
            [ticket_key(tag, ticket_hash)],
            [
                now_ms,
                purpose,
                channel,
                "1" if destination_matches else "0",
                max_misses,
                "1" if keep else "0",
            ],
        )
        if int(reply[0]) != 1:
            return None
        return StoredTicket(
            channel=text(reply[1]),
            purpose=text(reply[2]),
            sealed_destination=text(reply[3]),
            issued_at_ms=int(text(reply[4])),
        )


__all__ = [
    "ISSUE_POLICY",
    "TICKET_GC_GRACE_MS",
    "VERIFY_POLICY",
    "CodeStore",
    "NewCode",
    "RedisCodeStore",
    "StoredTicket",
    "TicketStore",
    "TicketToStore",
    "VerifyOutcome",
    "VerifyResult",
    "code_key",
    "fail_key",
    "issue_key",
    "ticket_key",
]
