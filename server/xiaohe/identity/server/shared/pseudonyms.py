"""Keyed pseudonyms: stable stand-ins for values that must not appear themselves.

An end-user IP must not sit in a Redis key, and a session id must not sit in a
log line, yet both have to be recognisable again (the same IP hits the same
window; two log lines about one session can be correlated). A keyed HMAC of
the value does both: equal inputs give equal tags, and without the key a tag
cannot be reversed, not even for IPv4 by trying all four billion addresses.
Each use has its own label, so a tag from one use says nothing in another.
"""

from __future__ import annotations

import hashlib
import hmac

from xiaohe.identity.server.shared.network import ip_bucket

IP_LABEL = "xh.ip.v1"
LOG_LABEL = "xh.log.v1"


class Pseudonyms:
    """HMAC-SHA256 tags under one key; `label` separates the uses."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("a pseudonym key is at least 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Pseudonyms(<key hidden>)"

    def tag(self, label: str, value: str, size: int = 16) -> str:
        """The hex tag (`size` bytes) of `value` for the use named `label`."""
        message = f"{label}\x00{value}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()[:size].hex()

    def ip(self, ip: str) -> str:
        """The tag of the unit an IP stands for (`network.ip_bucket`): one user, one tag."""
        return self.tag(IP_LABEL, ip_bucket(ip))

    def for_log(self, value: str) -> str:
        """A short tag of an id (a session id, say) that log lines may carry instead of it."""
        return self.tag(LOG_LABEL, value, size=6)
