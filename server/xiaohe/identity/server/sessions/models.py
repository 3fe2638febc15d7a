"""Sessions: who a session is for, what issuing one returns, what a user may see of theirs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class RevokeReason(StrEnum):
    """Why a session was revoked; stored in `sessions.revoke_reason` (at most 40 characters)."""

    LOGOUT = "logout"
    USER_REQUEST = "user_request"
    REFRESH_REPLAY = "refresh_replay"
    ACCOUNT_INACTIVE = "account_inactive"
    PASSWORD_CHANGE = "password_change"  # noqa: S105 - a reason, not a secret
    PHONE_CHANGE = "phone_change"
    EMAIL_CHANGE = "email_change"
    DEACTIVATION = "deactivation"
    RECYCLED_NUMBER = "recycled_number"
    ADMIN = "admin"


@dataclass(frozen=True)
class SessionSubject:
    """The account a session is issued to, with the claims its access tokens carry.

    `restriction` is "" for a normal session, or why it is restricted: `consent`
    while the account has not accepted the current privacy policy (SECURITY I3).
    """

    account_id: str
    subject_type: str
    rn_level: int
    restriction: str = ""


@dataclass(frozen=True)
class IssuedSession:
    """A new or refreshed session: the tokens to hand to the client and their lifetimes (s)."""

    session_id: str
    account_id: str
    access_token: str = field(repr=False)
    access_expires_in: int
    refresh_token: str = field(repr=False)
    refresh_expires_in: int


@dataclass(frozen=True)
class SessionInfo:
    """What a user sees of one of their active sessions (times are epoch seconds)."""

    session_id: str
    created_at: float
    last_used_at: float
    amr: tuple[str, ...]
    ip_masked: str
    user_agent: str


@dataclass(frozen=True)
class SessionRecord:
    """One row of `sessions` (times are epoch seconds; `revoked_at` is None while live)."""

    session_id: str
    account_id: str
    audience: str
    amr: tuple[str, ...]
    client_id: str
    ip_masked: str
    user_agent: str
    created_at: float
    last_used_at: float
    idle_expires_at: float
    absolute_expires_at: float
    revoked_at: float | None = None
    revoke_reason: str | None = None

    def is_active(self, now: float) -> bool:
        """Not revoked and inside both its idle and its absolute lifetime."""
        return (
            self.revoked_at is None
            and now < self.idle_expires_at
            and now < self.absolute_expires_at
        )

    def info(self) -> SessionInfo:
        """The user-visible view of this session."""
        return SessionInfo(
            session_id=self.session_id,
            created_at=self.created_at,
            last_used_at=self.last_used_at,
            amr=self.amr,
            ip_masked=self.ip_masked,
            user_agent=self.user_agent,
        )


@dataclass(frozen=True)
class SessionLifetimes:
    """Access-token lifetime and the refresh token's idle and absolute lifetimes, in seconds.

    A session ends when it has not been refreshed for `idle` seconds, or
    `absolute` seconds after login, whichever comes first (ARCHITECTURE "Tokens
    and sessions": defaults 24 h / 7 d).
    """

    access_ttl: int = 600
    idle: int = 86400
    absolute: int = 7 * 86400

    def __post_init__(self) -> None:
        for name in ("access_ttl", "idle", "absolute"):
            if getattr(self, name) <= 0:
                raise ValueError(f"session lifetime {name} must be positive")


__all__ = [
    "IssuedSession",
    "RevokeReason",
    "SessionInfo",
    "SessionLifetimes",
    "SessionRecord",
    "SessionSubject",
]
