"""Revoked session ids: an in-memory map in every worker, fed from Redis (SECURITY T3).

The hot path (`is_revoked`, called by `SessionService.validate` for every
ValidateToken) is one dict lookup: no network call sits on it (ARCHITECTURE
"Tokens and sessions"). Each worker keeps `sid → expiry`; an entry matters only
until every access token of that session has expired, so its expiry is the
revocation time + the access-token lifetime + `leeway`. The leeway is derived
from the validator's own (`validator_leeway`, the `token_leeway_seconds`
setting) plus `SKEW_MARGIN` for clock skew between workers and a refresh that
raced the revocation and signed one last token. Deriving it, rather than
configuring it beside the validator's, is what keeps a larger validator leeway
from letting a revoked token validate again once its entry is gone.

Redis holds the shared truth in two places:

- the sorted set `xh:revoked` (member = session id, score = expiry), which a
  worker reads in full whenever it (re)subscribes, and which is pruned of
  expired members on every such reload;
- the channel `xh:revocations`, on which `revoke` publishes
  `{"sids": [...], "exp": <epoch seconds>}` so every subscribed worker learns of
  a revocation at once (well within the one second the architecture promises);
- with a `RevocationFeed`, the stream that business systems watch
  (sessions/feed.py): one entry per session, with its account and reason, written
  after the set and the channel, and again with them when pending ids are flushed
  (a watcher may then see a session twice, which changes nothing for it).

`run` subscribes first and reloads only after Redis has confirmed the
subscription, so a revocation lands either in the reload or on the channel and
none falls between them. redis-py re-subscribes by itself after a reconnect and
that confirmation triggers another full reload, so nothing missed while the
connection was down stays missed. When Redis cannot be reached, `run` retries
with exponential backoff and never crashes.

Until the first full load this list does not know what is revoked, so
`is_revoked` fails closed with `Unavailable` instead of answering "no". After
that, a lost Redis connection leaves the last known map in place (and keeps
adding this worker's own revocations to it).

Known gap: `revoke` adds to the local map first, then writes to Redis. If
Redis is down, other workers do not learn of the revocation; `revoke` raises
`Unavailable` and keeps the ids in a pending set, which `run` publishes as soon
as Redis is back (on reconnect, or on the next tick when the connection never
dropped). If this process dies before that, only SQL (`sessions.revoked_at`)
remembers the revocation: refresh and ListSessions honour it, but access tokens
already issued for that session stay valid elsewhere until they expire (at most
the access-token lifetime). Revoking again once Redis is back closes the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.sessions.feed import RevocationFeed, Revoked
from xiaohe.identity.server.sessions.tokens import DEFAULT_VALIDATOR_LEEWAY
from xiaohe.identity.server.storage.redis import RedisClient, is_unavailable, subscriber, text

REVOKED_KEY = "xh:revoked"
REVOCATION_CHANNEL = "xh:revocations"
SKEW_MARGIN = 60.0
"""Seconds a revocation is kept beyond the last moment a validator could accept its tokens."""

log = logging.getLogger(__name__)


def encode_revocation_message(session_ids: Sequence[str], expires_at: float) -> str:
    """The message published on `xh:revocations` for these session ids."""
    return json.dumps({"sids": list(session_ids), "exp": expires_at}, separators=(",", ":"))


def decode_revocation_message(data: bytes | str) -> tuple[list[str], float]:
    """Session ids and expiry of a published message; ValueError if it is malformed."""
    payload = json.loads(data)
    if not isinstance(payload, dict):
        raise ValueError("revocation message is not an object")
    sids, exp = payload.get("sids"), payload.get("exp")
    if not isinstance(sids, list) or not all(isinstance(s, str) for s in sids):
        raise ValueError("revocation message has no sid list")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise ValueError("revocation message has no expiry")
    return list(sids), float(exp)


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds`; True if `stop` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


class RevocationList:
    """This worker's view of the revoked session ids; see the module docstring."""

    def __init__(
        self,
        redis: RedisClient,
        clock: Clock,
        access_ttl: float,
        *,
        validator_leeway: float = DEFAULT_VALIDATOR_LEEWAY,
        tick: float = 1.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        prune_interval: float = 60.0,
        feed: RevocationFeed | None = None,
    ) -> None:
        if access_ttl <= 0 or validator_leeway < 0 or tick <= 0:
            raise ValueError("access_ttl and tick must be positive, leeway not negative")
        self._redis = redis
        self._clock = clock
        self._ttl = float(access_ttl)
        self._leeway = float(validator_leeway) + SKEW_MARGIN
        self._tick = tick
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._prune_interval = prune_interval
        self._revoked: dict[str, float] = {}
        self._pending: dict[str, float] = {}
        self._feed = feed
        self._announced: dict[str, Revoked] = {}
        """What the feed says of each pending id (account and reason)."""
        self._loaded = False
        self._ready = asyncio.Event()
        self._next_prune = 0.0

    def is_revoked(self, session_id: str) -> bool:
        """Whether the session is revoked (one dict lookup); Unavailable before the first load.

        Entries stay a little past their expiry until the next prune; that is
        harmless, since every access token they could match has expired by then.
        """
        if not self._loaded:
            raise Unavailable("the revocation list is not loaded yet")
        return session_id in self._revoked

    @property
    def leeway(self) -> float:
        """Seconds an entry outlives the access-token lifetime (validator leeway + margin)."""
        return self._leeway

    @property
    def pending(self) -> frozenset[str]:
        """Session ids revoked here that Redis has not accepted yet."""
        return frozenset(self._pending)

    async def wait_ready(self) -> None:
        """Return once the first full load from Redis has completed."""
        await self._ready.wait()

    async def revoke(
        self, session_ids: Sequence[str], *, account_id: str = "", reason: str = ""
    ) -> None:
        """Revoke sessions here at once, then in Redis (ZADD + PUBLISH, then the feed with
        `account_id` and `reason`); Unavailable if Redis fails.

        On any failure the ids stay revoked in this worker and wait in the pending
        set for `run` to publish them when Redis answers again; a failure that is
        not an outage (a refused command, say) is raised as it is, after the same.
        """
        ids = list(dict.fromkeys(session_ids))
        if not ids:
            return
        expires_at = self._clock.now() + self._ttl + self._leeway
        entries = dict.fromkeys(ids, expires_at)
        self._merge(self._revoked, entries)
        announced = {sid: Revoked(sid, account_id, reason) for sid in ids}
        try:
            await self._publish(entries, announced)
        except Exception as exc:
            self._merge(self._pending, entries)
            self._announced.update(announced)
            log.warning(
                "could not publish %d revocation(s) (%s); will retry",
                len(ids),
                type(exc).__name__,
            )
            if not is_unavailable(exc):
                raise
            raise Unavailable() from exc

    async def run(self, stop: asyncio.Event) -> None:
        """Follow Redis until `stop` is set: reload on every (re)subscribe, apply published ids."""
        delay = self._backoff_initial
        while not stop.is_set():
            loaded = False
            try:
                async with await subscriber(self._redis) as pubsub:
                    await pubsub.subscribe(REVOCATION_CHANNEL)
                    while not stop.is_set():
                        message = await pubsub.get_message(timeout=self._tick)
                        if message is not None:
                            await self._handle(message)
                            loaded = loaded or message.get("type") == "subscribe"
                        if self._pending:
                            await self._flush_pending()
                        self._maybe_prune()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if loaded:
                    delay = self._backoff_initial
                log.warning(
                    "revocation feed interrupted (%s); retrying in %.1fs",
                    type(exc).__name__,
                    delay,
                )
                if await _stopped_within(stop, delay):
                    return
                delay = min(delay * 2, self._backoff_max)

    async def reload(self) -> None:
        """Prune the Redis set of expired ids and merge the rest into this worker's map."""
        now = self._clock.now()
        await self._redis.zremrangebyscore(REVOKED_KEY, "-inf", now)
        members: Sequence[Any] = await self._redis.zrangebyscore(
            REVOKED_KEY, f"({now!r}", "+inf", withscores=True
        )
        fresh = {sid: exp for sid, exp in self._revoked.items() if exp > now}
        # RESP2 replies pairs, RESP3 two-element lists: index instead of unpacking.
        self._merge(fresh, {text(pair[0]): float(pair[1]) for pair in members})
        self._revoked = fresh
        self._loaded = True
        self._ready.set()

    async def _handle(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # The first subscription, or redis-py's own re-subscription after a
            # reconnect: either way, whatever was published meanwhile is in the set.
            await self.reload()
            await self._flush_pending()
        elif kind == "message":
            try:
                sids, expires_at = decode_revocation_message(message["data"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignored a malformed revocation message (%s)", type(exc).__name__)
                return
            self._merge(self._revoked, dict.fromkeys(sids, expires_at))

    async def _flush_pending(self) -> None:
        if not self._pending:
            return
        snapshot = dict(self._pending)
        now = self._clock.now()
        live = {sid: exp for sid, exp in snapshot.items() if exp > now}
        if live:
            await self._publish(live, self._announced)
            log.info("published %d pending revocation(s)", len(live))
        for sid, exp in snapshot.items():
            # A revoke that failed again meanwhile may have raised the expiry: keep that one.
            if self._pending.get(sid) == exp:
                del self._pending[sid]
                self._announced.pop(sid, None)

    async def _publish(
        self, entries: Mapping[str, float], announced: Mapping[str, Revoked]
    ) -> None:
        # The set first, then the message: a worker that subscribes in between finds the
        # entries by its reload. Two commands, since a Cluster pipeline cannot publish.
        # The feed last: a business system hears of a revocation no sooner than workers.
        await self._redis.zadd(REVOKED_KEY, dict(entries), gt=True)
        await self._redis.publish(
            REVOCATION_CHANNEL, encode_revocation_message(list(entries), max(entries.values()))
        )
        if self._feed is not None:
            events = [announced.get(sid) or Revoked(sid, "", "") for sid in entries]
            await self._feed.append(events, self._clock.now())

    def _maybe_prune(self) -> None:
        now = self._clock.now()
        if now < self._next_prune:
            return
        self._next_prune = now + self._prune_interval
        if any(exp <= now for exp in self._revoked.values()):
            self._revoked = {sid: exp for sid, exp in self._revoked.items() if exp > now}

    @staticmethod
    def _merge(target: dict[str, float], entries: Mapping[str, float]) -> None:
        for sid, exp in entries.items():
            if exp > target.get(sid, 0.0):
                target[sid] = exp


__all__ = [
    "DEFAULT_VALIDATOR_LEEWAY",
    "REVOCATION_CHANNEL",
    "REVOKED_KEY",
    "SKEW_MARGIN",
    "RevocationList",
    "decode_revocation_message",
    "encode_revocation_message",
]
