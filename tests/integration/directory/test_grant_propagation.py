"""A change of a client's grants takes effect on every worker within a second (issue 13).

Two workers (two containers, two servers) on one SQLite database and one Redis, as
`serve` runs them: the client is cached by the worker that serves it, the grants are
changed through the other one, and the first refuses the withdrawn field and
releases the new one within a second of real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.integration.conftest import Harness
from tests.integration.flows import LOGIN_NAME, PHONE, register
from xiaohe.identity.server.app import RunningServer, start_server
from xiaohe.identity.server.container import Container
from xiaohe.identity.v1 import admin_pb2, admin_pb2_grpc, directory_pb2, directory_pb2_grpc

F = directory_pb2
PROPAGATION_SECONDS = 1.0


@pytest.fixture
async def second_worker(h: Harness) -> AsyncIterator[grpc.aio.Channel]:
    """Another worker on the same database, Redis and keys as `h`."""
    container = Container(h.container.settings, redis_url=h.container.redis_url, clock=h.clock)
    running: RunningServer = await start_server(container, h.container.settings.listen)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield channel
    await channel.close()
    await running.stop(0)
    await container.close()


async def _code(
    stub: directory_pb2_grpc.DirectoryServiceAsyncStub,
    request: F.GetIdentityRequest,
    metadata: tuple[tuple[str, str], ...],
) -> grpc.StatusCode:
    try:
        await stub.GetIdentity(request, metadata=metadata)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_a_grant_change_reaches_the_other_worker_within_a_second(
    h: Harness, second_worker: grpc.aio.Channel
) -> None:
    account_id = await register(h, LOGIN_NAME, PHONE)
    business = await h.client_metadata("directory", "field:login_name", "purpose:support")
    client_id = dict(business)["x-client-id"]
    other: directory_pb2_grpc.DirectoryServiceAsyncStub = directory_pb2_grpc.DirectoryServiceStub(
        second_worker
    )  # type: ignore[assignment]
    login_name = F.GetIdentityRequest(
        account_id=account_id, fields=[F.IDENTITY_FIELD_LOGIN_NAME], purpose="support"
    )
    phone = F.GetIdentityRequest(
        account_id=account_id, fields=[F.IDENTITY_FIELD_PHONE], purpose="support"
    )
    # The second worker now holds the client, with its grants, in its cache.
    assert await _code(other, login_name, business) == grpc.StatusCode.OK
    assert await _code(other, phone, business) == grpc.StatusCode.PERMISSION_DENIED

    await admin_pb2_grpc.AdminServiceStub(h.channel).SetClientGrants(
        admin_pb2.SetClientGrantsRequest(
            client_id=client_id, grants=["directory", "field:phone", "purpose:support"]
        ),
        metadata=h.metadata,
    )
    changed_at = time.monotonic()
    while True:
        withdrawn = await _code(other, login_name, business)
        granted = await _code(other, phone, business)
        elapsed = time.monotonic() - changed_at
        if (withdrawn, granted) == (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK):
            break
        assert elapsed < PROPAGATION_SECONDS, "the other worker still serves the old grants"
        await asyncio.sleep(0.02)
    assert elapsed < PROPAGATION_SECONDS
