"""A refused call names the method and the grant it needs, never the caller's secret."""

from __future__ import annotations

import grpc
import pytest

from tests.integration.conftest import Harness
from tests.rpc_errors import details_of
from xiaohe.identity.client.errors import PermissionDenied, from_rpc_error
from xiaohe.identity.v1 import admin_pb2, admin_pb2_grpc

LIST_CLIENTS = "/xiaohe.identity.v1.AdminService/ListClients"


async def test_permission_denied_names_the_method_and_the_missing_grant(h: Harness) -> None:
    """An operator reading the error knows which grant to add, and to which client."""
    metadata = await h.client_metadata("codes")
    client_id, secret = metadata[0][1], metadata[1][1]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin_pb2_grpc.AdminServiceStub(h.channel).ListClients(
            admin_pb2.ListClientsRequest(), metadata=metadata
        )
    d = details_of(caught.value)
    assert (d.code, d.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert LIST_CLIENTS in d.message
    assert "'admin'" in d.message
    assert client_id in d.message
    assert secret not in d.message
    assert secret not in str(d.info)
    assert "\n" not in d.message
    assert (d.info["method"], d.info["grant"]) == (LIST_CLIENTS, "admin")
    assert d.info["request_id"] == d.request_id

    sdk_error = from_rpc_error(caught.value)
    assert isinstance(sdk_error, PermissionDenied)
    assert (sdk_error.method, sdk_error.required_grant) == (LIST_CLIENTS, "admin")
