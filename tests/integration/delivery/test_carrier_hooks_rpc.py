"""CarrierHookService.ReportDelivery and AdminService.GetDelivery through a real server + SDK."""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa

from tests.integration.conftest import Harness, wait_for_outbox
from tests.rpc_errors import details_of
from xiaohe.identity.client import IdentityClient
from xiaohe.identity.client.errors import IdentityError
from xiaohe.identity.server.storage.schema import outbox
from xiaohe.identity.v1 import carriers_pb2, carriers_pb2_grpc, common_pb2

PHONE = "+8613812345678"


def sdk(h: Harness, metadata: tuple[tuple[str, str], ...]) -> IdentityClient:
    """The SDK on the harness's channel with these credentials."""
    return IdentityClient(
        "unused", client_id=metadata[0][1], client_secret=metadata[1][1], channel=h.channel
    )


async def sent_code(h: Harness, phone: str = PHONE) -> str:
    """A REGISTER code through the file provider; the message id of its outbox row."""
    async with sdk(h, h.metadata) as client:
        await client.issue_code(common_pb2.CHANNEL_SMS, phone, common_pb2.PURPOSE_REGISTER)
    lines = await wait_for_outbox(h, len(h.outbox_lines()) + 1)
    return lines[-1]["message_id"]


def report(
    state: int, message_id: str = "", provider_message_id: str = "", error_code: str = ""
) -> carriers_pb2.DeliveryReport:
    return carriers_pb2.DeliveryReport(
        message_id=message_id,
        provider_message_id=provider_message_id,
        state=carriers_pb2.DeliveryState.ValueType(state),
        error_code=error_code,
    )


async def test_a_carrier_client_reports_and_an_operator_reads(h: Harness) -> None:
    """carrier-hooks reports (ACCEPTD, then DELIVRD, then the same again); admin reads it."""
    message_id = await sent_code(h)
    carrier = await h.client_metadata("carrier-hooks")
    operator = await h.client_metadata("admin")
    async with sdk(h, carrier) as client:
        accepted = await client.report_delivery(
            [report(carriers_pb2.DELIVERY_STATE_ACCEPTD, message_id)]
        )
        assert (accepted.recorded, accepted.duplicates, accepted.unknown) == (1, 0, 0)
        delivered = report(carriers_pb2.DELIVERY_STATE_DELIVRD, message_id, error_code="DELIVRD")
        delivered.done_at.FromSeconds(int(h.clock.now()) + 2)
        first = await client.report_delivery([delivered, delivered])
        assert (first.recorded, first.duplicates) == (1, 1)
        nobody = await client.report_delivery(
            [report(carriers_pb2.DELIVERY_STATE_UNDELIV, "f" * 32)]
        )
        assert nobody.unknown == 1
    async with sdk(h, operator) as client:
        delivery = (await client.get_delivery(message_id)).delivery
    assert (delivery.channel, delivery.purpose, delivery.status) == ("SMS", "REGISTER", "sent")
    assert (delivery.provider, delivery.delivery, delivery.detail) == (
        "file",
        "delivered",
        "DELIVRD",
    )
    assert delivery.done_at.seconds == int(h.clock.now()) + 2
    assert delivery.HasField("sent_at")
    assert delivery.HasField("reported_at")
    assert PHONE not in str(delivery)
    assert "13812345678" not in str(delivery)


async def test_gateway_ids_match_rows_the_gateway_provider_sent(h: Harness) -> None:
    message_id = await sent_code(h)
    async with h.container.database.begin() as conn:
        await conn.execute(
            sa.update(outbox)
            .where(outbox.c.message_id == message_id)
            .values(provider="http", provider_message_id="gw-77")
        )
    stub = carriers_pb2_grpc.CarrierHookServiceStub(h.channel)
    reply = await stub.ReportDelivery(
        carriers_pb2.ReportDeliveryRequest(
            reports=[report(carriers_pb2.DELIVERY_STATE_EXPIRED, provider_message_id="gw-77")]
        ),
        metadata=await h.client_metadata("carrier-hooks"),
    )
    assert reply.recorded == 1
    assert (await h.container.delivery_log.get(message_id)).delivery == "expired"


def far_future_report() -> carriers_pb2.DeliveryReport:
    """A report whose done_at lies in the year 10000 (Timestamp allows it; no receipt can)."""
    far = report(carriers_pb2.DELIVERY_STATE_DELIVRD, "a")
    far.done_at.seconds = 253_402_300_800
    return far


@pytest.mark.parametrize(
    ("reports", "field"),
    [
        ([], "reports"),
        ([report(carriers_pb2.DELIVERY_STATE_DELIVRD, "a")] * 101, "reports"),
        ([report(carriers_pb2.DELIVERY_STATE_UNSPECIFIED, "a")], "reports[0].state"),
        ([report(carriers_pb2.DELIVERY_STATE_DELIVRD)], "reports[0]"),
        ([report(carriers_pb2.DELIVERY_STATE_DELIVRD, "a" * 65)], "reports[0].message_id"),
        (
            [report(carriers_pb2.DELIVERY_STATE_DELIVRD, "a", error_code="E" * 33)],
            "reports[0].error_code",
        ),
        ([far_future_report()], "reports[0].done_at"),
    ],
)
async def test_bad_reports_are_invalid_arguments(
    h: Harness, reports: list[carriers_pb2.DeliveryReport], field: str
) -> None:
    stub = carriers_pb2_grpc.CarrierHookServiceStub(h.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReportDelivery(
            carriers_pb2.ReportDeliveryRequest(reports=reports),
            metadata=await h.client_metadata("carrier-hooks"),
        )
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details.violations


async def test_grants_guard_both_services(h: Harness) -> None:
    """Codes clients cannot report receipts; carriers cannot read deliveries."""
    codes_only = await h.client_metadata("codes")
    carrier = await h.client_metadata("carrier-hooks")
    async with sdk(h, codes_only) as client:
        with pytest.raises(IdentityError) as caught:
            await client.report_delivery([report(carriers_pb2.DELIVERY_STATE_DELIVRD, "a")])
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    async with sdk(h, carrier) as client:
        with pytest.raises(IdentityError) as caught:
            await client.get_delivery("a" * 32)
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


async def test_get_delivery_of_an_unknown_or_bad_id(h: Harness) -> None:
    async with sdk(h, h.metadata) as client:
        with pytest.raises(IdentityError) as caught:
            await client.get_delivery("0" * 32)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(IdentityError) as caught:
            await client.get_delivery("")
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(None, 0), (253_402_300_800, 0), (-62_135_596_800, 0), (1_700_000_000, 2_000_000_000)],
    ids=["missing", "year-10000", "year-1", "bad-nanos"],
)
async def test_recycled_number_reports_need_a_real_time(
    h: Harness, seconds: int | None, nanos: int
) -> None:
    """A missing or impossible time is the caller's mistake: INVALID_ARGUMENT, not INTERNAL."""
    request = carriers_pb2.ReportRecycledNumberRequest(phone=PHONE)
    if seconds is not None:
        request.recycled_at.seconds = seconds
        request.recycled_at.nanos = nanos
    stub = carriers_pb2_grpc.CarrierHookServiceStub(h.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReportRecycledNumber(request, metadata=await h.client_metadata("carrier-hooks"))
    assert details_of(caught.value).code == grpc.StatusCode.INVALID_ARGUMENT
    assert details_of(caught.value).violations.keys() == {"recycled_at"}
