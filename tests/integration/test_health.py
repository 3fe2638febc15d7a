"""gRPC health and the callbacks' `/healthz` follow the stores: down, back, and down at start-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import Harness, HarnessFactory
from xiaohe.identity.server.app import SERVICE_NAMES
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health(h: Harness, service: str = "") -> int:
    """The status the gRPC health service gives for `service`."""
    stub = health_pb2_grpc.HealthStub(h.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def healthz(h: Harness) -> int:
    """The HTTP status of the callback listener's `/healthz`."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{h.running.callback_port}/healthz") as response,
    ):
        return response.status


async def until(h: Harness, status: int, seconds: float = 10.0) -> None:
    """Wait until the overall health is `status`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while await health(h) != status:
        assert asyncio.get_running_loop().time() < deadline, f"health never became {status}"
        await asyncio.sleep(0.05)


async def test_health_goes_not_serving_while_redis_is_down_and_serving_when_it_is_back(
    harness_factory: HarnessFactory, tmp_path: Path
) -> None:
    """Every service name and `/healthz` agree, both ways, without a restart."""
    redis_server = EmbeddedRedis(tmp_path / "redis")
    redis_url = redis_server.start()
    try:
        h = await harness_factory(
            redis_url=redis_url, health_check_seconds=0.1, callback_listen="127.0.0.1:0"
        )
        assert await health(h) == SERVING
        assert await healthz(h) == 200
        await asyncio.to_thread(redis_server.stop)
        await until(h, NOT_SERVING)
        for name in SERVICE_NAMES:
            assert await health(h, name) == NOT_SERVING
        assert await healthz(h) == 503
        await asyncio.to_thread(redis_server.start)
        await until(h, SERVING)
        for name in SERVICE_NAMES:
            assert await health(h, name) == SERVING
        assert await healthz(h) == 200
    finally:
        redis_server.stop()


async def test_a_worker_whose_redis_is_down_at_start_up_never_reports_serving(
    harness_factory: HarnessFactory, tmp_path: Path
) -> None:
    """Started against a Redis socket nobody listens on: NOT_SERVING from the first answer."""
    h = await harness_factory(redis_url=f"unix://{tmp_path / 'nobody.sock'}")
    assert await health(h) == NOT_SERVING
    assert await health(h, SERVICE_NAMES[0]) == NOT_SERVING
    assert not h.running.reporter.first_serving.is_set()


async def test_stopping_reports_not_serving(harness_factory: HarnessFactory) -> None:
    """A worker told to stop answers NOT_SERVING while in-flight calls finish."""
    h = await harness_factory(health_check_seconds=0.1)
    assert await health(h) == SERVING
    await h.running.reporter.stop()
    assert await health(h) == NOT_SERVING
    await asyncio.sleep(0.3)  # no check brings it back
    assert await health(h) == NOT_SERVING
