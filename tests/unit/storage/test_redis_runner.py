"""The Redis script runner and the outage guard: what fails closed, and how fast."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from xiaohe.identity.server.errors import Overloaded, Unavailable
from xiaohe.identity.server.storage.redis import (
    OutageGuard,
    RedisUnreachable,
    is_unavailable,
    run_script,
)


class _Raising:
    """A stand-in for a registered script that fails like redis-py would."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def __call__(self, keys: object = None, args: object = None) -> object:
        raise self.exc


@pytest.mark.parametrize(
    "exc",
    [
        RedisConnectionError("Error 111 connecting"),
        ResponseError("LOADING Redis is loading the dataset in memory"),
        ResponseError("BUSY Redis is busy running a script"),
        ResponseError("MASTERDOWN Link with MASTER is down"),
        ConnectionRefusedError(),
        TimeoutError(),
    ],
)
async def test_connection_type_failures_become_unavailable(exc: Exception) -> None:
    """F1: anything meaning "Redis cannot serve now" fails closed as Unavailable."""
    assert is_unavailable(exc)
    with pytest.raises(Unavailable):
        await run_script(_Raising(exc), [], [])  # type: ignore[arg-type]


async def test_pool_exhaustion_is_overload() -> None:
    """F1: a full local connection pool sheds load (Overloaded) instead of queueing."""
    with pytest.raises(Overloaded):
        await run_script(_Raising(MaxConnectionsError("Too many connections")), [], [])  # type: ignore[arg-type]


async def test_script_bugs_are_not_disguised_as_outages() -> None:
    """A script error is a bug: it propagates (INTERNAL), it is not Unavailable."""
    exc = ResponseError("ERR Error running script: attempt to compare nil with number")
    assert not is_unavailable(exc)
    with pytest.raises(ResponseError):
        await run_script(_Raising(exc), [], [])  # type: ignore[arg-type]


class _Monotonic:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _hang() -> None:
    await asyncio.Event().wait()


async def _answer() -> str:
    return "PONG"


async def test_a_stalled_operation_fails_within_its_bound_and_later_ones_fail_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """F1, F4: a Redis that answers nothing is treated as down after one bounded wait."""
    clock = _Monotonic()
    guard = OutageGuard(0.05, probe_interval=0.5, monotonic=clock)
    caplog.set_level(logging.INFO, logger="xiaohe.identity.redis")
    with pytest.raises(RedisTimeoutError):
        await guard.run(_hang)
    assert not guard.reachable
    attempts: list[str] = []

    async def counted() -> str:
        attempts.append("tried")
        return await _answer()

    for _ in range(50):  # refused without trying, so without waiting
        with pytest.raises(RedisUnreachable):
            await guard.run(counted)
    assert attempts == []
    assert is_unavailable(RedisUnreachable("x"))
    outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage_lines) == 1


async def test_one_probe_per_interval_brings_redis_back(caplog: pytest.LogCaptureFixture) -> None:
    """F1: recovery needs no restart; the first answered probe ends the outage, logged once."""
    clock = _Monotonic()
    guard = OutageGuard(0.05, probe_interval=0.5, monotonic=clock)
    caplog.set_level(logging.INFO, logger="xiaohe.identity.redis")
    with pytest.raises(RedisTimeoutError):
        await guard.run(_hang)
    clock.now += 0.5
    with pytest.raises(RedisTimeoutError):  # the probe: Redis still stalled
        await guard.run(_hang)
    with pytest.raises(RedisUnreachable):  # no second probe inside the interval
        await guard.run(_answer)
    clock.now += 0.5
    assert await guard.run(_answer) == "PONG"
    assert guard.reachable
    assert await guard.run(_answer) == "PONG"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("answers again" in m for m in messages) == 1


@pytest.mark.parametrize(
    "exc",
    [
        ResponseError("ERR Error running script"),
        ResponseError("LOADING Redis is loading the dataset in memory"),
        MaxConnectionsError("Too many connections"),
    ],
)
async def test_answers_from_redis_and_a_busy_pool_are_not_an_outage(exc: Exception) -> None:
    """F1: Redis answered (or this process is busy): the next operation still tries."""
    guard = OutageGuard(0.05, monotonic=_Monotonic())

    async def failing() -> None:
        raise exc

    with pytest.raises(type(exc)):
        await guard.run(failing)
    assert guard.reachable
    assert await guard.run(_answer) == "PONG"


async def test_a_refused_connection_starts_an_outage() -> None:
    """F1: a connection refused counts like a stall."""
    guard = OutageGuard(0.05, monotonic=_Monotonic())

    async def refused() -> None:
        raise RedisConnectionError("Error 111 connecting")

    with pytest.raises(RedisConnectionError):
        await guard.run(refused)
    assert not guard.reachable
