"""CarrierHookService servicer: gateways' delivery reports and carriers' recycled numbers.

Gateways that integrate directly (CMPP/SGIP/SMGP bridges) report with CMPP's status
words; they map onto our receipt states as follows, and only ACCEPTD and UNKNOWN
leave a message's fate open:

    DELIVRD → delivered    EXPIRED → expired    DELETED, UNDELIV, REJECTD → failed
    ACCEPTD, UNKNOWN → unknown (a later final report still counts)

A report naming the message by the gateway's id is matched against rows the SMS
gateway provider sent (`gateway_provider`, the provider name in the outbox).
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from xiaohe.identity.server import context
from xiaohe.identity.server.delivery.receipts import (
    MAX_CODE_LENGTH,
    MAX_ID_LENGTH,
    STATE_DELIVERED,
    STATE_EXPIRED,
    STATE_FAILED,
    STATE_UNKNOWN,
    DeliveryReceipts,
    Receipt,
)
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument
from xiaohe.identity.server.transport.timestamps import epoch_seconds
from xiaohe.identity.v1 import carriers_pb2, carriers_pb2_grpc

MAX_REPORTS = 100
SOURCE = "grpc"
_TIME_RANGE = "must be a time between 1970 and 2100"

CMPP_STATES: dict[int, str] = {
    carriers_pb2.DELIVERY_STATE_DELIVRD: STATE_DELIVERED,
    carriers_pb2.DELIVERY_STATE_EXPIRED: STATE_EXPIRED,
    carriers_pb2.DELIVERY_STATE_DELETED: STATE_FAILED,
    carriers_pb2.DELIVERY_STATE_UNDELIV: STATE_FAILED,
    carriers_pb2.DELIVERY_STATE_REJECTD: STATE_FAILED,
    carriers_pb2.DELIVERY_STATE_ACCEPTD: STATE_UNKNOWN,
    carriers_pb2.DELIVERY_STATE_UNKNOWN: STATE_UNKNOWN,
}
"""CMPP status words (as DeliveryState values) → our receipt states."""


class RecycledNumberReports(Protocol):
    """The recycled-number flow (二次号): what ReportRecycledNumber hands a report to."""

    async def report(self, phone: str, recycled_at: float, *, client_id: str) -> None:
        """Mark bindings of `phone` made before `recycled_at` stale; InvalidArgument if bad."""
        ...


def receipts_from_request(
    request: carriers_pb2.ReportDeliveryRequest, gateway_provider: str
) -> list[Receipt]:
    """The receipts of a ReportDelivery request, or InvalidArgument naming every bad field."""
    violations: list[FieldViolation] = []
    if not 1 <= len(request.reports) <= MAX_REPORTS:
        violations.append(FieldViolation("reports", f"give 1 to {MAX_REPORTS} reports"))
    receipts: list[Receipt] = []
    for i, report in enumerate(request.reports[:MAX_REPORTS]):
        where = f"reports[{i}]"
        state = CMPP_STATES.get(report.state)
        if state is None:
            violations.append(FieldViolation(f"{where}.state", "must be a CMPP status"))
        if not report.message_id and not report.provider_message_id:
            violations.append(
                FieldViolation(where, "give message_id or provider_message_id (or both)")
            )
        for name in ("message_id", "provider_message_id"):
            if len(getattr(report, name)) > MAX_ID_LENGTH:
                violations.append(
                    FieldViolation(f"{where}.{name}", f"at most {MAX_ID_LENGTH} characters")
                )
        if len(report.error_code) > MAX_CODE_LENGTH:
            violations.append(
                FieldViolation(f"{where}.error_code", f"at most {MAX_CODE_LENGTH} characters")
            )
        done_at = epoch_seconds(report.done_at) if report.HasField("done_at") else None
        if report.HasField("done_at") and done_at is None:
            violations.append(FieldViolation(f"{where}.done_at", _TIME_RANGE))
        if violations or state is None:
            continue
        receipts.append(
            Receipt(
                state=state,
                message_id=report.message_id,
                provider=gateway_provider,
                provider_message_id=report.provider_message_id,
                code=report.error_code,
                done_at=done_at,
            )
        )
    if violations:
        raise InvalidArgument(violations)
    return receipts


class CarrierHookServicer(carriers_pb2_grpc.CarrierHookServiceServicer):
    """Delivery reports from gateways, recycled numbers from carriers."""

    def __init__(
        self,
        receipts: DeliveryReceipts,
        recycled_numbers: RecycledNumberReports,
        *,
        gateway_provider: str = "http",
    ) -> None:
        self._receipts = receipts
        self._recycled = recycled_numbers
        self._gateway_provider = gateway_provider

    async def ReportDelivery(
        self, request: carriers_pb2.ReportDeliveryRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> carriers_pb2.ReportDeliveryResponse:
        receipts = receipts_from_request(request, self._gateway_provider)
        counts = await self._receipts.record(receipts, source=SOURCE)
        return carriers_pb2.ReportDeliveryResponse(
            recorded=counts.recorded, duplicates=counts.duplicates, unknown=counts.unknown
        )

    async def ReportRecycledNumber(
        self,
        request: carriers_pb2.ReportRecycledNumberRequest,
        ctx: grpc.aio.ServicerContext[Any, Any],
    ) -> carriers_pb2.ReportRecycledNumberResponse:
        if not request.HasField("recycled_at"):
            raise InvalidArgument(FieldViolation("recycled_at", "required"))
        recycled_at = epoch_seconds(request.recycled_at)
        if recycled_at is None:
            raise InvalidArgument(FieldViolation("recycled_at", _TIME_RANGE))
        await self._recycled.report(
            request.phone, recycled_at, client_id=context.current().client_id
        )
        return carriers_pb2.ReportRecycledNumberResponse()
