"""Compact EdDSA JWTs: the access tokens of Xiaohe Identity, encoded and verified.

This is the single implementation of access-token verification: the server's
`sessions.tokens` imports it, and business systems use it through `TokenVerifier`.
It deliberately supports one algorithm (Ed25519, `alg=EdDSA`, RFC 8037) and one
token type (`typ=at+jwt`, RFC 9068), with keys chosen by `kid` from a key set the
caller supplies. Everything a token says about how to verify it (`jku`, `x5u`,
`jwk`, `x5c`, another `alg`) is ignored or refused, which rules out the classic JWT
attacks: `alg=none`, HMAC with the public key as secret, and attacker-supplied keys
(SECURITY T1; ASVS 5.0 V9.1-9.2; RFC 8725).

Ed25519 goes through libsodium (PyNaCl), which rejects non-canonical signatures and
small-order keys and costs ≈ 55 µs per verify. Everything else (one regex, one
base64 and JSON pass over the payload, the header served from a per-verifier cache)
adds ≈ 10 µs, for the target of 15,000 local verifications per second per core.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ALGORITHM = "EdDSA"
JWT_TYPE = "at+jwt"
MAX_TOKEN_LENGTH = 8192
"""Longer strings are refused before any decoding (an access token is ≈ 500 characters)."""

Reason = Literal[
    "malformed",
    "unsupported_alg",
    "unknown_kid",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_type",
    "wrong_issuer",
    "restricted",
    "auth_methods",
    "revoked",
    "revocation_resync",
    "revocations_stale",
]

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_SIGNATURE_LENGTH = 64
_HEADER_CACHE_LIMIT = 32
_PUBLIC_KEY_LENGTH = 32
_SEED_LENGTH = 32


class InvalidToken(Exception):
    """A token failed verification; `reason` is a short code, never token content."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(f"invalid token: {reason}")
        self.reason: Reason = reason


class UnknownKeyId(InvalidToken):
    """The token's `kid` is not in the key set; the caller may refetch the JWKS and retry."""

    def __init__(self) -> None:
        super().__init__("unknown_kid")


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims of an access token; `raw` is a read-only view of the whole payload."""

    iss: str
    sub: str
    sid: str
    aud: tuple[str, ...]
    iat: float
    exp: float
    amr: tuple[str, ...]
    subject_type: str
    rn_level: int
    raw: Mapping[str, object] = field(compare=False, hash=False, repr=False)
    restriction: str = ""
    """Why the session is restricted (`consent`: the user must accept the current privacy
    policy first; `phone_reverify`: the account must bind a phone again); "" for a normal
    session. Restricted tokens are refused by default."""


CONSENT_RESTRICTION = "consent"
"""A session restricted until the account accepts the current privacy policy."""

PHONE_REVERIFY_RESTRICTION = "phone_reverify"
"""A session restricted until the account binds a phone again: its phone was recycled."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    # Callers pass only text already matched against the base64url alphabet
    # (a2b_base64 alone would skip stray characters instead of refusing them).
    data = text.encode("ascii").translate(_FROM_URLSAFE)
    return binascii.a2b_base64(data + b"=" * (-len(data) % 4))


def _reject_constant(name: str) -> object:
    raise ValueError("non-finite number")


# Stateless and immutable once built; json.loads(**kwargs) would build one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_object(segment: str) -> dict[str, object]:
    try:
        value = _DECODER.decode(_b64decode(segment).decode("utf-8"))
    except (ValueError, binascii.Error, RecursionError):  # JSONDecodeError is a ValueError
        raise InvalidToken("malformed") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed")
    return value


def _number(value: object) -> float | None:
    """`value` as a float if it is a JSON number (not a bool, finite), else None."""
    if type(value) is int:
        return float(value)
    if type(value) is float and math.isfinite(value):
        return value
    return None


def _as_verify_key(key: VerifyKey | bytes) -> VerifyKey:
    if isinstance(key, VerifyKey):
        return key
    if len(key) != _PUBLIC_KEY_LENGTH:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return VerifyKey(key)


def encode_eddsa(claims: Mapping[str, object], kid: str, seed: bytes | SigningKey) -> str:
    """Sign `claims` as a compact JWS with header `{"alg":"EdDSA","kid":kid,"typ":"at+jwt"}`.

    `seed` is the 32-byte Ed25519 private seed, or an already built `SigningKey`
    (building one from a seed derives the public key, so issuers keep theirs).
    """
    if isinstance(seed, SigningKey):
        key = seed
    else:
        if len(seed) != _SEED_LENGTH:
            raise ValueError("an Ed25519 seed is 32 bytes")
        key = SigningKey(seed)
    header = {"alg": ALGORITHM, "kid": kid, "typ": JWT_TYPE}
    signing_input = (
        _b64encode(json.dumps(header, separators=(",", ":")).encode("utf-8"))
        + "."
        + _b64encode(
            json.dumps(dict(claims), separators=(",", ":"), allow_nan=False).encode("utf-8")
        )
    )
    signature = key.sign(signing_input.encode("ascii")).signature
    return signing_input + "." + _b64encode(signature)


def _checked_kid(header_segment: str) -> str:
    """The `kid` of a header that passes every header check, else `InvalidToken`."""
    header = _parse_object(header_segment)
    if header.get("alg") != ALGORITHM:
        raise InvalidToken("unsupported_alg")
    if header.get("typ") != JWT_TYPE:
        raise InvalidToken("wrong_type")
    if "crit" in header:
        # RFC 7515 §4.1.11: extensions we do not understand must make the token invalid.
        raise InvalidToken("malformed")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise InvalidToken("malformed")
    return kid


def decode_verified(
    token: str,
    keys: Mapping[str, VerifyKey | bytes],
    *,
    audience: str,
    now: float,
    leeway: float,
    issuer: str | None = None,
    header_cache: MutableMapping[str, str] | None = None,
) -> Claims:
    """Verify `token` against `keys` (by `kid`) and return its claims, or raise `InvalidToken`.

    Order matters: the header is checked first (exactly three segments, a JSON
    object, `alg` exactly "EdDSA", `typ` exactly "at+jwt", no `crit`, a `kid`
    found in `keys`), then the signature, and only then is the payload parsed and
    trusted. Key-carrying headers (`jku`, `x5u`, `jwk`, `x5c`) are never read.
    `exp` and `iat` are required numbers; the token is valid while
    `now - leeway < exp`, and `iat` or `nbf` later than `now + leeway` make it not
    yet valid. `aud` (a string or a list) must contain `audience`, and `iss` must
    equal `issuer` when given. The other claims of an access token (`iss sub sid
    amr subject_type rn_level`) must be present with their types, else "malformed".

    `header_cache`, if given, is a dict the caller owns (one per verifier) mapping
    a header segment to its `kid`. Every token one key signs has the same header,
    so this skips a base64 and JSON pass per token. It is sound because the header
    checks depend on the segment alone; it stays small because a segment is
    added only after a signature over it verified, so only the issuer can add one.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed")
    if _COMPACT.fullmatch(token) is None:
        raise InvalidToken("malformed")
    header_segment, payload_segment, signature_segment = token.split(".")

    kid = header_cache.get(header_segment) if header_cache is not None else None
    cached_header = kid is not None
    if kid is None:
        kid = _checked_kid(header_segment)
    key = keys.get(kid)
    if key is None:
        raise UnknownKeyId()

    try:
        signature = _b64decode(signature_segment)
    except (ValueError, binascii.Error):
        raise InvalidToken("malformed") from None
    if len(signature) != _SIGNATURE_LENGTH:
        raise InvalidToken("bad_signature")
    signing_input = token[: len(header_segment) + 1 + len(payload_segment)].encode("ascii")
    verify_key = key if isinstance(key, VerifyKey) else _as_verify_key(key)
    try:
        verify_key.verify(signing_input, signature)
    except BadSignatureError:
        raise InvalidToken("bad_signature") from None
    if header_cache is not None and not cached_header and len(header_cache) < _HEADER_CACHE_LIMIT:
        header_cache[header_segment] = kid

    payload = _parse_object(payload_segment)
    exp = _number(payload.get("exp"))
    if exp is None:
        raise InvalidToken("malformed")
    if now - leeway >= exp:
        raise InvalidToken("expired")
    iat = _number(payload.get("iat"))
    if iat is None:
        raise InvalidToken("malformed")
    if iat > now + leeway:
        raise InvalidToken("not_yet_valid")
    if "nbf" in payload:
        nbf = _number(payload["nbf"])
        if nbf is None:
            raise InvalidToken("malformed")
        if nbf > now + leeway:
            raise InvalidToken("not_yet_valid")

    aud = payload.get("aud")
    if isinstance(aud, str):
        audiences: tuple[str, ...] = (aud,)
    elif isinstance(aud, list) and all(isinstance(item, str) for item in aud):
        audiences = tuple(aud)
    else:
        raise InvalidToken("wrong_audience")
    if audience not in audiences:
        raise InvalidToken("wrong_audience")
    iss = payload.get("iss")
    if issuer is not None and iss != issuer:
        raise InvalidToken("wrong_issuer")
    return _claims(payload, audiences, iat, exp)


def _claims(
    payload: dict[str, object], audiences: tuple[str, ...], iat: float, exp: float
) -> Claims:
    iss = payload.get("iss")
    sub = payload.get("sub")
    sid = payload.get("sid")
    amr = payload.get("amr")
    subject_type = payload.get("subject_type")
    rn_level = payload.get("rn_level")
    restriction = payload.get("restriction", "")
    if not (
        isinstance(restriction, str)
        and isinstance(iss, str)
        and isinstance(sub, str)
        and isinstance(sid, str)
        and isinstance(amr, list)
        and all(isinstance(method, str) for method in amr)
        and isinstance(subject_type, str)
        and type(rn_level) is int
    ):
        raise InvalidToken("malformed")
    return Claims(
        iss=iss,
        sub=sub,
        sid=sid,
        aud=audiences,
        iat=iat,
        exp=exp,
        amr=tuple(amr),
        subject_type=subject_type,
        rn_level=rn_level,
        raw=MappingProxyType(payload),
        restriction=restriction,
    )


def jwk_from_public_key(kid: str, raw32: bytes) -> dict[str, str]:
    """The public JWK (RFC 8037, OKP/Ed25519) for a raw 32-byte public key."""
    if len(raw32) != _PUBLIC_KEY_LENGTH:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64encode(raw32),
        "use": "sig",
        "alg": ALGORITHM,
        "kid": kid,
    }


def keys_from_jwks(jwks_json: str) -> dict[str, VerifyKey]:
    """Parse a JWKS document into verify keys by `kid`, keeping only Ed25519 signing keys.

    Keys of another type or curve, or marked for another use or algorithm, are
    skipped (a key set may serve other consumers). A malformed document, an Ed25519
    entry without a usable `kid` or `x`, or two different keys under one `kid`
    raise `ValueError`: a half-understood key set must not silently lose keys.
    """
    try:
        document = json.loads(jwks_json)
    except ValueError:
        raise ValueError("malformed JWKS") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("malformed JWKS: no key list")
    keys: dict[str, VerifyKey] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("malformed JWKS: a key is not an object")
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", ALGORITHM) != ALGORITHM:
            continue
        if "d" in entry:
            raise ValueError("malformed JWKS: private key material in a public key set")
        kid = entry.get("kid")
        x = entry.get("x")
        if not isinstance(kid, str) or not kid or not isinstance(x, str):
            raise ValueError("malformed JWKS: Ed25519 key without kid or x")
        if _BASE64URL.fullmatch(x) is None:
            raise ValueError("malformed JWKS: x is not base64url")
        try:
            raw = _b64decode(x)
        except (ValueError, binascii.Error):
            raise ValueError("malformed JWKS: x is not base64url") from None
        if len(raw) != _PUBLIC_KEY_LENGTH:
            raise ValueError("malformed JWKS: x is not a 32-byte key")
        key = VerifyKey(raw)
        if kid in keys and keys[kid] != key:
            raise ValueError("malformed JWKS: two keys share one kid")
        keys[kid] = key
    return keys
