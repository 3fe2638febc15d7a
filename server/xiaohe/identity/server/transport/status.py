"""Domain exceptions -> gRPC status with `google.rpc` details (ARCHITECTURE "Errors").

Every non-OK status carries ErrorInfo(domain="identity.xiaohe", reason=...) with the
request id in its metadata (and, for PERMISSION_DENIED, the `method` and the `grant`);
INVALID_ARGUMENT adds BadRequest field violations; RESOURCE_EXHAUSTED and
UNAVAILABLE add RetryInfo (and QuotaFailure for a named limit).
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from xiaohe.identity.server import errors

DOMAIN = "identity.xiaohe"

_CODES: dict[type[errors.IdentityError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.CodeInvalid: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TicketInvalid: grpc.StatusCode.INVALID_ARGUMENT,
    errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ClientUnauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.UserUnauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.InvalidCredentials: grpc.StatusCode.UNAUTHENTICATED,
    errors.TokenInvalid: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ConsentRequired: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}

# Which request field a code or ticket error points at, when the domain does not say.
_DEFAULT_FIELD: dict[type[errors.IdentityError], str] = {
    errors.CodeInvalid: "code",
    errors.TicketInvalid: "ticket",
    errors.AlreadyExists: "",
}


def status_code_of(exc: errors.IdentityError) -> grpc.StatusCode:
    """The gRPC status code for a domain exception."""
    for cls in type(exc).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = max(0, math.ceil(seconds))
    return duration_pb2.Duration(seconds=whole)


def to_rpc_status(exc: errors.IdentityError, request_id: str) -> status_pb2.Status:
    """The google.rpc.Status (with details) describing exc."""
    code = status_code_of(exc)
    status = status_pb2.Status(code=code.value[0], message=exc.message)
    metadata = {"request_id": request_id}
    if isinstance(exc, errors.PermissionDenied):
        # Which method was refused and which grant would allow it: names, never secrets.
        metadata.update((k, v) for k, v in (("method", exc.method), ("grant", exc.grant)) if v)
    info = error_details_pb2.ErrorInfo(domain=DOMAIN, reason=exc.reason, metadata=metadata)
    status.details.add().Pack(info)
    violations: list[errors.FieldViolation] = list(getattr(exc, "violations", []) or [])
    if not violations and type(exc) in _DEFAULT_FIELD:
        field = getattr(exc, "field", "") or _DEFAULT_FIELD[type(exc)]
        violations = [errors.FieldViolation(field, exc.message)]
    violations = [v for v in violations if v.field]
    if violations:
        bad = error_details_pb2.BadRequest()
        for v in violations:
            bad.field_violations.add(field=v.field, description=v.description)
        status.details.add().Pack(bad)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after)))
    if isinstance(exc, errors.RateLimited):
        quota = error_details_pb2.QuotaFailure()
        quota.violations.add(subject=exc.policy, description=exc.message)
        status.details.add().Pack(quota)
    return status


def internal_status(request_id: str) -> status_pb2.Status:
    """The status for an unexpected error: nothing but the request id."""
    status = status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error (request id {request_id})"
    )
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(
            domain=DOMAIN, reason="INTERNAL", metadata={"request_id": request_id}
        )
    )
    return status
