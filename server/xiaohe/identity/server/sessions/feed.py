"""The revocation feed: ended sessions as a Redis Stream that business systems follow.

`DirectoryService.WatchRevocations` serves it (issue 13, section 2). Business
systems that verify access tokens locally learn here, within a second, that a
session ended, instead of calling `ValidateToken` for every request.

Redis holds one stream, `{xh:revocation-feed}`: one entry per revoked session
(session id, account id, reason, time), appended by `RevocationList` beside its
own set and channel. An entry's stream id is the cursor a watcher resumes from;
cursors are therefore ordered, and every entry after a cursor is still in the
stream unless it was trimmed. Entries older than the retention window are trimmed
when a new one is appended, and the same script raises the *floor* (its second
key) to the trim point: a cursor below the floor may have missed trimmed entries,
so its watcher is told to resync. A cursor above the stream's last entry can only
come from a stream that was lost (Redis flushed), and resyncs too. Nothing is
inferred from clocks, so a quiet feed never sends a watcher to resync.

Each worker reads the stream once (`run`: XREAD BLOCK from its last position) and
fans entries out to its watchers' queues; a watcher with a cursor first replays
the stream after its cursor (XRANGE), registered before it does so and skipping
what it has already sent, so nothing falls between replay and live delivery and
nothing is sent twice. A watcher that cannot keep up, or a worker whose reader
loses Redis or stops, ends its watchers' streams with UNAVAILABLE: they reconnect
(possibly to another worker) with their last cursor and miss nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import (
    FieldViolation,
    InvalidArgument,
    RateLimited,
    Unavailable,
)
from xiaohe.identity.server.storage.redis import RedisClient, redis_errors, text

FEED_KEY: Final = "{xh:revocation-feed}"
FLOOR_KEY: Final = "{xh:revocation-feed}:floor"

_CURSOR: Final = re.compile(r"(\d{1,19})-(\d{1,19})")
_REPLAY_PAGE: Final = 500

# KEYS: feed, floor. ARGV: retention in ms, revoked_at, then (sid, account, reason) triples.
# Appends the entries, trims what is older than the retention window (measured from the
# new entry's own id, so only Redis's clock counts) and raises the floor to the trim point.
_APPEND: Final = """
local last
for i = 3, #ARGV, 3 do
  last = redis.call('XADD', KEYS[1], '*', 'sid', ARGV[i], 'acct', ARGV[i + 1],
                    'reason', ARGV[i + 2], 'at', ARGV[2])
end
local minid = tonumber(string.match(last, '^(%d+)-')) - tonumber(ARGV[1])
if minid > 0 then
  local bound = string.format('%.0f', minid)
  if redis.call('XTRIM', KEYS[1], 'MINID', bound) > 0 then
    local floor = tonumber(redis.call('GET', KEYS[2]) or '0')
    if minid > floor then redis.call('SET', KEYS[2], bound) end
  end
end
return last
"""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Revoked:
    """A session that ended: what the feed announces of it."""

    session_id: str
    account_id: str
    reason: str


@dataclass(frozen=True)
class FeedItem:
    """One message of a watch: a revocation, a heartbeat (`revoked` None) or a resync order."""

    cursor: str
    at: float
    """When the session was revoked, or the heartbeat's time."""
    revoked: Revoked | None = None
    resync_required: bool = False


def parse_cursor(cursor: str) -> tuple[int, int]:
    """A cursor's stream id as (milliseconds, sequence); InvalidArgument if it is not one."""
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise InvalidArgument(
            FieldViolation("since_cursor", "must be a cursor this feed sent, or empty")
        )
    return int(match.group(1)), int(match.group(2))


class _Watcher:
    """One watch's queue of entries from the reader, and whether it must end."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[tuple[tuple[int, int], FeedItem]] = asyncio.Queue(size)
        self.broken: str = ""
        self.wake = asyncio.Event()

    def offer(self, key: tuple[int, int], item: FeedItem) -> None:
        try:
            self.queue.put_nowait((key, item))
        except asyncio.QueueFull:
            self.end("this watch fell behind; reconnect with your last cursor")
        self.wake.set()

    def end(self, why: str) -> None:
        self.broken = self.broken or why
        self.wake.set()


class RevocationFeed:
    """Appends revocations to the stream and serves watches of it; see the module docstring."""

    def __init__(
        self,
        redis: RedisClient,
        clock: Clock,
        *,
        retention_seconds: float,
        heartbeat_seconds: float,
        watchers_per_client: int,
        block_seconds: float = 1.0,
        queue_size: int = 1000,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        if retention_seconds <= 0 or heartbeat_seconds <= 0 or watchers_per_client < 1:
            raise ValueError("retention, heartbeat and the watcher cap must be positive")
        self._redis = redis
        self._clock = clock
        self._retention_ms = int(retention_seconds * 1000)
        self._heartbeat = heartbeat_seconds
        self._cap = watchers_per_client
        self._block_ms = max(1, int(block_seconds * 1000))
        self._queue_size = queue_size
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._append = redis.register_script(_APPEND)
        self._watchers: set[_Watcher] = set()
        self._per_client: Counter[str] = Counter()
        self._position: str | None = None
        self._reading = asyncio.Event()

    async def append(self, revoked: Sequence[Revoked], revoked_at: float) -> None:
        """Add these revocations to the stream (one script: append, trim, raise the floor)."""
        if not revoked:
            return
        args: list[str | int] = [self._retention_ms, repr(revoked_at)]
        for r in revoked:
            args += [r.session_id, r.account_id, r.reason]
        with redis_errors():
            await self._append(keys=[FEED_KEY, FLOOR_KEY], args=args)

    async def watch(self, client_id: str, since_cursor: str = "") -> AsyncIterator[FeedItem]:
        """The feed from `since_cursor` (empty: from now), a heartbeat first and when idle.

        InvalidArgument for a malformed cursor, RateLimited past the per-client cap of
        this worker, Unavailable when the stream ends for a reason the client can
        retry (reconnect with the last cursor). A cursor that may have missed entries
        gets one resync item, and the stream ends.
        """
        start = parse_cursor(since_cursor) if since_cursor else None
        if self._per_client[client_id] >= self._cap:
            raise RateLimited(
                "revocations.watchers_per_client",
                self._heartbeat,
                f"at most {self._cap} revocation watches per client on one worker",
            )
        watcher = _Watcher(self._queue_size)
        self._per_client[client_id] += 1
        self._watchers.add(watcher)
        try:
            if not self._reading.is_set():
                raise Unavailable("the revocation feed is not being read yet; retry")
            async for item in self._serve(watcher, since_cursor, start):
                yield item
        finally:
            self._watchers.discard(watcher)
            self._per_client[client_id] -= 1
            if self._per_client[client_id] <= 0:
                del self._per_client[client_id]

    async def _serve(
        self, watcher: _Watcher, since_cursor: str, start: tuple[int, int] | None
    ) -> AsyncIterator[FeedItem]:
        with redis_errors():
            if start is not None and await self._missed_entries(start):
                yield FeedItem(since_cursor, self._clock.now(), resync_required=True)
                return
            last_cursor = since_cursor or await self._last_id()
        last = parse_cursor(last_cursor)
        yield FeedItem(last_cursor, self._clock.now())
        if start is not None:
            async for key, item in self._replay(last_cursor):
                last, last_cursor = key, item.cursor
                yield item
        while True:
            if watcher.broken:
                raise Unavailable(watcher.broken)
            try:
                key, item = watcher.queue.get_nowait()
            except asyncio.QueueEmpty:
                watcher.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.wake.wait(), timeout=self._heartbeat)
                if watcher.queue.empty() and not watcher.broken:
                    yield FeedItem(last_cursor, self._clock.now())
                continue
            if key > last:
                last, last_cursor = key, item.cursor
                yield item

    async def _missed_entries(self, cursor: tuple[int, int]) -> bool:
        """Whether entries after `cursor` may be gone: trimmed, or the stream was lost."""
        floor = await self._redis.get(FLOOR_KEY)
        if floor is not None and cursor < (int(text(floor)), 0):
            return True
        newest = parse_cursor(await self._last_id())
        return cursor > newest

    async def _last_id(self) -> str:
        entries = await self._redis.xrevrange(FEED_KEY, count=1)
        return text(entries[0][0]) if entries else "0-0"

    async def _replay(self, cursor: str) -> AsyncIterator[tuple[tuple[int, int], FeedItem]]:
        """The stream's entries after `cursor`, page by page."""
        while True:
            with redis_errors():
                page = await self._redis.xrange(FEED_KEY, min=f"({cursor}", count=_REPLAY_PAGE)
            page = page or []
            for entry_id, fields in page:
                item = _item(text(entry_id), fields or {})
                cursor = item.cursor
                yield parse_cursor(cursor), item
            if len(page) < _REPLAY_PAGE:
                return

    async def run(self, stop: asyncio.Event) -> None:
        """Read the stream until `stop` is set and hand each entry to every watcher."""
        delay = self._backoff_initial
        try:
            while not stop.is_set():
                try:
                    if self._position is None:
                        self._position = await self._last_id()
                        self._reading.set()
                    replies = await self._redis.xread(
                        {FEED_KEY: self._position}, count=_REPLAY_PAGE, block=self._block_ms
                    )
                    for entry_id, fields in _entries(replies):
                        item = _item(text(entry_id), fields)
                        self._position = item.cursor
                        key = parse_cursor(item.cursor)
                        for watcher in tuple(self._watchers):
                            watcher.offer(key, item)
                    delay = self._backoff_initial
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "revocation feed reader interrupted (%s); retrying in %.1fs",
                        type(exc).__name__,
                        delay,
                    )
                    self._end_all("the revocation feed lost its store; reconnect with your cursor")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                    delay = min(delay * 2, self._backoff_max)
        finally:
            self._reading.clear()
            self._end_all("this server is stopping; reconnect with your last cursor")

    def _end_all(self, why: str) -> None:
        for watcher in tuple(self._watchers):
            watcher.end(why)


def _entries(replies: Any) -> list[tuple[Any, Any]]:
    """The (id, fields) pairs of an XREAD reply on the one feed key, RESP2 or RESP3."""
    if not replies:
        return []
    if isinstance(replies, Mapping):
        return [tuple(e) for batch in replies.values() for group in batch for e in group]
    return [tuple(e) for _stream, batch in replies for e in batch]


def _item(entry_id: str, fields: Mapping[Any, Any]) -> FeedItem:
    values = {text(k): text(v) for k, v in fields.items()}
    try:
        at = float(values.get("at", "0"))
    except ValueError:
        at = 0.0
    revoked = Revoked(values.get("sid", ""), values.get("acct", ""), values.get("reason", ""))
    return FeedItem(entry_id, at, revoked)


__all__ = ["FEED_KEY", "FLOOR_KEY", "FeedItem", "RevocationFeed", "Revoked", "parse_cursor"]
