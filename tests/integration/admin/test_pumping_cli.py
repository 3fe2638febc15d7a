"""`xiaohe-identity pumping list|lift` against a real Redis, as an operator runs them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from xiaohe.identity.server.cli import main
from xiaohe.identity.server.clock import SystemClock
from xiaohe.identity.server.ratelimit.prefix_watch import PrefixWatch
from xiaohe.identity.server.ratelimit.prefixes import PumpingPolicy
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis


async def _block(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    watch = PrefixWatch(client, SystemClock(), PumpingPolicy(watch_min_sent=2))
    await watch.delivery_failed(prefix)
    await watch.delivery_failed(prefix)
    await client.aclose()


def test_list_and_lift_from_the_command_line(
    tmp_path: Path,
    embedded_redis: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator sees the block, lifts it, and a bad prefix gets a clear one-line error."""
    url = embedded_redis.url + "?db=4"
    asyncio.run(_block(url, "86-1700123"))
    monkeypatch.setenv("XIAOHE_IDENTITY_REDIS_URL", url)
    monkeypatch.setenv("XIAOHE_IDENTITY_DATA_DIR", str(tmp_path / "var"))

    assert main(["pumping", "list"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["prefix"], listed["reason"], listed["failed"]) == (
        "86-1700123",
        "failed_receipts",
        2,
    )
    assert main(["pumping", "lift", "86-1700123"]) == 0
    assert json.loads(capsys.readouterr().out) == {"prefix": "86-1700123", "lifted": True}
    assert main(["pumping", "list"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["pumping", "lift", "+8617001230000"]) == 1
    assert "prefix" in capsys.readouterr().err
