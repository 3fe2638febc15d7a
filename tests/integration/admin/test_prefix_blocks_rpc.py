"""SMS pumping through the real server: an attacked prefix is throttled, operators list and lift."""

from __future__ import annotations

import re

import grpc
import pytest

from tests.integration.conftest import Harness, HarnessFactory, wait_for_outbox
from tests.rpc_errors import details_of
from xiaohe.identity.client.client import IdentityClient
from xiaohe.identity.client.errors import InvalidArgument, PermissionDenied
from xiaohe.identity.v1 import codes_pb2, codes_pb2_grpc, common_pb2

ATTACKED = "+86170012"  # + 5 more digits: prefix 86-1700123 for numbers +861700123NNNN
NORMAL = "+86139123"


def number(head: str, n: int) -> str:
    """The n-th number after `head` in its prefix (the 7-digit prefix is fixed by `n < 10000`)."""
    return f"{head}3{n:04d}"


def issue(destination: str) -> codes_pb2.IssueCodeRequest:
    return codes_pb2.IssueCodeRequest(
        channel=common_pb2.CHANNEL_SMS,
        destination=destination,
        purpose=common_pb2.PURPOSE_REGISTER,
    )


async def pumping_server(harness_factory: HarnessFactory) -> Harness:
    """A server whose watch trips after 5 unverified codes; per-number limits out of the way."""
    return await harness_factory(
        pumping_min_sent=5,
        code_per_ip_hour=10_000,
        code_per_client_minute=10_000,
    )


def sdk(h: Harness, client_id: str, secret: str) -> IdentityClient:
    return IdentityClient("unused", client_id=client_id, client_secret=secret, channel=h.channel)


async def test_an_attacked_prefix_is_throttled_and_a_normal_one_keeps_working(
    harness_factory: HarnessFactory,
) -> None:
    """Acceptance (X3): unverified codes spread over a prefix's numbers block that prefix only;
    the refusal is an ordinary RESOURCE_EXHAUSTED; an admin client lists and lifts the block."""
    h = await pumping_server(harness_factory)
    codes = codes_pb2_grpc.CodeServiceStub(h.channel)
    refusals = []
    for n in range(12):
        try:
            await codes.IssueCode(issue(number(ATTACKED, n)), metadata=h.metadata)
        except grpc.aio.AioRpcError as err:
            refusals.append(details_of(err))
    assert len(refusals) == 12 - 5
    first = refusals[0]
    assert first.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert first.reason == "RATE_LIMITED"
    assert first.quota_subjects == ["code.issue.destination"]
    assert first.retry_after == 12 * 3600
    assert first.message == "too many requests (code.issue.destination); retry later"

    # A normal prefix: every code issued is verified, and it goes on working.
    for n in range(12):
        destination = number(NORMAL, n)
        await codes.IssueCode(issue(destination), metadata=h.metadata)
        lines = await wait_for_outbox(h, 5 + n + 1)
        code = re.search(r"\d{6}", lines[-1]["text"])
        assert code is not None
        await codes.VerifyCode(
            codes_pb2.VerifyCodeRequest(
                channel=common_pb2.CHANNEL_SMS,
                destination=destination,
                purpose=common_pb2.PURPOSE_REGISTER,
                code=code.group(0),
            ),
            metadata=h.metadata,
        )

    admin_creds = dict(await h.client_metadata("admin"))
    async with sdk(h, admin_creds["x-client-id"], admin_creds["x-client-secret"]) as admin:
        listed = await admin.list_prefix_blocks()
        assert [(b.prefix, b.reason, b.sent, b.verified) for b in listed.blocks] == [
            ("86-1700123", "conversion", 5, 0)
        ]
        block = listed.blocks[0]
        assert block.until.seconds - block.blocked_at.seconds == 12 * 3600
        assert (await admin.lift_prefix_block("86-1700123")).lifted is True
        assert (await admin.lift_prefix_block("86-1700123")).lifted is False
        assert (await admin.list_prefix_blocks()).blocks == []
        with pytest.raises(InvalidArgument):
            await admin.lift_prefix_block("+8617001230000")
    await codes.IssueCode(issue(number(ATTACKED, 99)), metadata=h.metadata)
    audit = await h.container.audit.verify_chain(None)
    assert audit.intact


async def test_prefix_blocks_need_the_admin_grant(harness_factory: HarnessFactory) -> None:
    """A client without `admin` can neither list nor lift blocks."""
    h = await pumping_server(harness_factory)
    creds = dict(await h.client_metadata("codes"))
    async with sdk(h, creds["x-client-id"], creds["x-client-secret"]) as client:
        with pytest.raises(PermissionDenied):
            await client.list_prefix_blocks()
        with pytest.raises(PermissionDenied):
            await client.lift_prefix_block("86-1700123")


async def test_failed_receipts_through_the_container_hook(harness_factory: HarnessFactory) -> None:
    """The hook receipt ingestion calls (`prefix_watch.on_failed`) blocks a failing prefix."""
    h = await pumping_server(harness_factory)
    for _ in range(5):
        await h.container.prefix_watch.on_failed("86-1700123")
    blocks = await h.container.prefix_watch.list_blocks()
    assert [(b.prefix, b.reason, b.failed) for b in blocks] == [
        ("86-1700123", "failed_receipts", 5)
    ]
    codes = codes_pb2_grpc.CodeServiceStub(h.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await codes.IssueCode(issue(number(ATTACKED, 0)), metadata=h.metadata)
    assert details_of(refused.value).quota_subjects == ["code.issue.destination"]
