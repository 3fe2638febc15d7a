"""from_rpc_error: google.rpc details of a failed call -> the SDK's typed errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from xiaohe.identity.client import errors as sdk
from xiaohe.identity.client.errors import (
    ERROR_CLASSES,
    IdentityError,
    from_rpc_error,
)
from xiaohe.identity.server import errors as server_errors
from xiaohe.identity.server.transport.status import internal_status, to_rpc_status
from xiaohe.identity.v1 import errors_pb2

DETAILS_KEY = "grpc-status-details-bin"


class FakeCall(grpc.RpcError):
    """What grpc_status reads from a failed call: code(), details(), trailing_metadata()."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailing = tuple(trailing)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:  # type: ignore[override]
        return self._trailing


def rich(
    code: grpc.StatusCode,
    message: str,
    *details: Message,
    extra_trailing: Sequence[tuple[str, str | bytes]] = (),
) -> FakeCall:
    """A failed call whose trailer holds a google.rpc.Status with these details."""
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    trailing = ((DETAILS_KEY, status.SerializeToString()), *extra_trailing)
    return FakeCall(code, message, trailing)


def info(reason: str, request_id: str = "req-1", domain: str = "identity.xiaohe") -> Any:
    return error_details_pb2.ErrorInfo(
        domain=domain, reason=reason, metadata={"request_id": request_id}
    )


def call_from_status(status: status_pb2.Status) -> FakeCall:
    return FakeCall(
        grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == status.code)),
        status.message,
        ((DETAILS_KEY, status.SerializeToString()),),
    )


EXPECTED_NAMES = {
    "INVALID_ARGUMENT": "InvalidArgument",
    "CLIENT_UNAUTHENTICATED": "ClientUnauthenticated",
    "PERMISSION_DENIED": "PermissionDenied",
    "RATE_LIMITED": "RateLimited",
    "UNAVAILABLE": "Unavailable",
    "CODE_INVALID": "CodeInvalid",
    "TICKET_INVALID": "TicketInvalid",
    "INVALID_CREDENTIALS": "InvalidCredentials",
    "ALREADY_EXISTS": "AlreadyExists",
    "NOT_FOUND": "NotFound",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "TOKEN_INVALID": "TokenInvalid",
    "OVERLOADED": "Overloaded",
    "INTERNAL": "Internal",
    "USER_UNAUTHENTICATED": "UserUnauthenticated",
    "CONSENT_REQUIRED": "ConsentRequired",
    "CONFLICT": "Conflict",
    "UNIMPLEMENTED": "Unimplemented",
}


def test_every_error_reason_of_the_proto_has_its_class() -> None:
    """One subclass per ErrorReason, named as documented, and nothing the proto lacks."""
    reasons = {
        name.removeprefix("ERROR_REASON_")
        for name, _number in errors_pb2.ErrorReason.items()
        if name != "ERROR_REASON_UNSPECIFIED"
    }
    assert set(ERROR_CLASSES) == reasons
    assert set(EXPECTED_NAMES) == reasons
    for reason, cls in ERROR_CLASSES.items():
        assert cls.__name__ == EXPECTED_NAMES[reason]
        assert reason == cls.REASON
        assert issubclass(cls, IdentityError)
        assert getattr(sdk, cls.__name__) is cls


@pytest.mark.parametrize("reason", sorted(EXPECTED_NAMES))
def test_the_error_info_reason_picks_the_class(reason: str) -> None:
    cls = ERROR_CLASSES[reason]
    err = from_rpc_error(rich(cls.DEFAULT_CODE, "something failed", info(reason, "rid-7")))
    assert type(err) is cls
    assert err.reason == reason
    assert err.code == cls.DEFAULT_CODE
    assert err.message == "something failed"
    assert err.request_id == "rid-7"
    assert err.violations == {}
    assert err.retry_after is None


def test_rate_limited_carries_retry_after_and_the_policy() -> None:
    call = rich(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "too many requests (code.issue.destination); retry later",
        info("RATE_LIMITED", "abc123"),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=42)),
        error_details_pb2.QuotaFailure(
            violations=[error_details_pb2.QuotaFailure.Violation(subject="code.issue.destination")]
        ),
    )
    err = from_rpc_error(call)
    assert isinstance(err, sdk.RateLimited)
    assert err.retry_after == 42.0
    assert err.quota_subjects == ("code.issue.destination",)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.retryable
    assert err.request_id == "abc123"


def test_retry_delay_keeps_fractions_of_a_second() -> None:
    call = rich(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "busy",
        info("OVERLOADED"),
        error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000)
        ),
    )
    err = from_rpc_error(call)
    assert isinstance(err, sdk.Overloaded)
    assert err.retry_after == pytest.approx(1.5)


def test_invalid_argument_carries_field_violations() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="destination", description="not a mainland mobile number"
            ),
            error_details_pb2.BadRequest.FieldViolation(field="purpose", description="required"),
        ]
    )
    err = from_rpc_error(
        rich(grpc.StatusCode.INVALID_ARGUMENT, "bad request", info("INVALID_ARGUMENT"), bad)
    )
    assert isinstance(err, sdk.InvalidArgument)
    assert err.violations == {
        "destination": "not a mainland mobile number",
        "purpose": "required",
    }
    assert not err.retryable


def test_transport_unavailable_without_details_is_unavailable_without_delay() -> None:
    """A connection failure has no ErrorInfo: mapped by code, and nobody said when to retry."""
    err = from_rpc_error(
        FakeCall(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    )
    assert type(err) is sdk.Unavailable
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.reason == "UNAVAILABLE"
    assert err.retry_after is None
    assert err.request_id == ""
    assert err.violations == {}


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, sdk.InvalidArgument),
        (grpc.StatusCode.UNAUTHENTICATED, sdk.ClientUnauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, sdk.PermissionDenied),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, sdk.RateLimited),
        (grpc.StatusCode.DEADLINE_EXCEEDED, sdk.Unavailable),
        (grpc.StatusCode.CANCELLED, sdk.Unavailable),
        (grpc.StatusCode.ALREADY_EXISTS, sdk.AlreadyExists),
        (grpc.StatusCode.NOT_FOUND, sdk.NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, sdk.FailedPrecondition),
        (grpc.StatusCode.UNIMPLEMENTED, sdk.Unimplemented),
        (grpc.StatusCode.UNKNOWN, sdk.Internal),
        (grpc.StatusCode.INTERNAL, sdk.Internal),
    ],
)
def test_statuses_without_error_info_map_by_code(
    code: grpc.StatusCode, cls: type[IdentityError]
) -> None:
    err = from_rpc_error(FakeCall(code, "from somewhere else"))
    assert type(err) is cls
    assert err.code == code
    assert err.reason == cls.REASON
    assert err.retry_after is None


def test_a_foreign_error_info_is_ignored() -> None:
    """Only our domain's reason is trusted; a proxy's ErrorInfo falls back to the code."""
    err = from_rpc_error(
        rich(grpc.StatusCode.UNAUTHENTICATED, "no", info("TOKEN_INVALID", domain="proxy.example"))
    )
    assert type(err) is sdk.ClientUnauthenticated
    assert err.request_id == ""


def test_an_unknown_reason_maps_by_code_and_keeps_the_reason() -> None:
    """A newer server's reason still gives a usable error."""
    err = from_rpc_error(
        rich(grpc.StatusCode.FAILED_PRECONDITION, "later", info("MFA_ENROLMENT_REQUIRED"))
    )
    assert type(err) is sdk.FailedPrecondition
    assert err.reason == "MFA_ENROLMENT_REQUIRED"


def test_a_trailer_that_disagrees_with_the_status_is_not_trusted() -> None:
    status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="x")
    status.details.add().Pack(info("NOT_FOUND"))
    call = FakeCall(grpc.StatusCode.UNAVAILABLE, "x", ((DETAILS_KEY, status.SerializeToString()),))
    err = from_rpc_error(call)
    assert type(err) is sdk.Unavailable
    assert err.reason == "UNAVAILABLE"


def test_a_garbage_trailer_is_ignored() -> None:
    call = FakeCall(grpc.StatusCode.INTERNAL, "x", ((DETAILS_KEY, b"\xff\xff\xff\xff"),))
    err = from_rpc_error(call)
    assert type(err) is sdk.Internal
    assert err.code == grpc.StatusCode.INTERNAL


def test_the_request_id_trailer_is_used_when_error_info_is_missing() -> None:
    call = FakeCall(grpc.StatusCode.UNAVAILABLE, "down", (("x-request-id", "0123456789abcdef"),))
    assert from_rpc_error(call).request_id == "0123456789abcdef"


def test_a_bare_rpc_error_is_internal() -> None:
    err = from_rpc_error(grpc.RpcError())
    assert type(err) is sdk.Internal
    assert err.code == grpc.StatusCode.UNKNOWN
    assert err.message == ""


def test_a_real_aio_rpc_error_is_decoded() -> None:
    """grpc.aio.AioRpcError keeps its trailers in a grpc.aio.Metadata."""
    status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="no such client")
    status.details.add().Pack(info("NOT_FOUND", "rid-9"))
    aio_error = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((DETAILS_KEY, status.SerializeToString()), ("x-request-id", "rid-9")),
        details="no such client",
        debug_error_string=None,
    )
    err = from_rpc_error(aio_error)
    assert type(err) is sdk.NotFound
    assert err.request_id == "rid-9"
    assert err.message == "no such client"


@pytest.mark.parametrize(
    "exc",
    [
        server_errors.InvalidArgument(server_errors.FieldViolation("phone", "格式不正确")),
        server_errors.RateLimited("code.issue.ip", 12.2),
        server_errors.Overloaded(2.0),
        server_errors.Unavailable(),
        server_errors.ClientUnauthenticated("bad client credentials"),
        server_errors.PermissionDenied("not granted"),
        server_errors.UserUnauthenticated("no access token"),
        server_errors.CodeInvalid(),
        server_errors.TicketInvalid(),
        server_errors.InvalidCredentials(),
        server_errors.TokenInvalid(),
        server_errors.AlreadyExists("phone"),
        server_errors.NotFound("no such session"),
        server_errors.FailedPrecondition("outdated policy version"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_the_server_encoding_round_trips(exc: server_errors.IdentityError) -> None:
    """What the server's status mapping writes, the SDK reads back as the same error."""
    err = from_rpc_error(call_from_status(to_rpc_status(exc, "req-rt")))
    assert type(err).__name__ == type(exc).__name__
    assert err.reason == exc.reason
    assert err.message == exc.message
    assert err.request_id == "req-rt"
    server_retry = getattr(exc, "retry_after", None)
    if server_retry is None:
        assert err.retry_after is None
    else:
        assert err.retry_after is not None
        assert server_retry <= err.retry_after < server_retry + 1
    for violation in getattr(exc, "violations", []):
        assert err.violations[violation.field] == violation.description
    if isinstance(exc, server_errors.RateLimited):
        assert err.quota_subjects == (exc.policy,)


def test_the_server_internal_status_round_trips() -> None:
    err = from_rpc_error(call_from_status(internal_status("deadbeefdeadbeef")))
    assert type(err) is sdk.Internal
    assert err.request_id == "deadbeefdeadbeef"
    assert str(err).count("deadbeefdeadbeef") == 1


def test_str_names_reason_and_request_id() -> None:
    err = from_rpc_error(
        rich(grpc.StatusCode.UNAUTHENTICATED, "the token has expired", info("TOKEN_INVALID", "r1"))
    )
    assert str(err) == "TOKEN_INVALID: the token has expired (request id r1)"
    assert "TokenInvalid" in repr(err)
