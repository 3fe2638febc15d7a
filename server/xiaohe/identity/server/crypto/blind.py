"""Keyed, deterministic digests of identifiers: blind indexes and pseudonyms.

An encrypted column cannot be searched, so equality lookups (find the account
with this phone number) go through a blind index: HMAC-SHA256 of the normalised
value under a secret key. Unlike a plain hash, a leaked database alone does not
let anyone test guesses: phone and ID numbers are short enough to enumerate, but
not without the key.

The kind (`phone`, `id_number`, ...) is part of the HMAC input, separated by a
NUL that kinds may not contain, so the same digits as a phone number and as an
ID number give unrelated digests and cannot be linked across columns.

Use a different key for each purpose (the key ring holds separate blind index,
code HMAC and audit pseudonym keys), so an audit pseudonym cannot be matched
against a blind index column.
"""

from __future__ import annotations

import hashlib
import hmac

from xiaohe.identity.server.shared.pseudonyms import Pseudonyms

MIN_KEY_BYTES = 32
PSEUDONYM_BYTES = 16


def _check_kind(kind: str) -> None:
    if not kind or "\x00" in kind:
        raise ValueError("kind must be non-empty and must not contain NUL")


def _message(kind: str, value: str) -> bytes:
    _check_kind(kind)
    return kind.encode("utf-8") + b"\x00" + value.encode("utf-8")


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the key must be at least {MIN_KEY_BYTES} bytes")


class BlindIndex:
    """HMAC-SHA256 blind indexes for equality lookups on encrypted identifiers."""

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        self._key = key

    def __repr__(self) -> str:
        return "BlindIndex(<key hidden>)"

    def compute(self, kind: str, normalized_value: str) -> str:
        """Hex HMAC-SHA256 of `kind NUL value`; the caller normalises the value first."""
        return hmac.new(self._key, _message(kind, normalized_value), hashlib.sha256).hexdigest()


class Pseudonymizer:
    """Short keyed pseudonyms (32 hex chars) of identifiers, by kind.

    A thin front for `shared.pseudonyms.Pseudonyms`, the one keyed-pseudonym
    implementation (the kind is its label): 128 bits are plenty to avoid
    collisions among identifiers while keeping keys and log lines short; the
    value itself never leaves this object.
    """

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        self._pseudonyms = Pseudonyms(key)

    def __repr__(self) -> str:
        return "Pseudonymizer(<key hidden>)"

    def pseudonym(self, kind: str, value: str) -> str:
        """The first 16 bytes of HMAC-SHA256 of `kind NUL value`, as hex."""
        _check_kind(kind)
        return self._pseudonyms.tag(kind, value, size=PSEUDONYM_BYTES)
