"""A sliding-window rate limiter on Redis, with reservations that can be refunded."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from redis.exceptions import NoScriptError

from xiaohe.identity.server.errors import RateLimited
from xiaohe.identity.server.ratelimit.scripts import GC_GRACE_MS, SLIDING_WINDOW_LUA
from xiaohe.identity.server.storage.redis import RedisClient, is_cluster, redis_errors, run_script

# KEYS[1] the window set. ARGV: now_ms, member, grace_ms, then (limit, window_ms) pairs.
# Returns {1} when the event was recorded, {0, retry_ms, index of the tightest window}.
_ACQUIRE_LUA = (
    SLIDING_WINDOW_LUA
    + r"""
local key = KEYS[1]
local now = tonumber(ARGV[1])
local longest = 0
for i = 4, #ARGV, 2 do
  local window = tonumber(ARGV[i + 1])
  if window > longest then
    longest = window
  end
end
sw_trim(key, now, longest)
local retry, which = 0, 0
for i = 4, #ARGV, 2 do
  local r = sw_retry(key, now, tonumber(ARGV[i]), tonumber(ARGV[i + 1]))
  if r > retry then
    retry, which = r, (i - 2) / 2
  end
end
if retry > 0 then
  return {0, retry, which}
end
sw_record(key, now, ARGV[2], longest, tonumber(ARGV[3]))
return {1}
"""
)

# KEYS[1] the window set; ARGV[1] the member to remove.
_RELEASE_LUA = r"""
return redis.call('ZREM', KEYS[1], ARGV[1])
"""


@dataclass(frozen=True)
class Window:
    """At most `limit` events per `seconds`."""

    limit: int
    seconds: float

    def __post_init__(self) -> None:
        if self.limit < 0 or self.seconds <= 0:
            raise ValueError("a window needs limit >= 0 and seconds > 0")


@dataclass(frozen=True)
class Charge:
    """One event to record under `key`, refused as `policy` unless it fits every window."""

    policy: str
    key: str
    windows: Sequence[Window]


@dataclass(frozen=True)
class Reservation:
    """One recorded event: what `release` needs to refund it."""

    policy: str
    key: str
    member: str


class RateLimiter(Protocol):
    """What services need from a rate limiter."""

    async def acquire(
        self, policy: str, key: str, limit: int, window: float, now: float
    ) -> Reservation:
        """Record one event under `key` or raise RateLimited(policy, retry_after)."""
        ...

    async def acquire_windows(
        self, policy: str, key: str, windows: Sequence[Window], now: float
    ) -> Reservation:
        """Record one event if it fits every window, else raise RateLimited."""
        ...

    async def acquire_all(self, charges: Sequence[Charge], now: float) -> list[Reservation]:
        """Record every charge, or none: RateLimited names the first refusing one."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Refund a reservation."""
        ...


def _to_ms(seconds: float) -> int:
    return int(seconds * 1000)


class SlidingWindowLimiter:
    """Sliding-window log limiter: exact counts over the last N seconds, atomic in one script.

    Each limited key (e.g. `xh:rl:{ip:…}:code.issue`) is a Redis sorted set holding
    one member per accepted event, scored by the event's time in milliseconds.
    `acquire` runs one Lua script that first drops members older than the longest
    window, then, for every window given (5 per hour *and* 10 per day on one key),
    counts the members inside it; if any count has reached its limit the event is
    refused with the time until enough old events leave that window (for a full
    window: oldest event + window − now; the largest such wait across windows),
    otherwise it adds a unique random member and succeeds. Unlike fixed windows
    there is no burst at a window boundary, and because check and insert run in
    one script, concurrent callers across all processes can never overshoot a
    limit. Refused attempts record nothing, so hammering a full limit does not
    extend it. A caller whose later step fails can `release` its reservation
    (ZREM of its member), so a request rejected by one limit is not charged to
    the others. The current time comes from the caller's injected clock.
    Keys should carry a hash tag (`{…}`) so that they map to one Redis Cluster slot.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._redis = redis
        self._cluster = is_cluster(redis)
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._token_bytes = token_bytes

    async def acquire(
        self, policy: str, key: str, limit: int, window: float, now: float
    ) -> Reservation:
        """Record one event under `key` or raise RateLimited(policy, retry_after)."""
        return await self.acquire_windows(policy, key, [Window(limit, window)], now)

    async def acquire_windows(
        self, policy: str, key: str, windows: Sequence[Window], now: float
    ) -> Reservation:
        """Record one event if it fits every window, else raise RateLimited (one script call)."""
        member, args = self._arguments(windows, now)
        reply = await run_script(self._acquire, [key], args)
        if int(reply[0]) != 1:
            raise RateLimited(policy, int(reply[1]) / 1000)
        return Reservation(policy=policy, key=key, member=member)

    async def acquire_all(self, charges: Sequence[Charge], now: float) -> list[Reservation]:
        """Record every charge, or none, in one round trip to Redis.

        The keys usually live in different Cluster slots (an IP's and a client's
        window), so one script cannot hold them all: the scripts go out together in
        one pipeline (on a Cluster, concurrently), each atomic on its own key. If any
        refuses, the others are refunded and the first refusal in `charges` order is
        raised, as if they had been charged one after another. A Redis that forgot
        the script (restart) gets the same charges one by one, which reloads it.
        """
        if len(charges) < 2:
            return [await self.acquire_windows(c.policy, c.key, c.windows, now) for c in charges]
        pending = [(charge, *self._arguments(charge.windows, now)) for charge in charges]
        if self._cluster:
            # A Cluster pipeline cannot carry scripts: the same scripts go out at once,
            # each to the node that serves its key.
            replies = await asyncio.gather(
                *(self._acquire(keys=[c.key], args=args) for c, _member, args in pending),
                return_exceptions=True,
            )
            await self._check_replies(pending, replies)
            return [Reservation(c.policy, c.key, member) for c, member, _args in pending]
        pipe = self._redis.pipeline(transaction=False)
        for charge, _member, args in pending:
            pipe.evalsha(self._acquire.sha, 1, charge.key, *args)
        with redis_errors():
            replies = await pipe.execute(raise_on_error=False)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            await self._release_recorded(pending, replies)
            return await self._acquire_one_by_one(charges, now)
        await self._check_replies(pending, replies)
        return [
            Reservation(policy=charge.policy, key=charge.key, member=member)
            for charge, member, _args in pending
        ]

    async def _check_replies(
        self, pending: Sequence[tuple[Charge, str, list[str | int]]], replies: Sequence[object]
    ) -> None:
        """Raise the first refusal or error, after refunding every recorded charge."""
        for (charge, _member, _args), reply in zip(pending, replies, strict=True):
            if isinstance(reply, BaseException) or int(reply[0]) != 1:  # type: ignore[index]
                await self._release_recorded(pending, replies)
                if isinstance(reply, BaseException):
                    with redis_errors():
                        raise reply
                raise RateLimited(charge.policy, int(reply[1]) / 1000)  # type: ignore[index]

    async def _release_recorded(
        self, pending: Sequence[tuple[Charge, str, list[str | int]]], replies: Sequence[object]
    ) -> None:
        for (charge, member, _args), reply in zip(pending, replies, strict=True):
            if not isinstance(reply, BaseException) and int(reply[0]) == 1:  # type: ignore[index]
                await self.release(Reservation(charge.policy, charge.key, member))

    async def _acquire_one_by_one(self, charges: Sequence[Charge], now: float) -> list[Reservation]:
        taken: list[Reservation] = []
        try:
            for c in charges:
                taken.append(await self.acquire_windows(c.policy, c.key, c.windows, now))
        except Exception:
            for reservation in taken:
                await self.release(reservation)
            raise
        return taken

    def _arguments(self, windows: Sequence[Window], now: float) -> tuple[str, list[str | int]]:
        """A fresh member and the acquire script's arguments for these windows."""
        if not windows:
            raise ValueError("at least one window is required")
        member = base64.urlsafe_b64encode(self._token_bytes(12)).decode("ascii")
        args: list[str | int] = [_to_ms(now), member, GC_GRACE_MS]
        for window in windows:
            args += [window.limit, _to_ms(window.seconds)]
        return member, args

    async def release(self, reservation: Reservation) -> None:
        """Refund a reservation returned by `acquire` (no-op if it already left the window)."""
        await run_script(self._release, [reservation.key], [reservation.member])


__all__ = ["Charge", "RateLimiter", "Reservation", "SlidingWindowLimiter", "Window"]
