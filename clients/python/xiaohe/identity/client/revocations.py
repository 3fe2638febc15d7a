"""Which sessions ended, learnt from `DirectoryService.WatchRevocations`, for `TokenVerifier`.

A business system that verifies access tokens locally cannot see a logout; the
revocation feed tells it within a second. `Revocations` is what a verifier knows
of the feed, `follow` keeps it current over one stream at a time:

- **Revoked sessions.** Each announced session id is refused (`InvalidToken("revoked")`)
  until no token of it can still be valid: `max_token_lifetime` plus the leeway after
  it was revoked (the server's access-token lifetime is 10 minutes by default; the
  default bound here is an hour, so the set stays bounded by the revocation rate).
- **Resync.** When the server says the cursor is too old (`resync_required`),
  revocations may have been missed, so tokens issued before the moment the feed is
  whole again are refused (`InvalidToken("revocation_resync")`): the user's app
  refreshes, and the refresh of a revoked session fails at the server. That moment is
  the first heartbeat of the new stream (the server's own clock, so the two clocks
  need not agree); until it arrives it is the local time plus the leeway. A token
  issued after it belongs to a session whose revocation, if any, the new stream
  carries.
- **Staleness.** The server sends a heartbeat every few seconds (5 by default). When
  nothing arrived for `max_staleness` seconds (15 by default: three heartbeats), the
  verifier cannot know what it missed and refuses every token with
  `InvalidToken("revocations_stale")` (fail closed; the server interceptor answers
  UNAVAILABLE, so clients retry instead of signing in again) until the stream is back.
  This includes the time before the first heartbeat: `ready` is set then, so a
  service waits on it before serving. `max_staleness=None` turns this off: a dead
  stream then leaves the verifier as blind as one that never followed.

Sessions revoked before the verifier's first heartbeat are unknown to it unless it
resumes from a cursor it kept (`since_cursor`); `refuse_tokens_before_start=True`
treats the start like a resync instead (every user refreshes once).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from xiaohe.identity.client.errors import (
    ClientUnauthenticated,
    IdentityError,
    InvalidArgument,
    PermissionDenied,
    Unimplemented,
)
from xiaohe.identity.tokens.jwt import Claims, InvalidToken
from xiaohe.identity.v1 import directory_pb2

log = logging.getLogger("xiaohe.identity.client.revocations")

DEFAULT_MAX_TOKEN_LIFETIME = 3600.0
DEFAULT_MAX_STALENESS = 15.0
DEFAULT_RECONNECT_AFTER_SILENCE = 10.0


class RevocationWatcher(Protocol):
    """What `follow` needs: `IdentityClient.watch_revocations`."""

    def watch_revocations(
        self, since_cursor: str = ""
    ) -> AsyncIterator[directory_pb2.WatchRevocationsResponse]:
        """The feed's messages from `since_cursor` on (empty: from now)."""
        ...


class Revocations:
    """Revoked session ids, the resync floor and the feed's liveness (see the module docstring).

    `clock` is the verifier's (seconds since the epoch), so tests control time.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        leeway: float,
        max_token_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME,
        max_staleness: float | None = DEFAULT_MAX_STALENESS,
        refuse_tokens_before_start: bool = False,
        since_cursor: str = "",
    ) -> None:
        if max_token_lifetime <= 0:
            raise ValueError("max_token_lifetime must be positive")
        if max_staleness is not None and max_staleness <= 0:
            raise ValueError("max_staleness must be positive (or None)")
        self._clock = clock
        self._leeway = leeway
        self._max_token_lifetime = max_token_lifetime
        self._max_staleness = max_staleness
        self._revoked: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []
        self._floor: float | None = None
        self._awaiting_floor = False
        self._last_contact: float | None = None
        self.cursor = since_cursor
        """The cursor to resume from (the last one received); keep it across a restart."""
        self.ready = asyncio.Event()
        """Set at the first heartbeat: from then on the verifier learns every revocation."""
        if refuse_tokens_before_start:
            self._begin_resync()

    def __len__(self) -> int:
        """How many revoked sessions are remembered."""
        return len(self._revoked)

    @property
    def current(self) -> bool:
        """Whether the feed was heard from within `max_staleness` (always, when None)."""
        if self._max_staleness is None:
            return True
        last = self._last_contact
        return last is not None and self._clock() - last <= self._max_staleness

    def is_revoked(self, session_id: str) -> bool:
        """Whether `session_id` was announced as revoked (and may still have valid tokens)."""
        forget_at = self._revoked.get(session_id)
        return forget_at is not None and forget_at > self._clock()

    def check(self, claims: Claims) -> None:
        """Raise `InvalidToken` if these verified claims must be refused for revocation reasons."""
        if self.is_revoked(claims.sid):
            raise InvalidToken("revoked")
        if not self.current:
            raise InvalidToken("revocations_stale")
        # Kept, not forgotten: a token under the floor is expired anyway once
        # `max_token_lifetime` has passed, so the comparison costs nothing later.
        if self._floor is not None and claims.iat <= self._floor:
            raise InvalidToken("revocation_resync")

    def receive(self, message: directory_pb2.WatchRevocationsResponse) -> str | None:
        """Take one message of the feed; the revoked session's id, if it announced one."""
        now = self._clock()
        self._last_contact = now
        self._forget_expired(now)
        kind = message.WhichOneof("event")
        if kind == "resync_required":
            log.warning("revocation feed resync: tokens issued before now must be refreshed")
            self._begin_resync()
            return None
        if message.cursor:
            self.cursor = message.cursor
        if kind == "heartbeat":
            if self._awaiting_floor:
                # The new stream is whole from the server's `now` on (module docstring).
                self._floor = message.heartbeat.seconds + message.heartbeat.nanos / 1e9
                self._awaiting_floor = False
            self.ready.set()
            return None
        if kind == "revocation":
            self.ready.set()
            session_id = message.revocation.session_id
            if session_id:
                self._revoke(session_id, now)
            return session_id or None
        return None

    def restart_without_cursor(self) -> None:
        """The server refused the cursor itself: follow from now, as after a resync."""
        self._begin_resync()

    def _begin_resync(self) -> None:
        self.cursor = ""
        self._awaiting_floor = True
        self._floor = self._clock() + self._leeway

    def _revoke(self, session_id: str, now: float) -> None:
        forget_at = now + self._max_token_lifetime + self._leeway
        if self._revoked.get(session_id, 0.0) < forget_at:
            self._revoked[session_id] = forget_at
            heapq.heappush(self._expiries, (forget_at, session_id))

    def _forget_expired(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            forget_at, session_id = heapq.heappop(self._expiries)
            if self._revoked.get(session_id) == forget_at:
                del self._revoked[session_id]


async def follow(
    revocations: Revocations,
    watcher: RevocationWatcher,
    *,
    on_revoked: Callable[[str], None] | None = None,
    reconnect_after_silence: float = DEFAULT_RECONNECT_AFTER_SILENCE,
    initial_backoff: float = 0.2,
    max_backoff: float = 10.0,
    jitter: Callable[[], float] = random.random,
) -> None:
    """Follow the feed forever, one stream at a time; run it as a background task.

    A stream that ends, fails, or stays silent for `reconnect_after_silence` seconds
    (two missed heartbeats by default) is replaced by one resuming from the last
    cursor, after a backoff that doubles from `initial_backoff` up to `max_backoff`
    with jitter (half to all of it, so many business systems do not reconnect in
    step after a server restart) and resets once a message arrives. A resync, and a
    cursor the server refuses, reconnect at once without a cursor. Errors no retry
    can fix (the client lacks the `validate` grant or its credentials, a server
    without the feed) are raised, which ends the task; the verifier then fails
    closed once the feed is stale.
    """
    backoff = initial_backoff
    while True:
        at_once = False
        try:
            stream = watcher.watch_revocations(revocations.cursor)
            async with contextlib.aclosing(stream) as messages:  # type: ignore[type-var]
                iterator = aiter(messages)
                while True:
                    async with asyncio.timeout(reconnect_after_silence):
                        message = await anext(iterator)
                    session_id = revocations.receive(message)
                    backoff = initial_backoff
                    if session_id is not None and on_revoked is not None:
                        on_revoked(session_id)
                    if message.WhichOneof("event") == "resync_required":
                        at_once = True
                        break
        except StopAsyncIteration:
            log.info("revocation feed stream ended; reconnecting")
        except TimeoutError:
            log.warning("revocation feed silent for %.0f s; reconnecting", reconnect_after_silence)
        except (ClientUnauthenticated, PermissionDenied, Unimplemented):
            log.error("revocation feed refused: this client cannot follow it")
            raise
        except InvalidArgument:
            log.warning("revocation feed refused the cursor; following from now")
            revocations.restart_without_cursor()
            at_once = True
        except IdentityError as exc:
            log.warning("revocation feed unavailable (%s); reconnecting", exc.reason)
        if not at_once:
            await asyncio.sleep(backoff * (0.5 + 0.5 * jitter()))
            backoff = min(max_backoff, backoff * 2)


__all__ = [
    "DEFAULT_MAX_STALENESS",
    "DEFAULT_MAX_TOKEN_LIFETIME",
    "RevocationWatcher",
    "Revocations",
    "follow",
]
