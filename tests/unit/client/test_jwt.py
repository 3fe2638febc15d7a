"""Access-token JWTs: encoding, verification and the classic JWT attacks (SECURITY T1)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.signing import SigningKey, VerifyKey

from xiaohe.identity.tokens.jwt import (
    MAX_TOKEN_LENGTH,
    Claims,
    InvalidToken,
    UnknownKeyId,
    decode_verified,
    encode_eddsa,
    jwk_from_public_key,
    keys_from_jwks,
)

NOW = 1_790_000_000.0
AUDIENCE = "biz.orders"
ISSUER = "https://id.xiaohe.test"
SEED = bytes(range(32))
OTHER_SEED = bytes(range(100, 132))
KID = "k1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_b64(value: object) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "acc_1",
        "sid": "ses_1",
        "aud": AUDIENCE,
        "iat": int(NOW),
        "exp": int(NOW) + 600,
        "amr": ["pwd", "sms"],
        "subject_type": "natural_person",
        "rn_level": 2,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign_raw(header: dict[str, Any], payload: object, seed: bytes = SEED) -> str:
    """A token with an arbitrary header, signed over exactly what it says."""
    signing_input = _json_b64(header) + "." + _json_b64(payload)
    signature = SigningKey(seed).sign(signing_input.encode()).signature
    return signing_input + "." + _b64(signature)


def _header(**overrides: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": "EdDSA", "kid": KID, "typ": "at+jwt"}
    header.update(overrides)
    return {k: v for k, v in header.items() if v is not None}


def _keys() -> dict[str, VerifyKey]:
    return {KID: SigningKey(SEED).verify_key}


def _decode(token: str, **kwargs: Any) -> Claims:
    args: dict[str, Any] = {"audience": AUDIENCE, "now": NOW, "leeway": 30.0}
    args.update(kwargs)
    keys = args.pop("keys", _keys())
    return decode_verified(token, keys, **args)


def _reason(token: str, **kwargs: Any) -> str:
    with pytest.raises(InvalidToken) as info:
        _decode(token, **kwargs)
    assert str(info.value) == f"invalid token: {info.value.reason}"
    return info.value.reason


def test_round_trip() -> None:
    """T1: a token we sign verifies, and every claim comes back typed."""
    token = encode_eddsa(_claims(jti="j1"), KID, SEED)
    header = json.loads(_unb64(token.split(".")[0]))
    assert header == {"alg": "EdDSA", "kid": KID, "typ": "at+jwt"}

    claims = _decode(token, issuer=ISSUER)

    assert claims.iss == ISSUER
    assert claims.sub == "acc_1"
    assert claims.sid == "ses_1"
    assert claims.aud == (AUDIENCE,)
    assert claims.iat == NOW
    assert claims.exp == NOW + 600
    assert claims.amr == ("pwd", "sms")
    assert claims.subject_type == "natural_person"
    assert claims.rn_level == 2
    assert claims.raw["jti"] == "j1"
    with pytest.raises(TypeError):
        claims.raw["sub"] = "acc_2"  # type: ignore[index]


def test_signing_key_object_and_raw_public_key_bytes_are_accepted() -> None:
    """T1: an issuer may pass a built SigningKey; a key set may hold raw 32-byte keys."""
    signing_key = SigningKey(SEED)
    token = encode_eddsa(_claims(), KID, signing_key)
    assert token == encode_eddsa(_claims(), KID, SEED)  # Ed25519 is deterministic
    claims = _decode(token, keys={KID: bytes(signing_key.verify_key)})
    assert claims.sub == "acc_1"


def test_pyjwt_verifies_our_token_with_the_key_from_our_jwk() -> None:
    """T1: an independent library (PyJWT) accepts our token, keyed only by our published JWK."""
    token = encode_eddsa(_claims(aud=[AUDIENCE, "biz.other"]), KID, SEED)
    jwk = jwk_from_public_key(KID, bytes(SigningKey(SEED).verify_key))
    public_key = Ed25519PublicKey.from_public_bytes(_unb64(jwk["x"]))

    decoded = pyjwt.decode(
        token,
        key=public_key,
        algorithms=["EdDSA"],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )

    assert decoded["sub"] == "acc_1"
    assert pyjwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": KID, "typ": "at+jwt"}
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(
            token,
            key=Ed25519PublicKey.from_public_bytes(bytes(SigningKey(OTHER_SEED).verify_key)),
            algorithms=["EdDSA"],
            audience=AUDIENCE,
            options={"verify_exp": False},
        )


def test_we_verify_a_token_signed_by_pyjwt() -> None:
    """T1: interoperability the other way: PyJWT signs, our decoder verifies."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_key = Ed25519PrivateKey.from_private_bytes(SEED)
    token = pyjwt.encode(
        _claims(), private_key, algorithm="EdDSA", headers={"kid": KID, "typ": "at+jwt"}
    )
    assert _decode(token).sub == "acc_1"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
def test_alg_none_is_refused(alg: str) -> None:
    """T1: an unsigned token (alg none, empty signature) is refused."""
    token = _json_b64(_header(alg=alg)) + "." + _json_b64(_claims()) + "."
    assert _reason(token) == "unsupported_alg"


def test_alg_none_with_a_copied_signature_is_refused() -> None:
    """T1: alg none keeps failing even if a real signature is attached."""
    real = encode_eddsa(_claims(), KID, SEED)
    token = _json_b64(_header(alg="none")) + "." + real.split(".", 1)[1]
    assert _reason(token) == "unsupported_alg"


@pytest.mark.parametrize("alg", ["HS256", "HS512", "RS256", "ES256", "eddsa", "Ed25519"])
def test_other_algorithms_are_refused(alg: str) -> None:
    """T1: only exactly "EdDSA" is accepted."""
    token = _sign_raw(_header(alg=alg), _claims())
    assert _reason(token) == "unsupported_alg"


def test_alg_missing_or_not_a_string_is_refused() -> None:
    """T1: a header without alg, or with a non-string alg, is refused."""
    assert _reason(_sign_raw(_header(alg=None), _claims())) == "unsupported_alg"
    assert _reason(_sign_raw(_header(alg=["EdDSA"]), _claims())) == "unsupported_alg"


@pytest.mark.parametrize(
    "secret",
    [
        bytes(SigningKey(SEED).verify_key),
        _b64(bytes(SigningKey(SEED).verify_key)).encode(),
        json.dumps(jwk_from_public_key(KID, bytes(SigningKey(SEED).verify_key))).encode(),
    ],
    ids=["raw", "base64url", "jwk-json"],
)
def test_hmac_with_the_public_key_as_secret_is_refused(secret: bytes) -> None:
    """T1: algorithm confusion: an HS256 token keyed with our public key is refused."""
    signing_input = _json_b64(_header(alg="HS256")) + "." + _json_b64(_claims())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    assert _reason(signing_input + "." + _b64(mac)) == "unsupported_alg"


def test_hmac_signature_under_an_eddsa_header_is_refused() -> None:
    """T1: a 64-byte HMAC-SHA512 with the public key as secret, claiming EdDSA, fails the check."""
    secret = bytes(SigningKey(SEED).verify_key)
    signing_input = _json_b64(_header()) + "." + _json_b64(_claims())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha512).digest()
    assert len(mac) == 64
    assert _reason(signing_input + "." + _b64(mac)) == "bad_signature"


def test_foreign_key_with_our_kid_is_refused() -> None:
    """T1: a token signed by another Ed25519 key under a known kid fails the signature check."""
    token = encode_eddsa(_claims(), KID, OTHER_SEED)
    assert _reason(token) == "bad_signature"


def test_unknown_kid_raises_unknown_key_id() -> None:
    """T1: a kid outside the given key set raises UnknownKeyId, an InvalidToken."""
    token = encode_eddsa(_claims(), "k2", SEED)
    with pytest.raises(UnknownKeyId) as info:
        _decode(token)
    assert isinstance(info.value, InvalidToken)
    assert info.value.reason == "unknown_kid"


def test_missing_or_non_string_kid_is_malformed() -> None:
    """T1: keys are chosen by a string kid only."""
    assert _reason(_sign_raw(_header(kid=None), _claims())) == "malformed"
    assert _reason(_sign_raw(_header(kid=1), _claims())) == "malformed"


@pytest.mark.parametrize(
    "change",
    [
        {"sub": "acc_2"},
        {"rn_level": 3},
        {"exp": int(NOW) + 60_000},
        {"aud": "biz.other"},
        {"amr": ["pwd", "sms", "mfa"]},
    ],
)
def test_changed_claim_with_original_signature_is_refused(change: dict[str, Any]) -> None:
    """T1: editing the payload and keeping the signature fails the signature check."""
    header, _, signature = encode_eddsa(_claims(), KID, SEED).split(".")
    forged = header + "." + _json_b64(_claims(**change)) + "." + signature
    assert _reason(forged, audience=change.get("aud", AUDIENCE)) == "bad_signature"


def test_changed_header_with_original_signature_is_refused() -> None:
    """T1: the header is covered by the signature too."""
    _, payload, signature = encode_eddsa(_claims(), KID, SEED).split(".")
    forged = _json_b64({"alg": "EdDSA", "typ": "at+jwt", "kid": KID}) + "." + payload
    assert _reason(forged + "." + signature) == "bad_signature"


def test_truncated_or_flipped_signature_is_refused() -> None:
    """T1: a signature that is not exactly a valid 64-byte Ed25519 signature fails."""
    token = encode_eddsa(_claims(), KID, SEED)
    head, signature = token.rsplit(".", 1)
    raw = bytearray(_unb64(signature))
    assert _reason(head + "." + _b64(bytes(raw[:63]))) == "bad_signature"
    raw[10] ^= 1
    assert _reason(head + "." + _b64(bytes(raw))) == "bad_signature"
    assert _reason(head + ".") == "bad_signature"


def test_expiry_with_leeway() -> None:
    """T1: expired tokens are refused once `now - leeway` reaches `exp`."""
    token = encode_eddsa(_claims(exp=int(NOW) - 29), KID, SEED)
    assert _decode(token).exp == NOW - 29
    assert _reason(token, leeway=0.0) == "expired"
    at_edge = encode_eddsa(_claims(exp=int(NOW) - 30), KID, SEED)
    assert _reason(at_edge) == "expired"
    assert _reason(encode_eddsa(_claims(exp=int(NOW) - 3600), KID, SEED)) == "expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid_with_leeway(claim: str) -> None:
    """T1: nbf or iat in the future beyond the leeway is refused; within it, accepted."""
    assert _decode(encode_eddsa(_claims(**{claim: int(NOW) + 30}), KID, SEED)).sub == "acc_1"
    token = encode_eddsa(_claims(**{claim: int(NOW) + 31}), KID, SEED)
    assert _reason(token) == "not_yet_valid"
    assert _reason(encode_eddsa(_claims(**{claim: int(NOW) + 1}), KID, SEED), leeway=0) == (
        "not_yet_valid"
    )


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", None),
        ("exp", "1790000600"),
        ("exp", True),
        ("exp", [1790000600]),
        ("iat", None),
        ("iat", "now"),
        ("nbf", "soon"),
        ("sid", None),
        ("sub", 7),
        ("iss", None),
        ("amr", "pwd"),
        ("amr", ["pwd", 1]),
        ("subject_type", None),
        ("rn_level", "2"),
        ("rn_level", True),
    ],
)
def test_missing_or_mistyped_claims_are_malformed(claim: str, value: object) -> None:
    """T1: required claims must be present with their types, even in a validly signed token."""
    claims = _claims()
    if value is None:
        del claims[claim]
    else:
        claims[claim] = value
    assert _reason(_sign_raw(_header(), claims)) == "malformed"


@pytest.mark.parametrize("constant", ["Infinity", "NaN", "1e400"])
def test_non_finite_expiry_is_malformed(constant: str) -> None:
    """T1: `exp: Infinity` (which Python's json would accept) never makes a token immortal."""
    payload = json.dumps(_claims()).replace(f'"exp": {int(NOW) + 600}', f'"exp": {constant}')
    assert constant in payload
    signing_input = _json_b64(_header()) + "." + _b64(payload.encode())
    token = signing_input + "." + _b64(SigningKey(SEED).sign(signing_input.encode()).signature)
    assert _reason(token) == "malformed"


def test_audience_must_match() -> None:
    """T1: `aud` must contain the verifier's audience, as a string or in a list."""
    assert _reason(encode_eddsa(_claims(aud="biz.other"), KID, SEED)) == "wrong_audience"
    assert _reason(encode_eddsa(_claims(aud=["a", "b"]), KID, SEED)) == "wrong_audience"
    assert _reason(encode_eddsa(_claims(aud=None), KID, SEED)) == "wrong_audience"
    assert _reason(encode_eddsa(_claims(aud=[AUDIENCE, 3]), KID, SEED)) == "wrong_audience"
    assert _reason(encode_eddsa(_claims(aud=AUDIENCE + "x"), KID, SEED)) == "wrong_audience"
    listed = encode_eddsa(_claims(aud=["biz.other", AUDIENCE]), KID, SEED)
    assert _decode(listed).aud == ("biz.other", AUDIENCE)


def test_issuer_checked_when_expected() -> None:
    """T1: `iss` must equal the expected issuer when one is given."""
    token = encode_eddsa(_claims(iss="https://evil.test"), KID, SEED)
    assert _decode(token).iss == "https://evil.test"
    assert _reason(token, issuer=ISSUER) == "wrong_issuer"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "AT+JWT", "at+JWT ", "id+jwt", None, 1])
def test_wrong_type_is_refused(typ: object) -> None:
    """T1: only `typ: at+jwt` is an access token; an ID token or a plain JWT is refused."""
    assert _reason(_sign_raw(_header(typ=typ), _claims())) == "wrong_type"


def test_critical_header_extensions_are_refused() -> None:
    """T1: a `crit` header names extensions we do not implement, so the token is refused."""
    assert _reason(_sign_raw(_header(crit=["exp"], exp=1), _claims())) == "malformed"


@pytest.mark.parametrize("embedded", ["jwk", "jku", "x5u", "x5c"])
def test_embedded_keys_and_key_urls_are_ignored(embedded: str) -> None:
    """T1: an attacker's key, embedded or linked in the header, is never used."""
    attacker = SigningKey(OTHER_SEED)
    attacker_jwk = jwk_from_public_key(KID, bytes(attacker.verify_key))
    value: object = {
        "jwk": attacker_jwk,
        "jku": "https://attacker.test/jwks.json",
        "x5u": "https://attacker.test/cert.pem",
        "x5c": ["MIIB"],
    }[embedded]

    same_kid = _sign_raw(_header(**{embedded: value}), _claims(), seed=OTHER_SEED)
    assert _reason(same_kid) == "bad_signature"

    own_kid = _sign_raw(_header(kid="attacker", **{embedded: value}), _claims(), OTHER_SEED)
    with pytest.raises(UnknownKeyId):
        _decode(own_kid)

    no_kid = _sign_raw(_header(kid=None, **{embedded: value}), _claims(), seed=OTHER_SEED)
    assert _reason(no_kid) == "malformed"

    # The same header fields on a token we did sign change nothing.
    ours = _sign_raw(_header(**{embedded: value}), _claims())
    assert _decode(ours).sub == "acc_1"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        ".e30.",
        "e30..",
        "e30.e30.e30=",
        "e30=.e30.",
        "e30.e30.+/",
        "e30 .e30.",
        " e30.e30.e30",
        "e30.e30.e30\n",
        "é.e30.e30",
    ],
)
def test_malformed_compact_form_is_refused(token: str) -> None:
    """T1: exactly three base64url segments without padding, or nothing."""
    assert _reason(token) == "malformed"


def test_header_must_be_a_json_object() -> None:
    """T1: a header that is not JSON, not an object or not UTF-8 is malformed."""
    rest = ".e30." + _b64(bytes(64))
    for header in (_b64(b"not json"), _json_b64(["EdDSA"]), _json_b64("EdDSA"), _b64(b"\xff\xfe")):
        assert _reason(header + rest) == "malformed"
    assert _reason("e" + rest) == "malformed"  # impossible base64 length


def test_payload_must_be_a_json_object() -> None:
    """T1: a validly signed payload that is not an object is malformed."""
    assert _reason(_sign_raw(_header(), [1, 2])) == "malformed"


def test_deeply_nested_header_is_malformed_not_a_crash() -> None:
    """T1: pathological JSON in the (unauthenticated) header fails cleanly."""
    header = _b64(b"[" * 3000 + b"]" * 3000)
    assert _reason(header + ".e30." + _b64(bytes(64))) == "malformed"


def test_oversized_token_is_refused_before_decoding() -> None:
    """T1: tokens beyond MAX_TOKEN_LENGTH are refused outright."""
    token = encode_eddsa(_claims(pad="x" * MAX_TOKEN_LENGTH), KID, SEED)
    assert _reason(token) == "malformed"


def test_non_string_token_is_malformed() -> None:
    """T1: bytes or None are not tokens."""
    assert _reason(b"a.b.c") == "malformed"  # type: ignore[arg-type]
    assert _reason(None) == "malformed"  # type: ignore[arg-type]


def test_header_cache_only_learns_from_verified_tokens() -> None:
    """T1: the header cache learns a header only after a signature over it verified."""
    cache: dict[str, str] = {}
    forged = _sign_raw(_header(extra=1), _claims(), seed=OTHER_SEED)
    assert _reason(forged, header_cache=cache) == "bad_signature"
    assert cache == {}

    token = encode_eddsa(_claims(), KID, SEED)
    assert _decode(token, header_cache=cache).sub == "acc_1"
    assert cache == {token.split(".")[0]: KID}
    # A cached header still needs a valid signature and a present key.
    assert _reason(encode_eddsa(_claims(), KID, OTHER_SEED), header_cache=cache) == "bad_signature"
    with pytest.raises(UnknownKeyId):
        _decode(token, header_cache=cache, keys={})


def test_jwk_from_public_key_shape() -> None:
    """T1: the published JWK is OKP/Ed25519 for signatures with EdDSA, and nothing private."""
    raw = bytes(SigningKey(SEED).verify_key)
    jwk = jwk_from_public_key(KID, raw)
    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64(raw),
        "use": "sig",
        "alg": "EdDSA",
        "kid": KID,
    }
    with pytest.raises(ValueError, match="32 bytes"):
        jwk_from_public_key(KID, raw[:31])


def test_keys_from_jwks_keeps_only_ed25519_signing_keys() -> None:
    """T1: a JWKS yields VerifyKeys by kid; other key types, curves and uses are skipped."""
    one = bytes(SigningKey(SEED).verify_key)
    two = bytes(SigningKey(OTHER_SEED).verify_key)
    document = {
        "keys": [
            jwk_from_public_key("k1", one),
            {"kty": "OKP", "crv": "Ed25519", "x": _b64(two), "kid": "k2"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
            {"kty": "OKP", "crv": "X25519", "x": _b64(two), "kid": "x"},
            {"kty": "oct", "k": _b64(one), "kid": "hmac"},
            {**jwk_from_public_key("enc", two), "use": "enc"},
            {**jwk_from_public_key("es", two), "alg": "ES256"},
        ]
    }
    keys = keys_from_jwks(json.dumps(document))
    assert keys == {"k1": VerifyKey(one), "k2": VerifyKey(two)}
    assert _decode(encode_eddsa(_claims(), "k2", OTHER_SEED), keys=keys).sub == "acc_1"


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        "[]",
        "{}",
        '{"keys": {}}',
        '{"keys": [1]}',
        '{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "k"}]}',
        '{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k"}]}',
        '{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "' + "A" * 43 + '"}]}',
        '{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "' + "+" * 43 + '", "kid": "k"}]}',
    ],
)
def test_keys_from_jwks_refuses_malformed_documents(document: str) -> None:
    """T1: a key set that cannot be fully understood is an error, not a smaller key set."""
    with pytest.raises(ValueError, match="malformed JWKS"):
        keys_from_jwks(document)


def test_keys_from_jwks_refuses_private_keys_and_kid_collisions() -> None:
    """T1: private key material or two keys under one kid make the JWKS unusable."""
    one = bytes(SigningKey(SEED).verify_key)
    two = bytes(SigningKey(OTHER_SEED).verify_key)
    private = {**jwk_from_public_key("k1", one), "d": _b64(SEED)}
    with pytest.raises(ValueError, match="private"):
        keys_from_jwks(json.dumps({"keys": [private]}))
    clash = [jwk_from_public_key("k1", one), jwk_from_public_key("k1", two)]
    with pytest.raises(ValueError, match="share one kid"):
        keys_from_jwks(json.dumps({"keys": clash}))
    same = [jwk_from_public_key("k1", one), jwk_from_public_key("k1", one)]
    assert keys_from_jwks(json.dumps({"keys": same})) == {"k1": VerifyKey(one)}


def test_encode_refuses_a_bad_seed() -> None:
    """T1: a seed must be exactly 32 bytes."""
    with pytest.raises(ValueError, match="32 bytes"):
        encode_eddsa(_claims(), KID, SEED[:16])
