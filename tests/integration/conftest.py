"""An in-process server on port 0 over real stores, with a client holding every grant."""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from xiaohe.identity.server.app import RunningServer, start_server
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.config import Settings
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.migrate import upgrade_async


@dataclass
class Harness:
    """What an integration test needs: the channel, credentials and the server's insides."""

    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...]
    container: Container
    running: RunningServer
    clock: FakeClock
    data_dir: Path

    def outbox_lines(self, channel: str = "sms") -> list[dict[str, str]]:
        """The dev provider's messages so far."""
        path = self.data_dir / "outbox" / f"{channel}.jsonl"
        if not path.exists():
            return []
        written = path.read_text().rpartition("\n")[0]  # a line being written is not yet one
        return [json.loads(line) for line in written.splitlines() if line.strip()]

    async def client_metadata(self, *grants: str) -> tuple[tuple[str, str], ...]:
        """Credentials of a new client with exactly these grants."""
        # Live clients' names are unique: each test client gets its own.
        name = f"test-{secrets.token_hex(4)}"
        client, secret = await self.container.clients.create(name, list(grants))
        return (("x-client-id", client.client_id), ("x-client-secret", secret))

    async def drain_outbox(self) -> None:
        """Deliver everything queued now (the background loop would do it within a second).

        Sends already handed off finish first: a test that then moves the fake clock past
        their lease would otherwise have them re-claimed and sent a second time."""
        await self.container.dispatcher.settle()
        await self.container.dispatcher.run_once()


def harness_settings(data_dir: Path, **changes: object) -> Settings:
    """Settings for a test server: data in data_dir, cheap Argon2."""
    base = Settings(
        listen="127.0.0.1:0",
        data_dir=data_dir,
        argon2_memory_kib=64,
        argon2_time_cost=1,
        password_hash_threads=2,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def harness_factory(
    tmp_path: Path, embedded_redis: EmbeddedRedis, clock: FakeClock
) -> AsyncIterator[HarnessFactory]:
    """Starts servers on SQLite and the embedded Redis (db 2, emptied), with setting overrides."""
    import redis.asyncio as aioredis

    started: list[Harness] = []

    async def make(redis_url: str = "", **overrides: object) -> Harness:
        """A server with these setting overrides (on `redis_url` if given, else db 2, emptied)."""
        if not redis_url:
            redis_url = embedded_redis.url + "?db=2"
            r = aioredis.Redis.from_url(redis_url)
            await r.flushdb()
            await r.aclose()
        settings = harness_settings(tmp_path / f"var{len(started) or ''}", **overrides)
        settings.data_dir.mkdir(parents=True)
        await upgrade_async(settings.effective_database_url)
        container = Container(settings, redis_url=redis_url, clock=clock)
        running = await start_server(container, settings.listen)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        client, secret = await container.clients.create("integration", ["*"])
        metadata = (("x-client-id", client.client_id), ("x-client-secret", secret))
        harness = Harness(channel, metadata, container, running, clock, settings.data_dir)
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await harness.channel.close()
        await harness.running.stop(0)
        await harness.container.close()


@pytest.fixture
async def h(harness_factory: HarnessFactory) -> Harness:
    """A started server on SQLite and the embedded Redis (db 2, emptied)."""
    return await harness_factory()


async def wait_for_outbox(h: Harness, count: int, channel: str = "sms") -> list[dict[str, str]]:
    """Deliver queued messages until the dev outbox has `count` lines (or give up after ~5 s)."""
    import asyncio

    for _ in range(100):
        await h.drain_outbox()
        lines = h.outbox_lines(channel)
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.05)
    return h.outbox_lines(channel)
