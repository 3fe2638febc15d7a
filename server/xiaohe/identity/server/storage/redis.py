"""Redis as every capability uses it: a client whose operations are bounded, and the script runner.

Why every operation has its own bound (SECURITY F1, F4). A Redis that stops
answering without closing its sockets (a paused process, a full network
buffer, a stalled host) is worse than one that is down: a connection attempt
is refused at once, but a command on an open connection waits for an answer
that never comes. redis-py's socket timeouts bound each read, yet a request
makes several Redis calls, each of which may retry and reconnect, so a caller
waited its whole deadline (30 s and more) before learning anything. Here each
operation (a command, a script, a pipeline) runs under `op_timeout`, and the
first one that times out or cannot connect marks Redis as *unreachable*
(`OutageGuard`): from then on operations fail at once, without waiting, except
one probe every `probe_interval` that tries for real. The first probe that is
answered marks Redis reachable again. So during an outage every RPC that needs
Redis answers UNAVAILABLE (with RetryInfo) within about `op_timeout`, the log
gets one line when it starts and one when it ends, and the server recovers by
itself without a restart.

An exhausted local connection pool is not an outage (Redis answers; this
process is busy): `run_script` reports it as `Overloaded`, and the pool's own
wait is kept shorter than `op_timeout` so that it surfaces first.

`run_script` turns every "Redis cannot serve this" error into
`errors.Unavailable`, so callers fail closed (nothing sent, nothing accepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeAlias, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterError,
    MaxConnectionsError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from xiaohe.identity.server.errors import Overloaded, Unavailable

log = logging.getLogger("xiaohe.identity.redis")

T = TypeVar("T")

DEFAULT_OP_TIMEOUT = 2.0
PROBE_INTERVAL = 0.5
"""While Redis is unreachable, one operation in this many seconds tries for real."""


class RedisUnreachable(RedisConnectionError):
    """Refused without trying: Redis did not answer recently (see `OutageGuard`)."""


def is_unavailable(exc: BaseException) -> bool:
    """Whether a Redis client error means "cannot serve now" (fail closed) rather than a bug."""
    if isinstance(exc, MaxConnectionsError):
        return False
    if isinstance(
        exc,
        RedisConnectionError
        | RedisTimeoutError
        | OutOfMemoryError
        | ReadOnlyError
        | TryAgainError
        | ClusterError
        | RedisClusterException
        | OSError,
    ):
        return True
    if isinstance(exc, ResponseError):
        return str(exc).startswith(("LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"))
    return False


class OutageGuard:
    """Bounds Redis operations and fails fast while Redis is unreachable (module docstring).

    States: *reachable* (every operation tries, bounded by `op_timeout`) and
    *unreachable* (operations are refused with `RedisUnreachable` at once, but
    one probe per `probe_interval` tries). A timeout or a connection failure
    moves to unreachable; any answer moves back. Errors that Redis itself
    answers (a script error, an exhausted local pool) change nothing.
    """

    def __init__(
        self,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        *,
        probe_interval: float = PROBE_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if op_timeout <= 0 or probe_interval <= 0:
            raise ValueError("op_timeout and probe_interval must be positive")
        self.op_timeout = op_timeout
        self._probe_interval = probe_interval
        self._monotonic = monotonic
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._refused = 0

    @property
    def reachable(self) -> bool:
        """Whether the last operation that reached Redis was answered."""
        return self._down_since is None

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation within `op_timeout`, or refuse it at once during an outage."""
        if self._down_since is not None:
            now = self._monotonic()
            if now < self._next_probe:
                self._refused += 1
                raise RedisUnreachable("Redis did not answer recently; not trying")
            self._next_probe = now + self._probe_interval
        try:
            async with asyncio.timeout(self.op_timeout):
                result = await operation()
        except TimeoutError as exc:
            self._unreachable(exc)
            raise RedisTimeoutError(f"no answer from Redis within {self.op_timeout:g} s") from None
        except Exception as exc:
            if is_unavailable(exc) and not isinstance(exc, ResponseError):
                self._unreachable(exc)
            else:
                self._reachable()
            raise
        self._reachable()
        return result

    def _unreachable(self, exc: BaseException) -> None:
        if self._down_since is not None:
            return
        now = self._monotonic()
        self._down_since = now
        self._next_probe = now + self._probe_interval
        self._refused = 0
        log.warning("Redis unreachable (%s); failing closed until it answers", type(exc).__name__)

    def _reachable(self) -> None:
        if self._down_since is None:
            return
        seconds = self._monotonic() - self._down_since
        log.warning(
            "Redis answers again after %.1f s (%d operations refused meanwhile)",
            seconds,
            self._refused,
        )
        self._down_since = None


class BoundedPipeline(Pipeline):
    """A pipeline whose `execute` runs under the client's `OutageGuard`."""

    guard: OutageGuard

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send the queued commands within the guard's bound."""
        return await self.guard.run(lambda: super(BoundedPipeline, self).execute(raise_on_error))


class BoundedRedis(aioredis.Redis):
    """`redis.asyncio.Redis` whose every command, script and pipeline runs under an `OutageGuard`.

    Scripts (`register_script`) call `evalsha` and, after a restart, `script load`
    through `execute_command`, so they are covered too. Pub/sub connections are
    not: their reads take their own timeout (`get_message(timeout=...)`).
    """

    def __init__(self, *, connection_pool: BlockingConnectionPool, guard: OutageGuard) -> None:
        super().__init__(connection_pool=connection_pool)
        self.guard = guard

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Execute one command within the guard's bound."""
        parent = super().execute_command
        return await self.guard.run(lambda: parent(*args, **options))  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        """A pipeline whose `execute` is bounded like a command."""
        pipe = BoundedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.guard = self.guard
        return pipe


class BoundedClusterPipeline(ClusterPipeline):
    """A Redis Cluster pipeline whose `execute` runs under the client's `OutageGuard`."""

    guard: OutageGuard

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        """Send the queued commands (to every node they need) within the guard's bound."""
        parent = super().execute
        return await self.guard.run(lambda: parent(raise_on_error, allow_redirections))


class BoundedRedisCluster(RedisCluster):
    """`redis.asyncio.RedisCluster` with every command, script and pipeline under an `OutageGuard`.

    The cluster client follows MOVED and ASK redirections and, after a master
    fails, refreshes its slot map and retries on the promoted replica, all inside
    one bounded operation. While no node serves a key's slot (between a master's
    failure and its replica's promotion) the operation fails like an outage:
    UNAVAILABLE, nothing sent, nothing accepted.
    """

    def __init__(self, *, guard: OutageGuard, **options: Any) -> None:
        super().__init__(**options)
        self.guard = guard

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Execute one command within the guard's bound."""
        parent = super().execute_command
        return await self.guard.run(lambda: parent(*args, **options))

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        """A pipeline whose `execute` is bounded like a command (never a transaction)."""
        if transaction or shard_hint:
            raise ValueError("a Redis Cluster pipeline is never a transaction")
        pipe = BoundedClusterPipeline(self)  # type: ignore[abstract]  # as RedisCluster does
        pipe.guard = self.guard
        return pipe


RedisClient: TypeAlias = aioredis.Redis | RedisCluster
"""What the stores take: one Redis server or a Redis Cluster."""


def is_cluster(client: RedisClient) -> bool:
    """Whether `client` talks to a Redis Cluster (its scripts must each stay in one slot)."""
    return isinstance(client, RedisCluster)


async def subscriber(client: RedisClient) -> aioredis.client.PubSub:
    """A pub/sub connection; a Cluster client learns its slot map first (it needs it to
    pick the node, and only a command would otherwise have fetched it)."""
    if isinstance(client, RedisCluster):
        await client.initialize()
    return client.pubsub()


def bounded_cluster_client(url: str, op_timeout: float = DEFAULT_OP_TIMEOUT) -> BoundedRedisCluster:
    """The server's client for a Redis Cluster reached through one startup node's URL.

    Connection attempts and reads within `op_timeout`, as `bounded_client`; up to
    256 connections to each node, and a full pool refuses at once (`Overloaded`)
    instead of waiting. One `OutageGuard` covers the whole cluster: while any node
    an operation needed fails to answer, operations fail fast everywhere until a
    probe is answered (fail closed; finer, per-node guards are future work).
    """
    client = BoundedRedisCluster.from_url(
        url,
        guard=OutageGuard(op_timeout),
        max_connections=256,
        socket_timeout=op_timeout,
        socket_connect_timeout=op_timeout,
        health_check_interval=10,
    )
    assert isinstance(client, BoundedRedisCluster)
    return client


def bounded_client(url: str, op_timeout: float = DEFAULT_OP_TIMEOUT) -> BoundedRedis:
    """The server's Redis client: one pool per process, every operation bounded.

    A connection attempt and each socket read are bounded by `op_timeout` too
    (redis-py's own timeouts, a backstop for pub/sub); a command is retried once
    on a fresh connection within the same bound; waiting for a free pooled
    connection takes at most half of it, so a busy process sheds load
    (`Overloaded`) before its wait could look like an outage.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=256,
        timeout=op_timeout / 2,
        socket_timeout=op_timeout,
        socket_connect_timeout=op_timeout,
        health_check_interval=10,
        retry=Retry(NoBackoff(), 1),
    )
    return BoundedRedis(connection_pool=pool, guard=OutageGuard(op_timeout))


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Connection-type failures become `errors.Unavailable`, an exhausted pool `Overloaded`.

    An exhausted local connection pool is this process being overloaded, not
    Redis being down, so it sheds load (retry soon) instead of failing closed.
    """
    try:
        yield
    except MaxConnectionsError as exc:
        raise Overloaded() from exc
    except Exception as exc:
        if is_unavailable(exc):
            raise Unavailable() from exc
        raise


async def run_script(script: AsyncScript, keys: Sequence[str], args: Sequence[str | int]) -> Any:
    """Run a registered script under `redis_errors`."""
    with redis_errors():
        return await script(keys=list(keys), args=list(args))


def text(value: object) -> str:
    """A reply element as str, whether the client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


__all__ = [
    "DEFAULT_OP_TIMEOUT",
    "PROBE_INTERVAL",
    "BoundedClusterPipeline",
    "BoundedRedis",
    "BoundedRedisCluster",
    "OutageGuard",
    "RedisClient",
    "RedisUnreachable",
    "bounded_client",
    "bounded_cluster_client",
    "is_cluster",
    "is_unavailable",
    "redis_errors",
    "run_script",
    "subscriber",
    "text",
]
