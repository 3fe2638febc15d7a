"""The Lua building blocks, run as tiny scripts on real Redis (embedded and system)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, ResponseError

from xiaohe.identity.server.errors import Overloaded, Unavailable
from xiaohe.identity.server.ratelimit.scripts import (
    CONSTANT_TIME_EQUAL_LUA,
    is_unavailable,
    run_script,
)

CT_EQUAL = CONSTANT_TIME_EQUAL_LUA + "\nif ct_equal(ARGV[1], ARGV[2]) then return 1 end return 0\n"

# The same comparison, instrumented: how many byte pairs it visited.
CT_VISITS = (
    "local visits = 0\n"
    + CONSTANT_TIME_EQUAL_LUA.replace(
        "for i = 1, #a do", "for i = 1, #a do\n    visits = visits + 1"
    )
    + "\nct_equal(ARGV[1], ARGV[2]) return visits\n"
)


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("a" * 64, "a" * 64, True),
        ("a" * 64, "b" + "a" * 63, False),
        ("a" * 64, "a" * 63 + "b", False),
        ("a" * 64, "a" * 63, False),
        ("a" * 63, "a" * 64, False),
        ("", "", True),
        ("", "x", False),
        ("0" * 64, "\x00" * 64, False),
    ],
)
async def test_constant_time_equal(
    redis_client: aioredis.Redis, a: str, b: str, equal: bool
) -> None:
    """C1: ct_equal is plain equality, including length differences."""
    script = redis_client.register_script(CT_EQUAL)
    assert await run_script(script, [], [a, b]) == (1 if equal else 0)


async def test_constant_time_equal_visits_every_byte(redis_client: aioredis.Redis) -> None:
    """C1: no early exit: a first-byte difference costs as many steps as a last-byte one."""
    assert "visits = visits + 1" in CT_VISITS, "the instrumentation found the loop"
    script = redis_client.register_script(CT_VISITS)
    stored = "f" * 64
    first = await run_script(script, [], [stored, "0" + "f" * 63])
    last = await run_script(script, [], [stored, "f" * 63 + "0"])
    same = await run_script(script, [], [stored, stored])
    assert first == last == same == 64


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
