"""Access tokens: issued as EdDSA JWTs, validated with the SDK's verification code.

The server does not carry its own JWT verifier: `AccessTokenValidator` calls
`xiaohe.identity.tokens.jwt.decode_verified`, the same code business systems run
through `TokenVerifier`, so the two cannot disagree about what a valid token is
(SECURITY T1). Revocation is not checked here; the session service does that on
top of `validate` (ARCHITECTURE "Tokens and sessions").
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Mapping, Sequence

from nacl.signing import SigningKey, VerifyKey

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.tokens.jwt import (
    Claims,
    InvalidToken,
    decode_verified,
    encode_eddsa,
    jwk_from_public_key,
)

DEFAULT_ACCESS_TOKEN_TTL = 600.0
DEFAULT_VALIDATOR_LEEWAY = 5.0
"""Seconds of leeway `AccessTokenValidator` allows by default (as does the
`token_leeway_seconds` setting); `RevocationList` keeps entries past it."""
_JTI_BYTES = 16


class AccessTokenIssuer:
    """Signs access tokens with the key ring's current Ed25519 key.

    Claims: `iss sub sid aud iat exp amr subject_type rn_level` (ARCHITECTURE
    "Tokens and sessions") plus a random `jti` (128 bits), so two tokens issued in
    the same second for one session still differ. `iat` and `exp` are whole
    seconds. `signing_key_provider` is asked on every issue, so a rotation takes
    effect at once; the derived `SigningKey` is kept until the key changes.
    """

    def __init__(
        self,
        signing_key_provider: Callable[[], tuple[str, bytes]],
        issuer: str,
        clock: Clock,
        ttl: float = DEFAULT_ACCESS_TOKEN_TTL,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        self._signing_key_provider = signing_key_provider
        self._issuer = issuer
        self._clock = clock
        self._ttl = ttl
        self._random_bytes = random_bytes
        self._current: tuple[str, bytes] | None = None
        self._signing_key: SigningKey | None = None

    def issue(
        self,
        sub: str,
        sid: str,
        aud: str | Sequence[str],
        amr: Sequence[str],
        subject_type: str,
        rn_level: int,
        restriction: str = "",
    ) -> tuple[str, float]:
        """Sign a new access token; returns the token and its expiry (epoch seconds).

        A `restriction` (e.g. `consent`) goes into the token as the claim of that
        name; validators refuse such tokens unless told to allow them.
        """
        audiences = [aud] if isinstance(aud, str) else list(aud)
        if not audiences:
            raise ValueError("an access token needs at least one audience")
        kid, signing_key = self._key()
        now = self._clock.now()
        iat = math.floor(now)
        exp = math.floor(now + self._ttl)
        claims: dict[str, object] = {
            "iss": self._issuer,
            "sub": sub,
            "sid": sid,
            "aud": audiences[0] if len(audiences) == 1 else audiences,
            "iat": iat,
            "exp": exp,
            "amr": list(amr),
            "subject_type": subject_type,
            "rn_level": rn_level,
            "jti": self._random_bytes(_JTI_BYTES).hex(),
        }
        if restriction:
            claims["restriction"] = restriction
        return encode_eddsa(claims, kid, signing_key), float(exp)

    def _key(self) -> tuple[str, SigningKey]:
        current = self._signing_key_provider()
        if self._signing_key is None or current != self._current:
            self._signing_key = SigningKey(current[1])
            self._current = current
        return current[0], self._signing_key


class AccessTokenValidator:
    """Checks an access token's signature, type, lifetime, audience and issuer.

    `public_keys_provider` (kid → raw 32-byte Ed25519 public key, from the key
    ring) is asked on every call; `VerifyKey` objects are rebuilt only when the
    set it returns changes, so the hot path costs one signature check. Failures
    raise the SDK's `InvalidToken` (`UnknownKeyId` for a kid not in the ring), whose
    `reason` callers may log; map it to `TokenInvalid` / `UserUnauthenticated`
    at the service layer. `leeway` is small by default: issuer and validator
    share one clock source.

    A business system presents the same token on every request of a session, so
    the claims of a verified (token, audience) pair are kept until the token
    expires: a repeat costs a dict lookup and a lifetime check. The key is the
    whole token string, so only a byte-identical token can hit; a change of the
    key set clears the cache; revocation is the caller's check, on every call.
    """

    def __init__(
        self,
        public_keys_provider: Callable[[], Mapping[str, bytes]],
        issuer: str,
        clock: Clock,
        leeway: float = DEFAULT_VALIDATOR_LEEWAY,
        cache_size: int = 10_000,
    ) -> None:
        self._public_keys_provider = public_keys_provider
        self._issuer = issuer
        self._clock = clock
        self._leeway = leeway
        self._source: dict[str, bytes] = {}
        self._keys: dict[str, VerifyKey] = {}
        self._header_cache: dict[str, str] = {}
        self._verified: dict[tuple[str, str], Claims] = {}
        self._cache_size = cache_size

    def validate(self, token: str, audience: str) -> Claims:
        """Verify `token` for `audience`; returns its claims or raises `InvalidToken`."""
        keys = self._verify_keys()
        now = self._clock.now()
        cached = self._verified.get((token, audience))
        if cached is not None:
            if now - self._leeway < cached.exp:
                return cached
            del self._verified[(token, audience)]
            raise InvalidToken("expired")
        claims = decode_verified(
            token,
            keys,
            audience=audience,
            now=now,
            leeway=self._leeway,
            issuer=self._issuer,
            header_cache=self._header_cache,
        )
        if len(self._verified) >= self._cache_size:
            # Drop the oldest entry (dicts keep insertion order): a bounded, cheap FIFO.
            del self._verified[next(iter(self._verified))]
        self._verified[(token, audience)] = claims
        return claims

    def _verify_keys(self) -> dict[str, VerifyKey]:
        current = self._public_keys_provider()
        if current != self._source:
            self._keys = {kid: VerifyKey(bytes(raw)) for kid, raw in current.items()}
            self._source = dict(current)
            self._header_cache.clear()
            self._verified.clear()
        return self._keys


def jwks_json(public_keys: Mapping[str, bytes]) -> str:
    """The JWKS document (RFC 7517) that `GetSigningKeys` serves for these public keys."""
    return json.dumps(
        {"keys": [jwk_from_public_key(kid, raw) for kid, raw in public_keys.items()]},
        separators=(",", ":"),
    )
