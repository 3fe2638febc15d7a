"""Reading google.rpc details out of a failed call, for tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class Details:
    """The decoded details of one error status."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    request_id: str = ""
    violations: dict[str, str] = field(default_factory=dict)
    retry_after: int | None = None
    quota_subjects: list[str] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)


def details_of(err: grpc.aio.AioRpcError) -> Details:
    """Decode the ErrorInfo, BadRequest, RetryInfo and QuotaFailure of a failed call."""
    out = Details(code=err.code(), message=err.details() or "")
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return out
    for any_msg in status.details:
        if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_msg.Unpack(info)
            out.reason = info.reason
            out.request_id = info.metadata.get("request_id", "")
            out.info = dict(info.metadata)
        elif any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_msg.Unpack(bad)
            out.violations = {v.field: v.description for v in bad.field_violations}
        elif any_msg.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            any_msg.Unpack(retry)
            out.retry_after = retry.retry_delay.seconds
        elif any_msg.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            any_msg.Unpack(quota)
            out.quota_subjects = [v.subject for v in quota.violations]
    return out
