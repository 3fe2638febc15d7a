"""Audiences a client may ask for, logout by any audience's token, and per-IP limits that a
trusted front end cannot switch off by omitting or garbling the end-user address."""

from __future__ import annotations

import grpc
import pytest

from tests.integration.codes.test_code_rpcs import issue_request
from tests.integration.conftest import Harness
from tests.integration.flows import LOGIN_NAME, PASSWORD, PHONE, register, stubs
from tests.rpc_errors import details_of
from xiaohe.identity.v1 import auth_pb2


def password_login(audience: str) -> auth_pb2.LoginRequest:
    return auth_pb2.LoginRequest(
        password=auth_pb2.PasswordCredential(identifier=LOGIN_NAME, password=PASSWORD),
        audience=audience,
    )


async def test_audiences_need_a_grant_and_are_validated(h: Harness) -> None:
    """F3 and token audiences: a malformed audience is INVALID_ARGUMENT, a foreign one needs
    `audience:NAME`, and Refresh cannot switch a session to an audience not granted."""
    await register(h, LOGIN_NAME, PHONE)
    auth = stubs(h).auth
    web = await h.client_metadata("auth", "validate")
    crm = await h.client_metadata("auth", "audience:crm")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Login(password_login("a" * 101), metadata=web)
    assert details_of(caught.value).violations.keys() == {"audience"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Login(password_login("crm"), metadata=web)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    session = (await auth.Login(password_login("crm"), metadata=crm)).session
    valid = await auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=session.access_token, audience="crm"),
        metadata=web,
    )
    assert valid.valid
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Refresh(
            auth_pb2.RefreshRequest(refresh_token=session.refresh_token, audience="admin"),
            metadata=crm,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    refreshed = await auth.Refresh(
        auth_pb2.RefreshRequest(refresh_token=session.refresh_token), metadata=crm
    )
    kept = await auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=refreshed.session.access_token, audience="crm"),
        metadata=web,
    )
    assert kept.valid


async def test_logout_with_an_access_token_of_another_audience(h: Harness) -> None:
    """T3: an access token ends its own session whatever audience it was issued for."""
    await register(h, LOGIN_NAME, PHONE)
    auth = stubs(h).auth
    session = (await auth.Login(password_login("crm"), metadata=h.metadata)).session
    await auth.Logout(
        auth_pb2.LogoutRequest(access_token=session.access_token), metadata=h.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Refresh(
            auth_pb2.RefreshRequest(refresh_token=session.refresh_token), metadata=h.metadata
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("forwarded", [None, "", "not-an-address", "999.1.1.1"])
async def test_a_trusted_client_cannot_switch_per_ip_limits_off(
    h: Harness, forwarded: str | None
) -> None:
    """C6/B1: without a valid forwarded address the caller's own address is limited."""
    codes = stubs(h).codes
    front_end = await h.client_metadata("codes", "forward-end-user")
    if forwarded is not None:
        front_end = (*front_end, ("x-end-user-ip", forwarded))
    outcomes = []
    for i in range(32):
        # One number per prefix, so the per-prefix defences (X3) stay out of the way.
        try:
            await codes.IssueCode(issue_request(f"+86137{i:02d}{i:06d}"), metadata=front_end)
            outcomes.append("ok")
        except grpc.aio.AioRpcError as exc:
            outcomes.append(details_of(exc).quota_subjects[0])
    assert outcomes.count("ok") == 30
    assert outcomes[30:] == ["code.issue.ip", "code.issue.ip"]
