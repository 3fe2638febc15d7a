"""A recycled-number report seen through the real RPCs (SECURITY H3, T3; acceptance of issue 10).

The report arrives as a carrier sends it, `CarrierHookService.ReportRecycledNumber`
from a client holding only the `carrier-hooks` grant; everything after it goes over
gRPC on the in-process server too: the old token is refused, codes to the number are not
sent, the next password login answers NEXT_STEP_PHONE_REVERIFY_REQUIRED with a
token that serves nothing, and the number registers a new account.
"""

from __future__ import annotations

import grpc
import pytest

from tests.integration.conftest import Harness, wait_for_outbox
from tests.integration.flows import (
    LOGIN_NAME,
    OTHER_LOGIN_NAME,
    PASSWORD,
    PHONE,
    login,
    register,
    stubs,
)
from xiaohe.identity.v1 import (
    accounts_pb2,
    auth_pb2,
    carriers_pb2,
    carriers_pb2_grpc,
    codes_pb2,
    common_pb2,
)

UNKNOWN_PHONE = "+8613911112222"


def bearer(h: Harness, token: str) -> tuple[tuple[str, str], ...]:
    """The client credentials plus `authorization: Bearer <token>`."""
    return (*h.metadata, ("authorization", f"Bearer {token}"))


async def test_a_reported_number_ends_access_and_frees_the_number(h: Harness) -> None:
    """H3, T3: after the report the token is invalid, LOGIN and RESET_PASSWORD codes to the
    number are not sent (same answer as an unknown number), the next password login must
    re-verify the phone, and a new registration with the number succeeds."""
    s = stubs(h)
    old_account = await register(h, LOGIN_NAME, PHONE)
    session = await login(h, LOGIN_NAME)
    valid = await s.auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=session.access_token), metadata=h.metadata
    )
    assert valid.valid

    h.clock.advance(60)  # the number was bound before it was recycled; the token still lives
    carrier, secret = await h.container.clients.create("carrier feed", ["carrier-hooks"])
    report = carriers_pb2.ReportRecycledNumberRequest(phone=PHONE)
    report.recycled_at.FromSeconds(int(h.clock.now()) - 30)
    await carriers_pb2_grpc.CarrierHookServiceStub(h.channel).ReportRecycledNumber(
        report, metadata=(("x-client-id", carrier.client_id), ("x-client-secret", secret))
    )

    refused = await s.auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=session.access_token), metadata=h.metadata
    )
    assert not refused.valid

    sent_before = len(await wait_for_outbox(h, 0))
    for purpose in (common_pb2.PURPOSE_LOGIN, common_pb2.PURPOSE_RESET_PASSWORD):
        answers = []
        for phone in (PHONE, UNKNOWN_PHONE):
            issued = await s.codes.IssueCode(
                codes_pb2.IssueCodeRequest(
                    channel=common_pb2.CHANNEL_SMS, destination=phone, purpose=purpose
                ),
                metadata=h.metadata,
            )
            answers.append((issued.expires_in_seconds, issued.resend_after_seconds))
        assert answers[0] == answers[1]
        h.clock.advance(61)  # past the per-number cooldown
    await h.drain_outbox()
    assert len(h.outbox_lines("sms")) == sent_before

    response = await s.auth.Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=LOGIN_NAME, password=PASSWORD)
        ),
        metadata=h.metadata,
    )
    assert response.next_step == auth_pb2.NEXT_STEP_PHONE_REVERIFY_REQUIRED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await s.accounts.GetAccount(
            accounts_pb2.GetAccountRequest(), metadata=bearer(h, response.session.access_token)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "BindPhone" in (caught.value.details() or "")
    restricted = await s.auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=response.session.access_token),
        metadata=h.metadata,
    )
    assert not restricted.valid

    new_account = await register(h, OTHER_LOGIN_NAME, PHONE)
    assert new_account != old_account
