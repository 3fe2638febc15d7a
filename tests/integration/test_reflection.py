"""Server reflection as current tools use it: `buf curl` over grpc.reflection.v1 and v1alpha.

`buf curl` is a real reflection client (it ships in the venv with buf). It runs as a
subprocess against the in-process server, without credentials: reflection is public.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.integration.conftest import Harness
from xiaohe.identity.server.app import SERVICE_NAMES

BUF = str(Path(sys.executable).parent / "buf")
V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
HEALTH = "grpc.health.v1.Health"


async def buf_curl(h: Harness, *args: str) -> tuple[int, str, str]:
    """Run `buf curl` over plaintext gRPC against the harness; (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        BUF,
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def base_url(h: Harness) -> str:
    """The server's address as buf curl takes it."""
    return f"http://127.0.0.1:{h.running.port}"


async def test_v1_reflection_lists_every_service_without_credentials(h: Harness) -> None:
    """Over v1 alone, buf curl lists our services, health and both reflections."""
    status, out, err = await buf_curl(
        h, "--reflect-protocol", "grpc-v1", "--list-services", base_url(h)
    )
    assert status == 0, err
    listed = set(out.split())
    assert listed == {*SERVICE_NAMES, HEALTH, V1, V1ALPHA}


async def test_v1_reflection_describes_every_listed_service_including_itself(h: Harness) -> None:
    """Listing methods needs each service's file over v1, the v1 reflection service's own too."""
    status, out, err = await buf_curl(
        h, "--reflect-protocol", "grpc-v1", "--list-methods", base_url(h)
    )
    assert status == 0, err
    methods = set(out.split())
    assert f"{V1}/ServerReflectionInfo" in methods
    assert f"{V1ALPHA}/ServerReflectionInfo" in methods
    assert "xiaohe.identity.v1.CodeService/IssueCode" in methods
    assert f"{HEALTH}/Check" in methods


async def test_a_call_built_from_v1_reflection_reaches_the_method(h: Harness) -> None:
    """buf curl learns Health/Check's types over v1 alone and the call answers SERVING."""
    status, out, err = await buf_curl(
        h,
        "--reflect-protocol",
        "grpc-v1",
        "-d",
        '{"service": ""}',
        f"{base_url(h)}/{HEALTH}/Check",
    )
    assert status == 0, err
    assert json.loads(out) == {"status": "SERVING"}


async def test_v1alpha_reflection_still_lists_every_service(h: Harness) -> None:
    """Older tools ask v1alpha; it answers the same list."""
    status, out, err = await buf_curl(
        h, "--reflect-protocol", "grpc-v1alpha", "--list-services", base_url(h)
    )
    assert status == 0, err
    assert set(out.split()) == {*SERVICE_NAMES, HEALTH, V1, V1ALPHA}


async def test_garbage_to_v1_reflection_is_refused_as_invalid_argument(h: Harness) -> None:
    """The v1 path is public and decoded by the interceptor like v1alpha: no UNKNOWN, counted."""

    async def garbage() -> AsyncIterator[bytes]:
        yield b"\xff\xff\xff\xff"

    reflect = h.channel.stream_stream(
        f"/{V1}/ServerReflectionInfo", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in reflect(garbage()):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    counted = h.container.metrics.registry.get_sample_value(
        "xiaohe_undecodable_requests_total", {"method": "ServerReflectionInfo"}
    )
    assert counted == 1.0
