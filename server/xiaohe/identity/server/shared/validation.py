"""Collecting field violations while normalising a request, so one error lists them all.

Also the request-shape limits the flows share (identifier, password, ticket and
name lengths, the `unknown` pseudo-account), defined once here, and the shape
checks of the ticket and password fields.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import date
from typing import Final

from xiaohe.identity.server.errors import FieldViolation, InvalidArgument
from xiaohe.identity.server.shared.identifiers import (
    IdType,
    normalize,
    normalize_id_number,
    normalize_phone,
)

MAX_IDENTIFIER_CHARS: Final = 256
"""Raw identifier inputs longer than this are refused before normalisation."""
MAX_PASSWORD_CHARS: Final = 4096
"""Password fields longer than this are refused before anything is hashed."""
MAX_TICKET_CHARS: Final = 512
"""Ticket fields longer than this are refused before the ticket service sees them."""
MAX_NAME_CHARS: Final = 100
"""A person's name (a natural person's, a representative's, a reset's real name)."""
MAX_ORGANIZATION_NAME_CHARS: Final = 200
"""An organisation's name."""
UNKNOWN_SUBJECT: Final = "unknown"
"""The pseudo-account of every unknown or malformed identifier: the throttle subject shared
by them at login, and the audit target of an attempt naming no account."""


class Violations:
    """Collects field violations; runs a normaliser and keeps its result or its violations."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field_name: str, description: str) -> None:
        """Record one violation."""
        self.items.append(FieldViolation(field_name, description))

    def run(self, field_name: str, raw: str, normaliser: Callable[[str], str]) -> str:
        """The normalised value, or "" with the normaliser's violations recorded."""
        if len(raw) > MAX_IDENTIFIER_CHARS:
            self.add(field_name, f"must be at most {MAX_IDENTIFIER_CHARS} characters")
            return ""
        try:
            return normaliser(raw)
        except InvalidArgument as exc:
            self.items.extend(exc.violations)
            return ""

    def raise_if_any(self) -> None:
        """InvalidArgument with every violation recorded, if there is one."""
        if self.items:
            raise InvalidArgument(self.items)


def free_text(violations: Violations, field_name: str, raw: str, max_chars: int) -> str:
    """A normalised, optional free-text field (a name); control characters are refused."""
    value = normalize(raw) if len(raw) <= max_chars * 4 else raw
    if len(value) > max_chars:
        violations.add(field_name, f"must be at most {max_chars} characters")
        return ""
    if any(not ch.isprintable() for ch in value):
        violations.add(field_name, "must not contain control characters or line breaks")
        return ""
    return value


def check_ticket_shape(v: Violations, field_name: str, ticket: str, *, required: bool) -> None:
    """Record a violation for an empty (when required) or oversized ticket field."""
    if not ticket.strip():
        if required:
            v.add(field_name, "must be a ticket from VerifyCode")
    elif len(ticket) > MAX_TICKET_CHARS:
        v.add(field_name, f"must be at most {MAX_TICKET_CHARS} characters")


def check_password_shape(v: Violations, password: str, *, field_name: str = "password") -> None:
    """Record a violation for an empty or oversized password field (`password` unless named)."""
    if not password:
        v.add(field_name, "must not be empty")
    elif len(password) > MAX_PASSWORD_CHARS:
        v.add(field_name, f"must be at most {MAX_PASSWORD_CHARS} characters")


def phone_field(
    violations: Violations, field_name: str, raw: str, allowed_country_codes: Collection[str]
) -> str:
    """A normalised phone (`normalize_phone`), or "" with its violations on `field_name`."""
    return violations.run(
        field_name, raw, lambda value: normalize_phone(value, field_name, allowed_country_codes)
    )


def id_number_field(
    violations: Violations,
    field_name: str,
    raw: str,
    id_type: IdType | int | str,
    *,
    type_field: str,
    today: date,
) -> str:
    """A normalised identity document number of `id_type` (`normalize_id_number`), or "" with
    its violations on `field_name` (an unknown or unspecified type on `type_field`)."""
    return violations.run(
        field_name,
        raw,
        lambda value: normalize_id_number(
            id_type, value, field_name, today=today, type_field=type_field
        ),
    )


__all__ = [
    "MAX_IDENTIFIER_CHARS",
    "MAX_NAME_CHARS",
    "MAX_ORGANIZATION_NAME_CHARS",
    "MAX_PASSWORD_CHARS",
    "MAX_TICKET_CHARS",
    "UNKNOWN_SUBJECT",
    "Violations",
    "check_password_shape",
    "check_ticket_shape",
    "free_text",
    "id_number_field",
    "phone_field",
]
