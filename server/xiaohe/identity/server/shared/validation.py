"""Collecting field violations while normalising a request, so one error lists them all."""

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


__all__ = ["MAX_IDENTIFIER_CHARS", "Violations", "free_text", "id_number_field", "phone_field"]
