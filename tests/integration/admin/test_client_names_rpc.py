"""AdminService clients: names an operator reads are one clean line; errors quote input bounded."""

from __future__ import annotations

import grpc
import pytest

from tests.integration.conftest import Harness
from tests.rpc_errors import details_of
from xiaohe.identity.v1 import admin_pb2, admin_pb2_grpc, auth_pb2, auth_pb2_grpc


@pytest.mark.parametrize(
    "name",
    [
        "web-bff\nclient_id=xhc_forged admin",
        "web\rbff",
        "billing\u202etnuocca",  # right-to-left override: reads as "billingaccount"
        "billing\u2066x\u2069",  # directional isolates
        "zero\u200bwidth",
        "line\u2028separator",
        "bell\x07",
    ],
)
async def test_client_names_with_line_breaks_or_direction_marks_are_refused(
    h: Harness, name: str
) -> None:
    """I7: a client name is one printable line; nothing is created otherwise."""
    stub = admin_pb2_grpc.AdminServiceStub(h.channel)
    before = await stub.ListClients(admin_pb2.ListClientsRequest(), metadata=h.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateClient(
            admin_pb2.CreateClientRequest(name=name, grants=["codes"]), metadata=h.metadata
        )
    d = details_of(caught.value)
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(d.violations) == {"name"}
    after = await stub.ListClients(admin_pb2.ListClientsRequest(), metadata=h.metadata)
    assert len(after.clients) == len(before.clients)


async def test_a_chinese_client_name_is_accepted(h: Harness) -> None:
    stub = admin_pb2_grpc.AdminServiceStub(h.channel)
    created = await stub.CreateClient(
        admin_pb2.CreateClientRequest(name="小禾 企服 前端", grants=["codes"]), metadata=h.metadata
    )
    assert created.client.name == "小禾 企服 前端"


async def test_a_second_live_client_with_a_name_is_refused_with_already_exists(
    h: Harness,
) -> None:
    """Names tell clients apart in listings and audit exports: a live one is never repeated."""
    stub = admin_pb2_grpc.AdminServiceStub(h.channel)
    first = await stub.CreateClient(
        admin_pb2.CreateClientRequest(name="web-bff", grants=["codes"]), metadata=h.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateClient(
            admin_pb2.CreateClientRequest(name="web-bff", grants=["auth"]), metadata=h.metadata
        )
    d = details_of(caught.value)
    assert (d.code, d.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")
    assert set(d.violations) == {"name"}
    assert first.client.client_id in d.message
    assert first.client_secret not in d.message
    listed = await stub.ListClients(admin_pb2.ListClientsRequest(), metadata=h.metadata)
    assert [c.name for c in listed.clients].count("web-bff") == 1

    await stub.RevokeClient(
        admin_pb2.RevokeClientRequest(client_id=first.client.client_id), metadata=h.metadata
    )
    again = await stub.CreateClient(
        admin_pb2.CreateClientRequest(name="web-bff", grants=["auth"]), metadata=h.metadata
    )
    assert again.client.client_id != first.client.client_id


async def test_an_unknown_grant_is_quoted_bounded(h: Harness) -> None:
    """Error messages never echo unbounded caller input."""
    huge = "x" * 10_000
    stub = admin_pb2_grpc.AdminServiceStub(h.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateClient(
            admin_pb2.CreateClientRequest(
                name="probe", grants=[huge, "y\n" * 50, *[f"g{i}" for i in range(10)]]
            ),
            metadata=h.metadata,
        )
    d = details_of(caught.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(d.message) < 600
    assert huge not in d.message
    assert "\n" not in d.message


async def test_permission_denied_does_not_echo_the_requested_audience(h: Harness) -> None:
    """A refused audience is not repeated back to the caller."""
    metadata = await h.client_metadata("auth")
    audience = "a" * 100
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_pb2_grpc.AuthServiceStub(h.channel).Login(
            auth_pb2.LoginRequest(
                password=auth_pb2.PasswordCredential(identifier="zhang.wei", password="x" * 12),
                audience=audience,
            ),
            metadata=metadata,
        )
    d = details_of(caught.value)
    assert d.code == grpc.StatusCode.PERMISSION_DENIED
    assert audience not in d.message
