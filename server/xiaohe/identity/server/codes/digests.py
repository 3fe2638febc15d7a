"""Keyed digests of the code subsystem and the codes themselves."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from xiaohe.identity.server.codes.models import Channel, Purpose
from xiaohe.identity.server.shared.pseudonyms import Pseudonyms

CODE_DIGITS = 6


def six_digits() -> str:
    """A uniformly random 6-digit code from the OS CSPRNG."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


class CodeDigests:
    """Keyed digests of the code subsystem: destination tags, code HMACs and IP tags.

    All use HMAC-SHA256 under the code HMAC key, with inputs that cannot collide
    across uses (`<channel>:<destination>` for tags, prefixed inputs for the
    rest). Without the key, a Redis dump tells nothing about destinations or
    codes: a 6-digit code is trivially enumerable from a plain hash, not from an
    HMAC. The code HMAC covers channel, destination and purpose, so a stored
    code is also cryptographically bound to what it was issued for.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the code HMAC key must be at least 32 bytes")
        self._key = key
        self._pseudonyms = Pseudonyms(key)

    def __repr__(self) -> str:
        return "CodeDigests(<key hidden>)"

    def _mac(self, message: str) -> bytes:
        return hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).digest()

    def destination_tag(self, channel: Channel, destination: str) -> str:
        """Pseudonym of a normalised destination: HMAC of `channel:destination`, 16 bytes hex."""
        return self._mac(f"{channel.value}:{destination}")[:16].hex()

    def code_mac(self, channel: Channel, destination: str, purpose: Purpose, code: str) -> str:
        """The stored form of a code (hex HMAC over the code and what it is bound to)."""
        message = "\x00".join(("xh.code.v1", channel.value, destination, purpose.value, code))
        return self._mac(message).hex()

    def ip_tag(self, ip: str) -> str:
        """The pseudonym of an end-user IP (IPv6 by /64 prefix, where one user usually sits)."""
        return self._pseudonyms.ip(ip)


__all__ = ["CODE_DIGITS", "CodeDigests", "six_digits"]
