"""TOTP codes and recovery codes: generation, shapes and matching (RFC 6238, RFC 4226).

A TOTP code is HOTP over the 30-second time step. `match_step` accepts the
current step and one on either side (the usual ±30 s of clock drift between a
phone and the server) and returns *which* step matched, so the caller can make
the acceptance single-use: the factor's `last_used_step` only moves forward
(a conditional UPDATE), so a code, or any code from an earlier step, is accepted
at most once (SECURITY D3, RFC 6238 §5.2). Every candidate is compared in
constant time, and all three are always computed.

Recovery codes are 80 random bits written as 16 base32 characters in four
groups (`abcd-efgh-ijkl-mnop`); they are stored only as HMAC-SHA256 under a
server key with the account id in the message, so a database dump alone cannot
test guesses and a hash copied to another account matches nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable
from typing import Final

import pyotp

STEP_SECONDS: Final = 30
DIGITS: Final = 6
DRIFT_STEPS: Final = 1
SECRET_BYTES: Final = 20
"""160-bit secrets, the length RFC 4226 §4 recommends for HMAC-SHA1."""
RECOVERY_CODE_COUNT: Final = 10
RECOVERY_CODE_BYTES: Final = 10
_RECOVERY_LABEL: Final = b"xh.totp.recovery.v1"
_CODE_SHAPE = re.compile(r"[0-9]{6}")
_RECOVERY_SHAPE = re.compile(r"[a-z2-7]{16}")


def new_secret(token_bytes: Callable[[int], bytes]) -> str:
    """A new base32 secret (no padding) from `token_bytes`."""
    return base64.b32encode(token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def provisioning_uri(secret: str, *, label: str, issuer: str) -> str:
    """The `otpauth://totp/...` URI authenticator apps read (issuer and label encoded)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=label, issuer_name=issuer
    )


def normalise_code(code: str) -> str | None:
    """The six digits of a typed TOTP code (full-width digits and spaces allowed), or None."""
    typed = re.sub(r"\s+", "", unicodedata.normalize("NFKC", code))
    return typed if _CODE_SHAPE.fullmatch(typed) else None


def step_at(now: float) -> int:
    """The RFC 6238 time step of `now`."""
    return int(now // STEP_SECONDS)


def match_step(secret: str, code: str, now: float) -> int | None:
    """The time step within ±`DRIFT_STEPS` whose code is `code` (normalised), or None."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = step_at(now)
    matched: int | None = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        expected = totp.generate_otp(step)
        if hmac.compare_digest(expected.encode("ascii"), code.encode("ascii")):
            matched = step  # the newest matching step wins; keep comparing all three
    return matched


def code_at(secret: str, now: float) -> str:
    """The code of `secret` at `now` (what an authenticator app shows; tests and docs)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).generate_otp(step_at(now))


def new_recovery_codes(token_bytes: Callable[[int], bytes]) -> tuple[str, ...]:
    """`RECOVERY_CODE_COUNT` distinct recovery codes, formatted for display."""
    codes: list[str] = []
    while len(codes) < RECOVERY_CODE_COUNT:
        raw = base64.b32encode(token_bytes(RECOVERY_CODE_BYTES)).decode("ascii").lower()
        shown = "-".join(raw[i : i + 4] for i in range(0, 16, 4))
        if shown not in codes:
            codes.append(shown)
    return tuple(codes)


def normalise_recovery_code(code: str) -> str | None:
    """A typed recovery code without separators, lower case; None if it cannot be one."""
    typed = re.sub(r"[\s\-]+", "", unicodedata.normalize("NFKC", code)).lower()
    return typed if _RECOVERY_SHAPE.fullmatch(typed) else None


def recovery_code_hash(key: bytes, account_id: str, normalised: str) -> str:
    """HMAC-SHA256 (hex) of a normalised recovery code, bound to its account."""
    message = b"\x00".join(
        (_RECOVERY_LABEL, account_id.encode("utf-8"), normalised.encode("ascii"))
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest()


__all__ = [
    "DIGITS",
    "RECOVERY_CODE_COUNT",
    "STEP_SECONDS",
    "code_at",
    "match_step",
    "new_recovery_codes",
    "new_secret",
    "normalise_code",
    "normalise_recovery_code",
    "provisioning_uri",
    "recovery_code_hash",
    "step_at",
]
