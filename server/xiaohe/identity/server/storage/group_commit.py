"""Group commit: small writes from concurrent requests of one process share a transaction.

A request that writes one row outside any unit of work (an outbox message, the
outcome of a delivery) pays for a whole transaction: the write lock, BEGIN, the
statement, COMMIT. Under load most of that is overhead. `GroupCommit.run(work)`
queues the write; one flusher task runs everything queued so far in a single
transaction, then wakes each caller with its own result. Each caller still
returns only after its write is committed, so durability is what it was.

If a write of the shared transaction fails, the batch is retried one
transaction per write: a write that is itself at fault (a constraint, a bad
value) fails alone, and its neighbours' writes are not lost with it. If the
transaction fails around its writes (BEGIN, or COMMIT with an unknown outcome),
every write of the batch fails and none is run again. Inside a unit of work there is
nothing to group: the write joins that transaction, as every repository does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from xiaohe.identity.server.shared.batches import Coalescer
from xiaohe.identity.server.storage.database import Database, SqlConnection

T = TypeVar("T")

Write = Callable[[SqlConnection], Awaitable[T]]
"""One write: statements on the connection it is given, inside a transaction it does not own."""

MAX_BATCH = 128
"""Writes per shared transaction: bounds how long one transaction holds the write lock."""


class GroupCommit:
    """Runs writes of concurrent tasks together, one transaction per batch."""

    def __init__(self, database: Database, max_batch: int = MAX_BATCH) -> None:
        self._database = database
        self._batches: Coalescer[Write[Any], Any] = Coalescer(self._run_batch, max_batch)

    async def run(self, write: Write[T]) -> T:
        """Run `write` in a committed transaction (shared with concurrent writes); its result."""
        if self._database.in_transaction():
            async with self._database.begin() as conn:
                return await write(conn)
        result: T = await self._batches.submit(write)
        return result

    async def _run_batch(self, batch: list[Write[Any]]) -> list[Any]:
        """The batch in one transaction; if one of its writes fails, each write alone.

        A failure of the transaction itself (BEGIN, or a COMMIT whose outcome is
        unknown: the connection dropped) fails every write of the batch: retrying
        them could run a committed write twice.
        """
        write_failed = False
        try:
            async with self._database.begin() as conn:
                results = []
                for write in batch:
                    try:
                        results.append(await write(conn))
                    except Exception:
                        write_failed = True
                        raise
                return results
        except Exception:
            if not write_failed:
                raise
            return await self._one_by_one(batch)

    async def _one_by_one(self, batch: list[Write[Any]]) -> list[Any]:
        results: list[Any] = []
        for write in batch:
            try:
                async with self._database.begin() as conn:
                    results.append(await write(conn))
            except Exception as exc:
                results.append(exc)
        return results


__all__ = ["MAX_BATCH", "GroupCommit", "Write"]
