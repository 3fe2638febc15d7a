"""Typed errors of the Xiaohe Identity SDK, decoded from a failed call's status details.

The server describes every failure with `google.rpc` details in the
`grpc-status-details-bin` trailer: an `ErrorInfo` in the domain "identity.xiaohe"
whose `reason` is an `ErrorReason` name without its prefix (and the request id in
its metadata), a `BadRequest` with field violations, a `RetryInfo` with the delay
before a retry is worth it, and a `QuotaFailure` naming the limit that was hit.
`from_rpc_error` turns all of that into one exception per reason, so callers
write `except RateLimited as e: wait(e.retry_after)` instead of parsing statuses.

A status without our `ErrorInfo` did not come from the identity service's own
logic (a proxy, the channel itself, a deadline); it is mapped by status code
alone, with no retry delay, because nobody said when a retry would help.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

DOMAIN = "identity.xiaohe"
REQUEST_ID_HEADER = "x-request-id"


class IdentityError(Exception):
    """Base of every error the SDK raises for a failed call.

    `reason` is the server's ErrorReason name without prefix (e.g. "RATE_LIMITED"),
    `code` the gRPC status code, `violations` maps a request field to what is wrong
    with it, `retry_after` is the number of seconds to wait before retrying (None
    when the server gave no delay), `quota_subjects` names the limits that were hit
    (e.g. "code.issue.destination"), `request_id` finds the call in the server log,
    and `info` holds the rest of the ErrorInfo metadata (e.g. `grant` for PermissionDenied).
    """

    REASON: ClassVar[str] = "INTERNAL"
    DEFAULT_CODE: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    RETRYABLE: ClassVar[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        request_id: str = "",
        violations: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        quota_subjects: Sequence[str] = (),
        info: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code: grpc.StatusCode = code if code is not None else self.DEFAULT_CODE
        self.reason: str = reason or self.REASON
        self.request_id = request_id
        self.violations: dict[str, str] = dict(violations or {})
        self.retry_after = retry_after
        self.quota_subjects: tuple[str, ...] = tuple(quota_subjects)
        self.info: dict[str, str] = dict(info or {})

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later (after `retry_after`, when given)."""
        return self.RETRYABLE

    def __str__(self) -> str:
        text = f"{self.reason}: {self.message}" if self.message else self.reason
        if self.request_id and self.request_id not in text:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, request_id={self.request_id!r}, "
            f"violations={self.violations!r}, retry_after={self.retry_after!r})"
        )


class InvalidArgument(IdentityError):
    """A request field is malformed or missing; `violations` says which and why."""

    REASON = "INVALID_ARGUMENT"
    DEFAULT_CODE = grpc.StatusCode.INVALID_ARGUMENT


class ClientUnauthenticated(IdentityError):
    """The client credentials (`x-client-id` / `x-client-secret`) are missing or wrong."""

    REASON = "CLIENT_UNAUTHENTICATED"
    DEFAULT_CODE = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(IdentityError):
    """The client lacks the grant this RPC needs; `required_grant` names it, when known."""

    REASON = "PERMISSION_DENIED"
    DEFAULT_CODE = grpc.StatusCode.PERMISSION_DENIED

    @property
    def method(self) -> str:
        """The full gRPC method that was refused ("" when the server did not say)."""
        return self.info.get("method", "")

    @property
    def required_grant(self) -> str:
        """The grant that would allow the method ("" when none does or the server did not say)."""
        return self.info.get("grant", "")


class RateLimited(IdentityError):
    """A limit was reached; retry after `retry_after` seconds (`quota_subjects` names it)."""

    REASON = "RATE_LIMITED"
    DEFAULT_CODE = grpc.StatusCode.RESOURCE_EXHAUSTED
    RETRYABLE = True


class Unavailable(IdentityError):
    """The service or one of its dependencies cannot be reached; retry later.

    Also raised for transport failures without server details (connection
    refused, deadline exceeded, cancelled): then `code` tells which, and after
    DEADLINE_EXCEEDED the call may or may not have taken effect.
    """

    REASON = "UNAVAILABLE"
    DEFAULT_CODE = grpc.StatusCode.UNAVAILABLE
    RETRYABLE = True


class CodeInvalid(IdentityError):
    """The code is wrong, expired, used up or replaced (deliberately not saying which)."""

    REASON = "CODE_INVALID"
    DEFAULT_CODE = grpc.StatusCode.INVALID_ARGUMENT


class TicketInvalid(IdentityError):
    """The ticket is unknown, expired, used, or bound to another destination or purpose."""

    REASON = "TICKET_INVALID"
    DEFAULT_CODE = grpc.StatusCode.INVALID_ARGUMENT


class InvalidCredentials(IdentityError):
    """Identifier or password wrong, account unknown or temporarily locked: one reason for all."""

    REASON = "INVALID_CREDENTIALS"
    DEFAULT_CODE = grpc.StatusCode.UNAUTHENTICATED


class AlreadyExists(IdentityError):
    """An identifier is already bound to another account, or a live client has the name."""

    REASON = "ALREADY_EXISTS"
    DEFAULT_CODE = grpc.StatusCode.ALREADY_EXISTS


class NotFound(IdentityError):
    """The resource does not exist or is not visible to the caller."""

    REASON = "NOT_FOUND"
    DEFAULT_CODE = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(IdentityError):
    """The request is well formed but the current state does not allow it."""

    REASON = "FAILED_PRECONDITION"
    DEFAULT_CODE = grpc.StatusCode.FAILED_PRECONDITION


class TokenInvalid(IdentityError):
    """The access or refresh token is invalid, expired or revoked."""

    REASON = "TOKEN_INVALID"
    DEFAULT_CODE = grpc.StatusCode.UNAUTHENTICATED


class Overloaded(IdentityError):
    """The server is shedding load; retry after `retry_after` seconds."""

    REASON = "OVERLOADED"
    DEFAULT_CODE = grpc.StatusCode.RESOURCE_EXHAUSTED
    RETRYABLE = True


class Internal(IdentityError):
    """An unexpected server error; quote `request_id` when reporting it."""

    REASON = "INTERNAL"
    DEFAULT_CODE = grpc.StatusCode.INTERNAL


class UserUnauthenticated(IdentityError):
    """The end user's access token is missing or invalid for an RPC about "me"."""

    REASON = "USER_UNAUTHENTICATED"
    DEFAULT_CODE = grpc.StatusCode.UNAUTHENTICATED


class ConsentRequired(FailedPrecondition):
    """The session is restricted until the user accepts the current privacy policy."""

    REASON = "CONSENT_REQUIRED"


class Conflict(IdentityError):
    """A concurrent change of the same thing won; read again and retry."""

    REASON = "CONFLICT"
    DEFAULT_CODE = grpc.StatusCode.ABORTED


class Unimplemented(IdentityError):
    """The server does not serve this part of the API yet (e.g. manual review)."""

    REASON = "UNIMPLEMENTED"
    DEFAULT_CODE = grpc.StatusCode.UNIMPLEMENTED


ERROR_CLASSES: Mapping[str, type[IdentityError]] = MappingProxyType(
    {
        cls.REASON: cls
        for cls in (
            InvalidArgument,
            ClientUnauthenticated,
            PermissionDenied,
            RateLimited,
            Unavailable,
            CodeInvalid,
            TicketInvalid,
            InvalidCredentials,
            AlreadyExists,
            NotFound,
            FailedPrecondition,
            TokenInvalid,
            Overloaded,
            Internal,
            UserUnauthenticated,
            ConsentRequired,
            Conflict,
            Unimplemented,
        )
    }
)
"""ErrorReason name (without prefix) -> the exception class raised for it."""

_BY_CODE: Mapping[grpc.StatusCode, type[IdentityError]] = MappingProxyType(
    {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
        grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
        grpc.StatusCode.UNAUTHENTICATED: ClientUnauthenticated,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
        grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
        grpc.StatusCode.UNAVAILABLE: Unavailable,
        grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
        grpc.StatusCode.CANCELLED: Unavailable,
        grpc.StatusCode.ABORTED: Unavailable,
        grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
        grpc.StatusCode.NOT_FOUND: NotFound,
        grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
        grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    }
)
"""Status code -> class, for statuses without our ErrorInfo; anything else is Internal."""


def _call(err: object, name: str) -> Any:
    """`err.name()` if err has such a method, else None (a bare RpcError has none)."""
    method = getattr(err, name, None)
    return method() if callable(method) else None


def _rich_status(err: object) -> Any:
    """The google.rpc.Status in the trailers, or None if absent, unreadable or inconsistent."""
    if _call(err, "code") is None:
        return None
    try:
        return rpc_status.from_call(err)  # type: ignore[arg-type]
    except (ValueError, DecodeError):
        # Code or message disagree with the trailer, or the trailer is garbage:
        # something between us and the server rewrote the status; trust the code only.
        return None


def from_rpc_error(err: grpc.aio.AioRpcError | grpc.RpcError) -> IdentityError:
    """The typed SDK error for a failed gRPC call (its google.rpc details decoded)."""
    raw_code = _call(err, "code")
    code = raw_code if isinstance(raw_code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    raw_message = _call(err, "details")
    message = raw_message if isinstance(raw_message, str) else ""

    reason = ""
    request_id = ""
    violations: dict[str, str] = {}
    retry_after: float | None = None
    quota_subjects: list[str] = []
    info: dict[str, str] = {}
    status = _rich_status(err)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            error_info = error_details_pb2.ErrorInfo()
            detail.Unpack(error_info)
            if error_info.domain == DOMAIN:
                reason = error_info.reason
                request_id = error_info.metadata.get("request_id", "")
                info = {k: v for k, v in error_info.metadata.items() if k != "request_id"}
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update((v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay
            retry_after = max(0.0, delay.seconds + delay.nanos / 1e9)
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            quota_subjects.extend(v.subject for v in quota.violations)

    if not request_id:
        request_id = _request_id_from_trailers(err)
    # A reason this SDK does not know yet (a newer server) still maps by code,
    # keeping the server's reason string.
    cls = ERROR_CLASSES.get(reason) or _BY_CODE.get(code, Internal)
    return cls(
        message,
        code=code,
        reason=reason or None,
        request_id=request_id,
        violations=violations,
        retry_after=retry_after,
        quota_subjects=quota_subjects,
        info=info,
    )


def _request_id_from_trailers(err: object) -> str:
    trailers = _call(err, "trailing_metadata")
    for item in trailers or ():
        if isinstance(item, tuple) and len(item) == 2:
            key, value = item
            if key == REQUEST_ID_HEADER and isinstance(value, str):
                return value
    return ""
