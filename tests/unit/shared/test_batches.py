"""Coalescer: concurrent submissions run in batches; each caller gets its own result."""

from __future__ import annotations

import asyncio

import pytest

from xiaohe.identity.server.shared.batches import Coalescer


async def test_concurrent_items_run_in_few_batches_and_each_gets_its_result() -> None:
    batches: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0)
        return [2 * i for i in items]

    coalescer: Coalescer[int, int] = Coalescer(double, max_batch=8)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(20)))
    assert results == [2 * i for i in range(20)]
    assert sorted(i for batch in batches for i in batch) == list(range(20))
    assert all(len(batch) <= 8 for batch in batches)
    assert len(batches) == 3


async def test_an_item_fails_alone_when_the_batch_says_so() -> None:
    async def refuse_odd(items: list[int]) -> list[int | Exception]:
        return [ValueError(f"odd {i}") if i % 2 else i for i in items]

    coalescer: Coalescer[int, int] = Coalescer(refuse_odd, max_batch=16)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(4)), return_exceptions=True)
    assert results[0] == 0
    assert results[2] == 2
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "odd 1"
    assert isinstance(results[3], ValueError)


async def test_a_batch_that_raises_fails_each_of_its_items_and_the_next_batch_runs() -> None:
    calls = 0

    async def first_fails(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        return items

    coalescer: Coalescer[int, int] = Coalescer(first_fails, max_batch=2)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(4)), return_exceptions=True)
    assert [type(r) for r in results[:2]] == [OSError, OSError]
    assert results[2:] == [2, 3]


async def test_a_cancelled_caller_does_not_stop_its_batch() -> None:
    ran: list[int] = []
    gate = asyncio.Event()

    async def slow(items: list[int]) -> list[int]:
        await gate.wait()
        ran.extend(items)
        return items

    coalescer: Coalescer[int, int] = Coalescer(slow, max_batch=4)
    caller = asyncio.create_task(coalescer.submit(1))
    other = asyncio.create_task(coalescer.submit(2))
    await asyncio.sleep(0)
    caller.cancel()
    gate.set()
    assert await other == 2
    assert ran == [1, 2]


async def test_a_stopped_flusher_tells_the_batch_in_flight_its_outcome_is_unknown() -> None:
    """Shutdown cancels the flusher mid-batch: the batch may have done its work, so its callers
    hear "outcome unknown"; callers still queued hear that nothing ran; nobody waits forever."""
    started = asyncio.Event()
    flusher: list[asyncio.Task[object]] = []

    async def hangs(items: list[int]) -> list[int]:
        task = asyncio.current_task()
        assert task is not None
        flusher.append(task)
        started.set()
        await asyncio.Event().wait()
        return items

    coalescer: Coalescer[int, int] = Coalescer(hangs, max_batch=1)
    in_flight = asyncio.create_task(coalescer.submit(1))
    queued = asyncio.create_task(coalescer.submit(2))
    await started.wait()
    flusher[0].cancel()
    with pytest.raises(RuntimeError, match="outcome is unknown"):
        await in_flight
    with pytest.raises(RuntimeError, match="before this item ran"):
        await queued


def test_a_batch_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        Coalescer(lambda items: asyncio.sleep(0, items), max_batch=0)
