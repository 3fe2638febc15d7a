"""Proto enums <-> domain enums; an unspecified or unknown value is a field violation."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any, TypeVar

from xiaohe.identity.server.codes.models import DELIVERY_CHANNELS, Channel, Purpose
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument
from xiaohe.identity.server.shared.identifiers import IdentifierKind, IdType
from xiaohe.identity.v1 import common_pb2

E = TypeVar("E", bound=StrEnum)
V = TypeVar("V")


def from_proto(
    name_of: Callable[[Any], str],
    prefix: str,
    domain: type[E],
    value: int,
    field: str,
    members: Iterable[E] | None = None,
) -> E:
    """The domain enum member for a proto enum value, or InvalidArgument naming the field.

    `members` limits the answer to some of the domain's members (those the API offers).
    """
    allowed_members = list(members) if members is not None else list(domain)
    try:
        name = name_of(value)
    except ValueError:
        name = ""
    short = name.removeprefix(prefix)
    if not name or short not in {m.name for m in allowed_members}:
        allowed = ", ".join(prefix + m.name for m in allowed_members)
        raise InvalidArgument(FieldViolation(field, f"must be one of {allowed}"))
    return domain[short]


def to_proto(value_of: Callable[[str], V], prefix: str, member: StrEnum) -> V:
    """The proto enum value for a domain enum member."""
    return value_of(prefix + member.name)


def channel_from_proto(value: int, field: str = "channel") -> Channel:
    """Channel from the proto value (SMS or EMAIL: the channels codes are sent over)."""
    return from_proto(common_pb2.Channel.Name, "CHANNEL_", Channel, value, field, DELIVERY_CHANNELS)


def purpose_from_proto(value: int, field: str = "purpose") -> Purpose:
    """Purpose from the proto value."""
    return from_proto(common_pb2.Purpose.Name, "PURPOSE_", Purpose, value, field)


def identifier_kind(value: int, field: str = "identifier_kind") -> IdentifierKind:
    """The identifier kind of a request (UNSPECIFIED: classify by shape); unknown values refused."""
    if value not in IdentifierKind._value2member_map_:
        raise InvalidArgument(FieldViolation(field, "unknown identifier kind"))
    return IdentifierKind(value)


def id_type(value: int, field: str) -> IdType:
    """The ID type of a request (UNSPECIFIED allowed); unknown values are refused."""
    if value not in IdType._value2member_map_:
        raise InvalidArgument(FieldViolation(field, "unknown ID type"))
    return IdType(value)


def enum_name(name_of: Callable[[Any], str], prefix: str, value: int, field: str) -> str:
    """A proto enum value as its short name ("" for UNSPECIFIED); unknown values are refused."""
    try:
        name = name_of(value)
    except ValueError:
        raise InvalidArgument(FieldViolation(field, "unknown value")) from None
    short = name.removeprefix(prefix)
    return "" if short == "UNSPECIFIED" else short
