"""Paging of keyset-paginated listings: the page size, and an opaque cursor after (time, id).

Every listing that pages by (time, id) hands out the same kind of token; the server
reads it back with `decode_page_token`, which refuses anything it did not make (bad
base64 or JSON, wrong types, a time outside 1970-2100, NaN) as INVALID_ARGUMENT on
`page_token`, never INTERNAL.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Final

from xiaohe.identity.server.errors import FieldViolation, InvalidArgument

MAX_TOKEN_CHARS: Final = 200
DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 100
LATEST_PAGE_TIME: Final = 4_102_444_800.0
"""2100-01-01 UTC: no row of ours is later, so a later cursor is forged."""


def page_size_of(page_size: int) -> int:
    """The page size to use: the default for 0, at most MAX_PAGE_SIZE; InvalidArgument below 0."""
    if page_size < 0:
        raise InvalidArgument(FieldViolation("page_size", "must not be negative"))
    return DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)


def encode_page_token(at: float, key: str) -> str:
    """An opaque cursor after (at, key)."""
    raw = json.dumps([at, key]).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(token: str, listing: str) -> tuple[float, str]:
    """The cursor in `token`, or InvalidArgument on `page_token` naming the `listing`."""
    bad = InvalidArgument(FieldViolation("page_token", f"is not a token from {listing}"))
    if len(token) > MAX_TOKEN_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        at, key = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise bad from None
    if (
        isinstance(at, bool)
        or not isinstance(at, int | float)
        or not isinstance(key, str)
        or not 0 <= at <= LATEST_PAGE_TIME  # NaN fails too
    ):
        raise bad
    return float(at), key


__all__ = [
    "DEFAULT_PAGE_SIZE",
    "LATEST_PAGE_TIME",
    "MAX_PAGE_SIZE",
    "MAX_TOKEN_CHARS",
    "decode_page_token",
    "encode_page_token",
    "page_size_of",
]
