"""Coalescing: what concurrent tasks of one process submit while a batch runs forms the next.

Used where a fixed cost per operation dominates its own work: a transaction
(storage/group_commit.py), the audit chain's head and lock (audit/log.py), an
open, lock and fsync of the dev outbox file (delivery/providers.py). The first
submission starts a flusher task; everything submitted until it runs, and while
a batch is in progress, goes into the next batch (at most `max_batch` items).
Each caller waits for its own result, so a caller returns only once its item
is done, exactly as if it had run alone; a caller that is cancelled stops
waiting, and its item still runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

RunBatch = Callable[[list[T]], Awaitable[Sequence["R | Exception"]]]
"""Runs a batch; one result per item, in order: a value, or the exception that item fails with.

If it raises instead, every item of the batch fails with that exception."""


@dataclass
class _Submitted(Generic[T, R]):
    item: T
    done: asyncio.Future[R]


class Coalescer(Generic[T, R]):
    """Runs the items of concurrent callers in batches, one batch at a time."""

    def __init__(self, run_batch: RunBatch[T, R], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._queue: list[_Submitted[T, R]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Run `item` in the next batch; its result, or its exception raised here."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Submitted(item, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # A cancelled caller cancels only its wait: the flusher runs its item all the same.
        return await done

    async def _flush(self) -> None:
        batch: list[_Submitted[T, R]] = []
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    results: Sequence[Any] = await self._run_batch([s.item for s in batch])
                except Exception as exc:
                    results = [exc] * len(batch)
                for submitted, result in zip(batch, results, strict=True):
                    _settle(submitted.done, result)
                batch = []
        except BaseException:
            # Cancelled (shutdown): nobody may wait for a batch that will not finish. The
            # batch in flight may have done its work (a commit under way), so its callers
            # are told the outcome is unknown; the queued ones that nothing ran.
            unknown = RuntimeError("stopped while this item ran: its outcome is unknown")
            for submitted in batch:
                _settle(submitted.done, unknown)
            stopped = RuntimeError("stopped before this item ran")
            for submitted in self._queue:
                _settle(submitted.done, stopped)
            self._queue.clear()
            raise


def _settle(done: asyncio.Future[Any], result: Any) -> None:
    if done.done():
        return
    if isinstance(result, Exception):
        done.set_exception(result)
    else:
        done.set_result(result)


__all__ = ["Coalescer", "RunBatch"]
