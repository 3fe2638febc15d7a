"""The Lua building blocks, run as tiny scripts on real Redis (embedded and system)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from xiaohe.identity.server.ratelimit.scripts import CONSTANT_TIME_EQUAL_LUA
from xiaohe.identity.server.storage.redis import run_script

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
