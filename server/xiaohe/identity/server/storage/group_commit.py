"""Group commit: small writes from concurrent requests of one process share a transaction.

A request that writes one row outside any unit of work (an outbox message, the
outcome of a delivery) pays for a whole transaction: the write lock, BEGIN, the
statement, COMMIT. Under load most of that is overhead. `GroupCommit.run(work)`
queues the write; one flusher task runs everything queued so far in a single
transaction, then wakes each caller with its own result. Each caller still
returns only after its write is committed, so durability is what it was.

If the shared transaction fails, its writes are retried one transaction each:
a write that is itself at fault (a constraint, a bad value) fails alone, and
its neighbours' writes are not lost with it. Inside a unit of work there is
nothing to group: the write joins that transaction, as every repository does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from xiaohe.identity.server.storage.database import Database, SqlConnection

T = TypeVar("T")

Write = Callable[[SqlConnection], Awaitable[T]]
"""One write: statements on the connection it is given, inside a transaction it does not own."""

MAX_BATCH = 128
"""Writes per shared transaction: bounds how long one transaction holds the write lock."""


@dataclass
class _Queued(Generic[T]):
    write: Write[T]
    done: asyncio.Future[T]


class GroupCommit:
    """Runs writes of concurrent tasks together, one transaction per batch."""

    def __init__(self, database: Database, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._database = database
        self._max_batch = max_batch
        self._queue: list[_Queued[Any]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, write: Write[T]) -> T:
        """Run `write` in a committed transaction (shared with concurrent writes); its result."""
        if self._database.in_transaction():
            async with self._database.begin() as conn:
                return await write(conn)
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(write, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # The flusher finishes the batch even if this caller is cancelled meanwhile.
        return await asyncio.shield(done)

    async def _flush(self) -> None:
        batch: list[_Queued[Any]] = []
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    results = await self._together(batch)
                except Exception:
                    await self._one_by_one(batch)
                    continue
                for queued, result in zip(batch, results, strict=True):
                    _settle(queued, result=result)
        except BaseException:
            # Cancelled (shutdown): nobody may wait for a flush that will not happen.
            for queued in [*batch, *self._queue]:
                _settle(queued, error=RuntimeError("group commit stopped before this write"))
            self._queue.clear()
            raise

    async def _together(self, batch: list[_Queued[Any]]) -> list[Any]:
        async with self._database.begin() as conn:
            return [await queued.write(conn) for queued in batch]

    async def _one_by_one(self, batch: list[_Queued[Any]]) -> None:
        for queued in batch:
            try:
                async with self._database.begin() as conn:
                    result = await queued.write(conn)
            except Exception as exc:
                _settle(queued, error=exc)
            else:
                _settle(queued, result=result)


def _settle(queued: _Queued[Any], *, result: Any = None, error: Exception | None = None) -> None:
    if queued.done.done():
        return
    if error is not None:
        queued.done.set_exception(error)
    else:
        queued.done.set_result(result)


__all__ = ["MAX_BATCH", "GroupCommit", "Write"]
