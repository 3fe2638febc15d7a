"""Domain exceptions of Xiaohe Identity.

Domain code raises these; it never imports grpc. One interceptor
(`transport/interceptors.py`) maps each to a status code with `google.rpc`
details, so every RPC reports the same failure the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. `destination`) and why."""

    field: str
    description: str


class IdentityError(Exception):
    """Base of every error a caller may see; `reason` is the ErrorReason name without prefix."""

    reason: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(IdentityError):
    """A request field is malformed or missing."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self, violations: list[FieldViolation] | FieldViolation, message: str = ""
    ) -> None:
        self.violations = [violations] if isinstance(violations, FieldViolation) else violations
        super().__init__(
            message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        )


@dataclass(frozen=True)
class QuotaViolation:
    """Which limit was hit (a dotted policy name such as `code.issue.destination`)."""

    subject: str
    description: str = field(default="")


class RateLimited(IdentityError):
    """A limit was reached; the caller may retry after `retry_after` seconds."""

    reason = "RATE_LIMITED"

    def __init__(self, policy: str, retry_after: float, message: str = "") -> None:
        self.policy = policy
        self.retry_after = max(0.0, retry_after)
        super().__init__(message or f"too many requests ({policy}); retry later")


class Overloaded(IdentityError):
    """The server sheds load instead of queueing without bound."""

    reason = "OVERLOADED"

    def __init__(self, retry_after: float = 1.0, message: str = "server busy; retry later") -> None:
        self.retry_after = retry_after
        super().__init__(message)


class Unavailable(IdentityError):
    """A dependency (Redis, the database, delivery) cannot be reached; fail closed."""

    reason = "UNAVAILABLE"

    def __init__(
        self, message: str = "service temporarily unavailable", retry_after: float = 1.0
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ClientUnauthenticated(IdentityError):
    """No client credentials, or wrong ones."""

    reason = "CLIENT_UNAUTHENTICATED"


class PermissionDenied(IdentityError):
    """The calling client lacks the grant for this RPC; `method` and `grant` say which, if known."""

    reason = "PERMISSION_DENIED"

    def __init__(self, message: str, *, method: str = "", grant: str = "") -> None:
        self.method = method
        self.grant = grant
        super().__init__(message)


class UserUnauthenticated(IdentityError):
    """The end user's access token is missing or invalid."""

    reason = "USER_UNAUTHENTICATED"


class CodeInvalid(IdentityError):
    """The code is wrong, expired, used up or replaced (deliberately not saying which)."""

    reason = "CODE_INVALID"

    def __init__(self, message: str = "the code is invalid or has expired") -> None:
        super().__init__(message)


class TicketInvalid(IdentityError):
    """The ticket is unknown, expired, used, or bound to another destination or purpose."""

    reason = "TICKET_INVALID"

    def __init__(
        self,
        message: str = "the verification ticket is invalid or has expired",
        field: str = "ticket",
    ) -> None:
        self.field = field
        super().__init__(message)


class InvalidCredentials(IdentityError):
    """Unknown identifier, wrong password or a locked account: one reason for all three."""

    reason = "INVALID_CREDENTIALS"

    def __init__(self, message: str = "the identifier or password is incorrect") -> None:
        super().__init__(message)


class TokenInvalid(IdentityError):
    """An access or refresh token is invalid, expired or revoked."""

    reason = "TOKEN_INVALID"

    def __init__(self, message: str = "the token is invalid or has expired") -> None:
        super().__init__(message)


class AlreadyExists(IdentityError):
    """An identifier is bound to an account (never saying whose), or a name to a live client."""

    reason = "ALREADY_EXISTS"

    def __init__(self, field: str, message: str = "") -> None:
        self.field = field
        super().__init__(message or f"{field} is already registered")


class NotFound(IdentityError):
    """The resource does not exist or is not visible to the caller."""

    reason = "NOT_FOUND"


class FailedPrecondition(IdentityError):
    """The request is well formed but the current state does not allow it."""

    reason = "FAILED_PRECONDITION"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        self.violations = violations or []
        super().__init__(message)


class ConsentRequired(IdentityError):
    """The session is restricted until the user accepts the current privacy policy."""

    reason = "CONSENT_REQUIRED"

    def __init__(
        self, message: str = "accept the current privacy policy first (PrivacyService.AcceptPolicy)"
    ) -> None:
        super().__init__(message)


class Conflict(IdentityError):
    """A concurrent change of the same thing won; the caller may read again and retry."""

    reason = "CONFLICT"


class Unimplemented(IdentityError):
    """A declared part of the API that this server does not serve yet."""

    reason = "UNIMPLEMENTED"
