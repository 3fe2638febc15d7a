"""Verification codes and tickets: commands, results and the policy that bounds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Channel(StrEnum):
    """How a code reaches its destination; values are the names, as the delivery package expects.

    ACCOUNT is no delivery channel: it marks a *grant*, a ticket a flow hands out for
    an account it has identified (a recovery's password-reset grant), whose
    "destination" is the account id. No code is ever issued for it.
    """

    SMS = "SMS"
    EMAIL = "EMAIL"
    ACCOUNT = "ACCOUNT"


DELIVERY_CHANNELS = (Channel.SMS, Channel.EMAIL)
"""The channels a code is sent over."""


class Purpose(StrEnum):
    """What a code (and the ticket it yields) may be used for; codes never cross purposes."""

    LOGIN = "LOGIN"
    REGISTER = "REGISTER"
    RESET_PASSWORD = "RESET_PASSWORD"  # noqa: S105 (a purpose, not a password)
    BIND_PHONE = "BIND_PHONE"
    BIND_EMAIL = "BIND_EMAIL"
    CHANGE_PHONE = "CHANGE_PHONE"
    RECOVER_ACCOUNT = "RECOVER_ACCOUNT"
    REAL_NAME = "REAL_NAME"
    DEACTIVATE = "DEACTIVATE"
    EXPORT_DATA = "EXPORT_DATA"  # issue 14: re-authentication before ExportMyData


@dataclass(frozen=True)
class IssueCodeCommand:
    """Send a code to `destination` for `purpose`.

    `channel` / `purpose` are None when the request left them unspecified (or
    sent a value this server does not know); the service refuses that with a
    field violation, so the transport maps enum value 0 and unknown values to None.
    """

    channel: Channel | None
    destination: str = field(repr=False)
    purpose: Purpose | None


@dataclass(frozen=True)
class IssuedCode:
    """A code was issued: a random id, its lifetime and when another may be requested (seconds)."""

    code_id: str
    expires_in: int
    resend_after: int


@dataclass(frozen=True)
class VerifyCodeCommand:
    """Check the code a user typed for (channel, destination, purpose)."""

    channel: Channel | None
    destination: str = field(repr=False)
    purpose: Purpose | None
    code: str = field(repr=False)


@dataclass(frozen=True)
class VerifiedTicket:
    """Proof of control of a destination for a purpose: single use, valid `expires_in` seconds."""

    ticket: str = field(repr=False)
    expires_in: int


@dataclass(frozen=True)
class TicketClaims:
    """What a consumed ticket proves: control of the normalised `destination` at `issued_at`."""

    channel: Channel
    destination: str = field(repr=False)
    purpose: Purpose
    issued_at: float


@dataclass(frozen=True)
class CodePolicy:
    """Lifetimes (seconds) and limits of codes and tickets; defaults follow ARCHITECTURE.md.

    `failures_per_destination_hour` bounds the wrong guesses compared against
    live codes of one destination in a rolling hour, across codes: issuing a
    new code never resets it (SECURITY.md C3). Verifications that find no live
    code do not count (anyone can send them, B2), so a live code, and therefore
    an issue, is needed to spend it. The default, 30, is above what the default
    issue limits allow (5 codes per hour × 5 tries = 25 compared guesses), so an
    attacker who triggers codes to the victim's phone and guesses wrong cannot
    exhaust it and block the owner's SMS login; it remains defence in depth that
    bites only when an operator raises the issue limits. Keep it above
    `per_destination_hour × max_attempts` when changing either.

    `verify_per_ip_hour` (per end-user IPv4 address or IPv6 /64) and
    `verify_per_client_minute` bound VerifyCode calls themselves, whatever
    their outcome: a verification that finds no live code spends no
    destination budget (see above), so without these nothing would bound the
    Redis scripts a caller can make the server run. They sit well above what a
    person typing codes needs (120 per hour) and what a busy front end relays
    (3000 per minute).
    """

    ttl: int = 300
    max_attempts: int = 5
    ticket_ttl: int = 600
    cooldown: int = 60
    per_destination_hour: int = 5
    per_destination_day: int = 10
    per_ip_hour: int = 30
    per_client_minute: int = 600
    failures_per_destination_hour: int = 30
    verify_per_ip_hour: int = 120
    verify_per_client_minute: int = 3000
    allowed_country_codes: tuple[str, ...] = ("86",)

    def __post_init__(self) -> None:
        if not 0 < self.ttl <= 600:
            raise ValueError("code ttl must be between 1 and 600 seconds")
        if self.ticket_ttl <= 0 or self.max_attempts < 1:
            raise ValueError("ticket ttl and max attempts must be positive")
        counts = (
            self.cooldown,
            self.per_destination_hour,
            self.per_destination_day,
            self.per_ip_hour,
            self.per_client_minute,
            self.failures_per_destination_hour,
            self.verify_per_ip_hour,
            self.verify_per_client_minute,
        )
        if min(counts) < 0:
            raise ValueError("cooldown and limits must not be negative")


class TicketConsumer(Protocol):
    """Consumes verification tickets (`codes.tickets.TicketService`); what flows depend on."""

    async def consume(
        self,
        ticket: str,
        *,
        purpose: Purpose,
        channel: Channel | None = None,
        destination: str | None = None,
    ) -> TicketClaims:
        """Use up the ticket or raise TicketInvalid."""
        ...

    async def check(
        self,
        ticket: str,
        *,
        purpose: Purpose,
        channel: Channel | None = None,
        destination: str | None = None,
    ) -> TicketClaims:
        """What `consume` would answer, leaving the ticket usable; TicketInvalid otherwise."""
        ...


__all__ = [
    "DELIVERY_CHANNELS",
    "Channel",
    "CodePolicy",
    "IssueCodeCommand",
    "IssuedCode",
    "Purpose",
    "TicketClaims",
    "TicketConsumer",
    "VerifiedTicket",
    "VerifyCodeCommand",
]
