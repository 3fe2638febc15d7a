"""CodeService over real gRPC: the acceptance flows of the code service, in-process on port 0."""

from __future__ import annotations

import re

import grpc
import pytest

from tests.integration.conftest import Harness, wait_for_outbox
from tests.rpc_errors import details_of
from xiaohe.identity.server.delivery.templates import render_code_email_subject
from xiaohe.identity.v1 import codes_pb2, codes_pb2_grpc, common_pb2

PHONE = "+8613800138000"


def issue_request(
    destination: str = PHONE,
    purpose: int = common_pb2.PURPOSE_REGISTER,
    channel: int = common_pb2.CHANNEL_SMS,
) -> codes_pb2.IssueCodeRequest:
    return codes_pb2.IssueCodeRequest(channel=channel, destination=destination, purpose=purpose)


def code_from(line: dict[str, str]) -> str:
    match = re.search(r"\d{6}", line["text"])
    assert match, "the message text holds the code"
    return match.group(0)


async def test_issue_writes_one_outbox_line_and_verify_returns_a_ticket(h: Harness) -> None:
    """C1, C4: the code reaches only the provider; VerifyCode turns it into a ticket."""
    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    issued = await stub.IssueCode(issue_request(), metadata=h.metadata)
    assert issued.expires_in_seconds == 300
    assert issued.resend_after_seconds == 60
    lines = await wait_for_outbox(h, 1)
    assert len(lines) == 1
    line = lines[0]
    assert set(line) == {"to", "channel", "purpose", "text", "message_id", "at"}
    assert line["to"] == PHONE
    assert line["purpose"] == "REGISTER"
    code = code_from(line)
    assert code not in issued.code_id
    verified = await stub.VerifyCode(
        codes_pb2.VerifyCodeRequest(
            channel=common_pb2.CHANNEL_SMS,
            destination=PHONE,
            purpose=common_pb2.PURPOSE_REGISTER,
            code=code,
        ),
        metadata=h.metadata,
    )
    assert verified.ticket.startswith("vt1.")
    assert verified.expires_in_seconds > 0


async def test_a_code_email_has_a_subject_without_the_code(h: Harness) -> None:
    """An email code is delivered with its purpose's subject line; the code is only in the text."""
    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    await stub.IssueCode(
        issue_request(destination="zhangsan@example.cn", channel=common_pb2.CHANNEL_EMAIL),
        metadata=h.metadata,
    )
    (line,) = await wait_for_outbox(h, 1, channel="email")
    code = code_from(line)
    assert line["subject"] == render_code_email_subject("REGISTER")
    assert code not in line["subject"]


async def test_second_issue_inside_cooldown_is_resource_exhausted_with_retry_info(
    h: Harness,
) -> None:
    """C6: the cooldown answers RESOURCE_EXHAUSTED with RetryInfo and the policy name."""
    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    await stub.IssueCode(issue_request(), metadata=h.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IssueCode(issue_request(), metadata=h.metadata)
    d = details_of(caught.value)
    assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert d.reason == "RATE_LIMITED"
    assert d.retry_after is not None
    assert 0 < d.retry_after <= 60
    assert d.quota_subjects == ["code.issue.destination"]
    h.clock.advance(61)
    await stub.IssueCode(issue_request(), metadata=h.metadata)


async def test_calls_without_credentials_are_unauthenticated(h: Harness) -> None:
    """Every RPC but health and reflection needs client credentials."""
    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    for metadata in ((), (("x-client-id", "xhc_nope"), ("x-client-secret", "xhs_nope"))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.IssueCode(issue_request(), metadata=metadata)
        d = details_of(caught.value)
        assert d.code == grpc.StatusCode.UNAUTHENTICATED
        assert d.reason == "CLIENT_UNAUTHENTICATED"
        assert d.request_id
    assert h.outbox_lines() == []


async def test_a_client_without_the_grant_is_denied(h: Harness) -> None:
    """Grants decide which RPCs a client may call."""
    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    metadata = await h.client_metadata("validate")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IssueCode(issue_request(), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_revoked_client_stops_working(h: Harness) -> None:
    """Revocation takes effect within the registry's short cache."""
    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    metadata = await h.client_metadata("codes")
    await stub.IssueCode(issue_request(), metadata=metadata)
    await h.container.clients.revoke(dict(metadata)["x-client-id"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IssueCode(issue_request("+8613900139000"), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (issue_request(destination="12345"), "destination"),
        (issue_request(destination=""), "destination"),
        (issue_request(destination="+1 415 555 0100"), "destination"),
        (
            issue_request(destination="not-an-email", channel=common_pb2.CHANNEL_EMAIL),
            "destination",
        ),
        (issue_request(purpose=common_pb2.PURPOSE_UNSPECIFIED), "purpose"),
        (issue_request(purpose=99), "purpose"),
        (issue_request(channel=common_pb2.CHANNEL_UNSPECIFIED), "channel"),
    ],
)
async def test_malformed_requests_are_invalid_argument_naming_the_field(
    h: Harness, request_: codes_pb2.IssueCodeRequest, field: str
) -> None:
    """F3, C7: INVALID_ARGUMENT with a field violation; nothing reaches the outbox."""
    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IssueCode(request_, metadata=h.metadata)
    d = details_of(caught.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in d.violations
    await h.drain_outbox()
    assert h.outbox_lines() == []
    assert h.outbox_lines("email") == []


async def test_five_wrong_codes_kill_the_code(h: Harness) -> None:
    """B5 over RPC: after five wrong tries even the right code fails."""
    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    await stub.IssueCode(issue_request(), metadata=h.metadata)
    code = code_from((await wait_for_outbox(h, 1))[0])
    wrong = "000000" if code != "000000" else "111111"

    def verify(c: str) -> codes_pb2.VerifyCodeRequest:
        return codes_pb2.VerifyCodeRequest(
            channel=common_pb2.CHANNEL_SMS,
            destination=PHONE,
            purpose=common_pb2.PURPOSE_REGISTER,
            code=c,
        )

    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.VerifyCode(verify(wrong), metadata=h.metadata)
        assert details_of(caught.value).reason == "CODE_INVALID"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.VerifyCode(verify(code), metadata=h.metadata)
    d = details_of(caught.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert d.reason == "CODE_INVALID"


async def test_tickets_are_bound_to_purpose_and_work_once(h: Harness) -> None:
    """C2, C5: a REGISTER ticket is refused for RESET_PASSWORD; a ticket works once."""
    from xiaohe.identity.server.codes.models import Purpose
    from xiaohe.identity.server.errors import TicketInvalid

    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    await stub.IssueCode(issue_request(), metadata=h.metadata)
    code = code_from((await wait_for_outbox(h, 1))[0])
    verified = await stub.VerifyCode(
        codes_pb2.VerifyCodeRequest(
            channel=common_pb2.CHANNEL_SMS,
            destination=PHONE,
            purpose=common_pb2.PURPOSE_REGISTER,
            code=code,
        ),
        metadata=h.metadata,
    )
    tickets = h.container.tickets
    with pytest.raises(TicketInvalid):
        await tickets.consume(verified.ticket, purpose=Purpose.RESET_PASSWORD)
    claims = await tickets.consume(verified.ticket, purpose=Purpose.REGISTER)
    assert claims.destination == PHONE
    with pytest.raises(TicketInvalid):
        await tickets.consume(verified.ticket, purpose=Purpose.REGISTER)


async def test_unexpected_errors_are_internal_with_a_request_id(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception is INTERNAL with the request id, never the traceback."""

    async def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(h.container.codes, "issue", boom)
    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IssueCode(issue_request(), metadata=h.metadata)
    d = details_of(caught.value)
    assert d.code == grpc.StatusCode.INTERNAL
    assert d.request_id
    assert d.request_id in d.message
    assert "secret internals" not in d.message


async def test_successful_responses_carry_a_request_id(h: Harness) -> None:
    """Every response names its request id in the trailing metadata."""
    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    call = stub.IssueCode(issue_request(), metadata=h.metadata)
    await call
    trailing = dict(await call.trailing_metadata() or ())
    assert len(str(trailing.get("x-request-id", ""))) == 16


async def test_account_bound_codes_to_unregistered_numbers_pretend(h: Harness) -> None:
    """B4: LOGIN/RESET_PASSWORD/RECOVER_ACCOUNT to an unregistered number answer the same and
    count against the same limits, but nothing is sent; a registered number gets its code."""
    from tests.integration.flows import register

    stub = codes_pb2_grpc.CodeServiceStub(h.channel)
    registered, stranger = "+8613811112222", "+8613833334444"
    await register(h, "li.na", registered)
    for purpose in (
        common_pb2.PURPOSE_LOGIN,
        common_pb2.PURPOSE_RESET_PASSWORD,
        common_pb2.PURPOSE_RECOVER_ACCOUNT,
    ):
        h.clock.advance(61)
        to_member = await stub.IssueCode(issue_request(registered, purpose), metadata=h.metadata)
        to_stranger = await stub.IssueCode(issue_request(stranger, purpose), metadata=h.metadata)
        assert (to_member.expires_in_seconds, to_member.resend_after_seconds) == (
            to_stranger.expires_in_seconds,
            to_stranger.resend_after_seconds,
        )
        assert to_stranger.code_id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.IssueCode(issue_request(stranger, purpose), metadata=h.metadata)
        assert details_of(caught.value).quota_subjects == ["code.issue.destination"]
    await h.drain_outbox()
    recipients = [line["to"] for line in h.outbox_lines()]
    assert recipients.count(registered) == 4
    assert stranger not in recipients
