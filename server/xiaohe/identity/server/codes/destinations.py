"""What a code is sent to and typed as: destinations, mailboxes, the code itself, normalised."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TypeVar

from xiaohe.identity.server.codes.digests import CODE_DIGITS
from xiaohe.identity.server.codes.models import Channel, CodePolicy, Purpose
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument
from xiaohe.identity.server.shared.identifiers import normalize, normalize_email, normalize_phone

_MAX_DESTINATION_CHARS = 512
_MAX_CODE_CHARS = 64

_E = TypeVar("_E", Channel, Purpose)


def _parse_enum(
    kind: type[_E], value: object, field: str, violations: list[FieldViolation]
) -> _E | None:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return kind(value)
    choices = ", ".join(member.value for member in kind)
    violations.append(FieldViolation(field, f"must be specified: one of {choices}"))
    return None


def _required_channel(purpose: Purpose) -> Channel | None:
    if purpose is Purpose.BIND_PHONE:
        return Channel.SMS
    if purpose is Purpose.BIND_EMAIL:
        return Channel.EMAIL
    return None


def mailbox(address: str) -> str:
    """The mailbox an (already normalised) email address delivers to: without its `+tag`."""
    local, _, domain = address.rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def mailbox_key(tag: str) -> str:
    """The issue windows shared by every `+tag` address of one mailbox."""
    return f"xh:rl:{{mb:{tag}}}:issue"


def normalize_destination(
    channel: Channel, raw: str, allowed_country_codes: Sequence[str], field: str = "destination"
) -> str:
    """The normalised destination (E.164 phone or lower-cased email) or InvalidArgument."""
    if len(raw) > _MAX_DESTINATION_CHARS:
        raise InvalidArgument(FieldViolation(field, "is too long"))
    if channel is Channel.SMS:
        return normalize_phone(raw, field=field, allowed_country_codes=allowed_country_codes)
    return normalize_email(raw, field=field)


def normalize_code(raw: object, field: str = "code") -> str:
    """The code as typed, NFKC-normalised (full-width digits) and trimmed, or InvalidArgument."""
    if not isinstance(raw, str) or len(raw) > _MAX_CODE_CHARS:
        raise InvalidArgument(FieldViolation(field, f"must be {CODE_DIGITS} digits"))
    value = normalize(raw)
    if len(value) != CODE_DIGITS or not value.isascii() or not value.isdigit():
        raise InvalidArgument(FieldViolation(field, f"must be {CODE_DIGITS} digits"))
    return value


def validate_target(
    channel_value: object, destination: object, purpose_value: object, policy: CodePolicy
) -> tuple[Channel | None, str, Purpose | None, list[FieldViolation]]:
    violations: list[FieldViolation] = []
    channel = _parse_enum(Channel, channel_value, "channel", violations)
    purpose = _parse_enum(Purpose, purpose_value, "purpose", violations)
    normalised = ""
    if not isinstance(destination, str) or not destination.strip():
        violations.append(FieldViolation("destination", "must not be empty"))
    elif channel is not None:
        try:
            normalised = normalize_destination(channel, destination, policy.allowed_country_codes)
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    if channel is not None and purpose is not None:
        required = _required_channel(purpose)
        if required is not None and required is not channel:
            violations.append(
                FieldViolation("channel", f"codes for {purpose.value} are sent by {required.value}")
            )
    return channel, normalised, purpose, violations


__all__ = [
    "mailbox",
    "mailbox_key",
    "normalize_code",
    "normalize_destination",
    "validate_target",
]
