"""Server-side access tokens: issuing, validating with the SDK code, JWKS (SECURITY T1)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.signing import SigningKey, VerifyKey

import xiaohe.identity.server.sessions.tokens as tokens_module
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.sessions.tokens import (
    AccessTokenIssuer,
    AccessTokenValidator,
    jwks_json,
)
from xiaohe.identity.tokens.jwt import InvalidToken, UnknownKeyId, keys_from_jwks

ISSUER = "https://id.xiaohe.test"
AUDIENCE = "biz.orders"


class KeyRing:
    """A stand-in for the key ring: a current signing key and the public keys to accept."""

    def __init__(self) -> None:
        self.seeds = {"k1": bytes(range(32))}
        self.current = "k1"

    def add(self, kid: str, seed: bytes, *, make_current: bool = True) -> None:
        self.seeds[kid] = seed
        if make_current:
            self.current = kid

    def signing_key(self) -> tuple[str, bytes]:
        return self.current, self.seeds[self.current]

    def public_keys(self) -> Mapping[str, bytes]:
        return {kid: bytes(SigningKey(seed).verify_key) for kid, seed in self.seeds.items()}


@pytest.fixture
def ring() -> KeyRing:
    """A key ring holding one key, k1."""
    return KeyRing()


def _issuer(ring: KeyRing, clock: FakeClock, ttl: float = 600.0) -> AccessTokenIssuer:
    return AccessTokenIssuer(ring.signing_key, ISSUER, clock, ttl=ttl)


def _validator(ring: KeyRing, clock: FakeClock, leeway: float = 5.0) -> AccessTokenValidator:
    return AccessTokenValidator(ring.public_keys, ISSUER, clock, leeway=leeway)


def _issue(issuer: AccessTokenIssuer, aud: str | list[str] = AUDIENCE) -> tuple[str, float]:
    return issuer.issue(
        sub="acc_1",
        sid="ses_1",
        aud=aud,
        amr=["pwd", "sms"],
        subject_type="legal_person",
        rn_level=3,
    )


def _header(token: str) -> dict[str, object]:
    segment = token.split(".")[0]
    header: dict[str, object] = json.loads(base64.urlsafe_b64decode(segment + "=="))
    return header


def test_issue_and_validate_round_trip(ring: KeyRing, clock: FakeClock) -> None:
    """T1: an issued token validates and carries every access-token claim."""
    clock.advance(0.75)
    token, exp = _issue(_issuer(ring, clock))

    claims = _validator(ring, clock).validate(token, AUDIENCE)

    assert _header(token) == {"alg": "EdDSA", "kid": "k1", "typ": "at+jwt"}
    assert exp == float(int(clock.now()) + 600)
    assert claims.exp == exp
    assert claims.iat == float(int(clock.now()))
    assert (claims.iss, claims.sub, claims.sid) == (ISSUER, "acc_1", "ses_1")
    assert claims.aud == (AUDIENCE,)
    assert claims.amr == ("pwd", "sms")
    assert (claims.subject_type, claims.rn_level) == ("legal_person", 3)
    assert set(claims.raw) == {
        "iss",
        "sub",
        "sid",
        "aud",
        "iat",
        "exp",
        "amr",
        "subject_type",
        "rn_level",
        "jti",
    }


def test_each_token_has_its_own_jti(ring: KeyRing, clock: FakeClock) -> None:
    """T1: two tokens issued in the same second for one session differ (128-bit jti)."""
    issuer = _issuer(ring, clock)
    validator = _validator(ring, clock)
    first, second = _issue(issuer)[0], _issue(issuer)[0]
    assert first != second
    jti = validator.validate(first, AUDIENCE).raw["jti"]
    assert isinstance(jti, str)
    assert len(jti) == 32
    assert jti != validator.validate(second, AUDIENCE).raw["jti"]


def test_several_audiences(ring: KeyRing, clock: FakeClock) -> None:
    """T1: a token for several audiences validates for each of them only."""
    token, _ = _issue(_issuer(ring, clock), aud=[AUDIENCE, "biz.billing"])
    validator = _validator(ring, clock)
    assert validator.validate(token, "biz.billing").aud == (AUDIENCE, "biz.billing")
    assert validator.validate(token, AUDIENCE).sub == "acc_1"
    with pytest.raises(InvalidToken) as info:
        validator.validate(token, "biz.crm")
    assert info.value.reason == "wrong_audience"
    with pytest.raises(ValueError, match="audience"):
        _issue(_issuer(ring, clock), aud=[])


def test_pyjwt_verifies_an_issued_token_from_the_published_jwks(
    ring: KeyRing, clock: FakeClock
) -> None:
    """T1: an independent library verifies our token with the key from GetSigningKeys' JWKS."""
    token, _ = _issue(_issuer(ring, clock))
    document = json.loads(jwks_json(ring.public_keys()))
    (jwk,) = document["keys"]
    assert jwk["kid"] == "k1"
    public_key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "="))

    decoded = pyjwt.decode(
        token,
        key=public_key,
        algorithms=["EdDSA"],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert decoded["sid"] == "ses_1"
    # PyJWT's own JWK parser reads the same document.
    assert pyjwt.PyJWK(jwk).algorithm_name == "EdDSA"


def test_jwks_round_trips_through_the_sdk(ring: KeyRing) -> None:
    """T1: what the server publishes is exactly what the SDK's JWKS parser loads."""
    ring.add("k2", bytes(range(7, 39)), make_current=False)
    keys = keys_from_jwks(jwks_json(ring.public_keys()))
    assert keys == {kid: VerifyKey(raw) for kid, raw in ring.public_keys().items()}


def test_expiry_uses_the_clock_and_leeway(ring: KeyRing, clock: FakeClock) -> None:
    """T1: a token is refused once `now - leeway` reaches its `exp`."""
    token, _ = _issue(_issuer(ring, clock, ttl=60))
    validator = _validator(ring, clock, leeway=5.0)
    clock.advance(64)
    assert validator.validate(token, AUDIENCE).sub == "acc_1"
    clock.advance(1)
    with pytest.raises(InvalidToken) as info:
        validator.validate(token, AUDIENCE)
    assert info.value.reason == "expired"


def test_token_from_the_future_is_not_yet_valid(ring: KeyRing, clock: FakeClock) -> None:
    """T1: a token whose iat is ahead of the validator's clock beyond the leeway is refused."""
    ahead = FakeClock(clock.now() + 60)
    token, _ = _issue(_issuer(ring, ahead))
    with pytest.raises(InvalidToken) as info:
        _validator(ring, clock).validate(token, AUDIENCE)
    assert info.value.reason == "not_yet_valid"


def test_wrong_issuer_is_refused(ring: KeyRing, clock: FakeClock) -> None:
    """T1: a token signed by a ring key but naming another issuer is refused."""
    other = AccessTokenIssuer(ring.signing_key, "https://staging.xiaohe.test", clock)
    token, _ = _issue(other)
    with pytest.raises(InvalidToken) as info:
        _validator(ring, clock).validate(token, AUDIENCE)
    assert info.value.reason == "wrong_issuer"


def test_foreign_key_with_a_ring_kid_is_refused(ring: KeyRing, clock: FakeClock) -> None:
    """T1: a token signed outside the ring under a ring kid fails the signature check."""
    forged_ring = KeyRing()
    forged_ring.seeds["k1"] = bytes(range(50, 82))
    token, _ = _issue(_issuer(forged_ring, clock))
    with pytest.raises(InvalidToken) as info:
        _validator(ring, clock).validate(token, AUDIENCE)
    assert info.value.reason == "bad_signature"


def test_rotation_and_withdrawal(ring: KeyRing, clock: FakeClock) -> None:
    """T1: a rotated-in key signs at once; a withdrawn key stops validating at once."""
    issuer = _issuer(ring, clock)
    validator = _validator(ring, clock)
    old, _ = _issue(issuer)
    validator.validate(old, AUDIENCE)

    ring.add("k2", bytes(range(9, 41)))
    new, _ = _issue(issuer)
    assert _header(new)["kid"] == "k2"
    assert validator.validate(new, AUDIENCE).sub == "acc_1"
    assert validator.validate(old, AUDIENCE).sub == "acc_1"  # k1 still in the ring

    del ring.seeds["k1"]
    with pytest.raises(UnknownKeyId):
        validator.validate(old, AUDIENCE)
    assert validator.validate(new, AUDIENCE).sub == "acc_1"


def test_verify_keys_rebuilt_only_when_the_ring_changes(
    ring: KeyRing, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T1: the hot path reuses VerifyKey objects until the key set changes."""
    built: list[bytes] = []

    class CountingVerifyKey(VerifyKey):
        def __init__(self, key: bytes) -> None:
            built.append(key)
            super().__init__(key)

    monkeypatch.setattr(tokens_module, "VerifyKey", CountingVerifyKey)
    issuer = _issuer(ring, clock)
    validator = _validator(ring, clock)
    token, _ = _issue(issuer)
    for _ in range(5):
        validator.validate(token, AUDIENCE)
    assert len(built) == 1

    ring.add("k2", bytes(range(9, 41)), make_current=False)
    for _ in range(5):
        validator.validate(token, AUDIENCE)
    assert len(built) == 3


def test_signing_key_derived_once_per_key(
    ring: KeyRing, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T1: the issuer derives a SigningKey once per current key, not per token."""
    derived: list[bytes] = []

    class CountingSigningKey(SigningKey):
        def __init__(self, seed: bytes) -> None:
            derived.append(seed)
            super().__init__(seed)

    monkeypatch.setattr(tokens_module, "SigningKey", CountingSigningKey)
    issuer = _issuer(ring, clock)
    for _ in range(3):
        _issue(issuer)
    ring.add("k2", bytes(range(9, 41)))
    for _ in range(3):
        _issue(issuer)
    assert derived == [ring.seeds["k1"], ring.seeds["k2"]]


def test_ttl_must_be_positive(ring: KeyRing, clock: FakeClock) -> None:
    """T1: a zero or negative lifetime is a configuration error."""
    with pytest.raises(ValueError, match="ttl"):
        _issuer(ring, clock, ttl=0)


def test_repeated_validation_is_served_from_the_claims_cache(
    ring: KeyRing, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T1: a repeat costs no signature check, still expires on time, and never serves
    another audience or a token once its key left the ring."""
    issuer, validator = _issuer(ring, clock), _validator(ring, clock)
    token, _ = _issue(issuer)
    first = validator.validate(token, AUDIENCE)
    checks: list[str] = []
    real = tokens_module.decode_verified

    def counting(*args: object, **kwargs: object) -> object:
        checks.append("verify")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tokens_module, "decode_verified", counting)
    assert validator.validate(token, AUDIENCE) == first
    assert checks == []
    with pytest.raises(InvalidToken):
        validator.validate(token, "another-audience")
    assert checks == ["verify"]
    clock.advance(600 + 5)
    with pytest.raises(InvalidToken) as caught:
        validator.validate(token, AUDIENCE)
    assert caught.value.reason == "expired"

    fresh, _ = _issue(issuer)
    validator.validate(fresh, AUDIENCE)
    ring.add("k2", bytes(range(9, 41)))
    del ring.seeds["k1"]
    with pytest.raises(UnknownKeyId):
        validator.validate(fresh, AUDIENCE)
