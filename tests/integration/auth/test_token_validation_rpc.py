"""ValidateToken, GetSigningKeys and the "me" RPCs over real gRPC (SECURITY T1, T5).

Every forged token is built from a real one the server issued, so each case
differs from a valid token in exactly one respect; a control case re-signs the
unchanged token with the server's own key and must validate, which shows the
forging helpers themselves produce well-formed tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.conftest import Harness
from tests.integration.flows import (
    AUDIENCE,
    LOGIN_NAME,
    OTHER_LOGIN_NAME,
    OTHER_PHONE,
    PHONE,
    login,
    register,
    stubs,
)
from tests.rpc_errors import details_of
from xiaohe.identity.client.verifier import TokenVerifier
from xiaohe.identity.tokens.jwt import InvalidToken
from xiaohe.identity.v1 import (
    accounts_pb2,
    auth_pb2,
    common_pb2,
)

if TYPE_CHECKING:
    pass

ACCESS_TTL = 600
SERVER_LEEWAY = 5

Header = dict[str, object]
Payload = dict[str, object]


async def validate(h: Harness, token: str, audience: str = "") -> auth_pb2.ValidateTokenResponse:
    """AuthService.ValidateToken with the all-grants client."""
    return await stubs(h).auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=token, audience=audience), metadata=h.metadata
    )


async def jwks(h: Harness) -> dict[str, object]:
    """The parsed JWKS document from GetSigningKeys."""
    reply = await stubs(h).auth.GetSigningKeys(
        auth_pb2.GetSigningKeysRequest(), metadata=h.metadata
    )
    document = json.loads(reply.jwks_json)
    assert isinstance(document, dict)
    return document


def published_kids(document: dict[str, object]) -> set[str]:
    """The `kid`s of a JWKS document."""
    keys = document["keys"]
    assert isinstance(keys, list)
    return {str(k["kid"]) for k in keys}


def verifier_for(h: Harness, audience: str = AUDIENCE, leeway: float = 30.0) -> TokenVerifier:
    """The SDK's local verifier, fed by GetSigningKeys over the harness channel."""

    async def fetch_jwks() -> str:
        reply = await stubs(h).auth.GetSigningKeys(
            auth_pb2.GetSigningKeysRequest(), metadata=h.metadata
        )
        return reply.jwks_json

    return TokenVerifier(
        fetch_jwks,
        audience=audience,
        issuer=h.container.settings.token_issuer,
        leeway=leeway,
        clock=h.clock.now,
    )


def bearer(h: Harness, token: str) -> tuple[tuple[str, str], ...]:
    """The client credentials plus `authorization: Bearer <token>`."""
    return (*h.metadata, ("authorization", f"Bearer {token}"))


# -- token surgery -------------------------------------------------------------------


def b64url(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(segment: str) -> dict[str, object]:
    """Decode one JSON segment of a compact JWS."""
    value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    assert isinstance(value, dict)
    return value


def parts(token: str) -> tuple[Header, Payload, str]:
    """Header, payload and the raw signature segment of a compact JWS."""
    header, payload, signature = token.split(".")
    return b64url_json(header), b64url_json(payload), signature


def compose(header: Header, payload: Payload, sign: Callable[[bytes], bytes] | str) -> str:
    """A compact JWS: `sign` signs the signing input, or is a signature segment to paste in."""
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    signature = sign if isinstance(sign, str) else b64url(sign(signing_input.encode("ascii")))
    return f"{signing_input}.{signature}"


def server_signer(h: Harness) -> Callable[[bytes], bytes]:
    """Signs with the server's active signing key (as only the server could)."""
    return h.container.keyring.active_signing_key.private_key().sign


@dataclass(frozen=True)
class SignedIn:
    """A registered, signed-in account."""

    account_id: str
    session: auth_pb2.Session


@pytest.fixture
async def alice(h: Harness) -> SignedIn:
    """An account registered and signed in through the RPCs."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    session = await login(h, LOGIN_NAME)
    assert session.account_id == account_id
    await h.container.revocations.wait_ready()
    return SignedIn(account_id, session)


async def assert_refused(
    h: Harness, token: str, reason: str, case: str, sdk_leeway: float = 30.0
) -> None:
    """ValidateToken answers valid=False (no error, no claims); the SDK raises InvalidToken."""
    answer = await validate(h, token)
    assert answer == auth_pb2.ValidateTokenResponse(valid=False), case
    with pytest.raises(InvalidToken) as caught:
        await verifier_for(h, leeway=sdk_leeway).verify(token)
    assert caught.value.reason == reason, case


# -- T1: what a valid token says ---------------------------------------------------------


async def test_a_valid_token_validates_with_its_claims(h: Harness, alice: SignedIn) -> None:
    """T1: valid=True carries account, session, subject type and amr ["pwd"]."""
    token = alice.session.access_token
    answer = await validate(h, token)
    assert answer.valid
    assert answer.account_id == alice.account_id
    assert answer.session_id == alice.session.session_id
    assert answer.subject_type == common_pb2.SUBJECT_TYPE_NATURAL_PERSON
    assert list(answer.auth_methods) == ["pwd"]
    assert answer.real_name_level == 0
    assert answer.expires_at_unix == int(h.clock.now()) + ACCESS_TTL
    assert (await validate(h, token, AUDIENCE)).valid

    header, payload, _ = parts(token)
    assert header == {"alg": "EdDSA", "kid": header["kid"], "typ": "at+jwt"}
    assert header["kid"] in published_kids(await jwks(h))
    assert payload["sub"] == alice.account_id
    assert payload["aud"] == AUDIENCE

    claims = await verifier_for(h).verify(token)
    assert claims.sub == alice.account_id
    assert claims.sid == alice.session.session_id
    assert claims.amr == ("pwd",)
    assert claims.subject_type == "NATURAL_PERSON"


# -- T1: forged, altered and malformed tokens --------------------------------------------


async def test_forged_and_altered_tokens_are_invalid_not_errors(
    h: Harness, alice: SignedIn
) -> None:
    """T1: alg=none, foreign keys, edited claims, wrong typ, future iat and attached keys fail."""
    token = alice.session.access_token
    header, payload, signature = parts(token)
    kid = str(header["kid"])
    real_sign = server_signer(h)
    attacker = Ed25519PrivateKey.generate()
    attacker_public = attacker.public_key().public_bytes_raw()
    keys = (await jwks(h))["keys"]
    assert isinstance(keys, list)
    real_public = base64.urlsafe_b64decode(str(keys[0]["x"]) + "==")

    # Control: the unchanged header and payload, re-signed by the server's key, validate.
    control = compose(header, payload, real_sign)
    assert (await validate(h, control)).valid
    assert (await verifier_for(h).verify(control)).sub == alice.account_id

    other_account = "acc_" + "0" * 24
    another_signature = parts((await login(h, LOGIN_NAME)).access_token)[2]
    cases: dict[str, tuple[str, str]] = {
        "alg=none, empty signature": (
            compose({**header, "alg": "none"}, payload, ""),
            "unsupported_alg",
        ),
        "alg=none, no kid, no typ": (compose({"alg": "none"}, payload, ""), "unsupported_alg"),
        "alg=none, original signature": (
            compose({**header, "alg": "none"}, payload, signature),
            "unsupported_alg",
        ),
        "HS256 keyed with the public key": (
            compose(
                {**header, "alg": "HS256"},
                payload,
                lambda data: hmac.new(real_public, data, hashlib.sha256).digest(),
            ),
            "unsupported_alg",
        ),
        "foreign Ed25519 key, same kid": (
            compose(header, payload, attacker.sign),
            "bad_signature",
        ),
        "foreign Ed25519 key, unknown kid": (
            compose({**header, "kid": "sk_attacker"}, payload, attacker.sign),
            "unknown_kid",
        ),
        "foreign key attached as jwk, same kid": (
            compose(
                {
                    **header,
                    "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64url(attacker_public)},
                },
                payload,
                attacker.sign,
            ),
            "bad_signature",
        ),
        "foreign key set named by jku": (
            compose(
                {**header, "kid": "sk_attacker", "jku": "https://attacker.example/jwks.json"},
                payload,
                attacker.sign,
            ),
            "unknown_kid",
        ),
        "sub changed, signature kept": (
            compose(header, {**payload, "sub": other_account}, signature),
            "bad_signature",
        ),
        "exp extended, signature kept": (
            compose(header, {**payload, "exp": int(str(payload["exp"])) + 86400}, signature),
            "bad_signature",
        ),
        "amr changed, signature kept": (
            compose(header, {**payload, "amr": ["pwd", "mfa"]}, signature),
            "bad_signature",
        ),
        "signature of another token": (
            compose(header, payload, another_signature),
            "bad_signature",
        ),
        "typ=JWT, signed by the server key": (
            compose({**header, "typ": "JWT"}, payload, real_sign),
            "wrong_type",
        ),
        "no typ, signed by the server key": (
            compose({"alg": "EdDSA", "kid": kid}, payload, real_sign),
            "wrong_type",
        ),
        "crit header, signed by the server key": (
            compose({**header, "crit": ["exp"]}, payload, real_sign),
            "malformed",
        ),
        "issued in the future, signed by the server key": (
            compose(header, {**payload, "iat": int(h.clock.now()) + 3600}, real_sign),
            "not_yet_valid",
        ),
        "nbf in the future, signed by the server key": (
            compose(header, {**payload, "nbf": int(h.clock.now()) + 3600}, real_sign),
            "not_yet_valid",
        ),
        "another issuer, signed by the server key": (
            compose(header, {**payload, "iss": "https://attacker.example"}, real_sign),
            "wrong_issuer",
        ),
    }
    for case, (forged, reason) in cases.items():
        await assert_refused(h, forged, reason, case)
    # The genuine token is untouched by all of the above.
    assert (await validate(h, token)).valid


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not-a-token",
        "a.b.c",
        "..",
        "eyJhbGciOiJFZERTQSJ9",
        "Bearer eyJhbGciOiJFZERTQSJ9.e30.",
        "令牌.令牌.令牌",
        "x" * 10_000,
    ],
)
async def test_garbage_strings_are_invalid_not_errors(h: Harness, garbage: str) -> None:
    """T1: any string is answered valid=False; the SDK refuses it as malformed."""
    await h.container.revocations.wait_ready()
    await assert_refused(h, garbage, "malformed", repr(garbage[:20]))


async def test_a_real_token_with_extra_or_missing_segments_is_invalid(
    h: Harness, alice: SignedIn
) -> None:
    """T1: trailing data, a fourth segment or a truncated signature do not slip through."""
    token = alice.session.access_token
    head, body, signature = token.split(".")
    for case, altered, reason in (
        ("fourth segment", token + ".e30", "malformed"),
        ("trailing character", token + "A", "bad_signature"),
        ("truncated signature", f"{head}.{body}.{signature[:-4]}", "bad_signature"),
        ("no signature", f"{head}.{body}.", "bad_signature"),
        ("whitespace around", f" {token} ", "malformed"),
    ):
        await assert_refused(h, altered, reason, case)


# -- T1: expiry and audience ----------------------------------------------------------------


async def test_a_token_expires_after_ten_minutes_plus_leeway(h: Harness, alice: SignedIn) -> None:
    """T1: valid up to exp + leeway, then valid=False from ValidateToken and the SDK."""
    token = alice.session.access_token
    assert alice.session.access_token_expires_in_seconds == ACCESS_TTL
    assert h.container.settings.token_leeway_seconds == SERVER_LEEWAY
    h.clock.advance(ACCESS_TTL + SERVER_LEEWAY - 1)
    assert (await validate(h, token)).valid
    h.clock.advance(2)
    await assert_refused(h, token, "expired", "expired", sdk_leeway=SERVER_LEEWAY)


async def test_a_token_is_valid_only_for_its_audience(h: Harness, alice: SignedIn) -> None:
    """T1: ValidateToken with another audience says valid=False; tokens for it are separate."""
    token = alice.session.access_token
    assert (await validate(h, token, "other")) == auth_pb2.ValidateTokenResponse(valid=False)
    with pytest.raises(InvalidToken) as caught:
        await verifier_for(h, audience="other").verify(token)
    assert caught.value.reason == "wrong_audience"

    for_other = await login(h, LOGIN_NAME, audience="other")
    assert (await validate(h, for_other.access_token, "other")).valid
    assert not (await validate(h, for_other.access_token)).valid
    assert (await verifier_for(h, audience="other").verify(for_other.access_token)).sub == (
        alice.account_id
    )


# -- T1: signing key rotation ------------------------------------------------------------------


async def test_tokens_of_a_rotated_key_still_validate_until_it_is_dropped(
    h: Harness, alice: SignedIn
) -> None:
    """T1: after rotation both kids are published, new tokens carry the new kid."""
    old_token = alice.session.access_token
    old_kid = str(parts(old_token)[0]["kid"])
    verifier = verifier_for(h)
    await verifier.verify(old_token)  # caches the key set holding only the old kid

    new_key = h.container.keyring.rotate_signing_key(keep_retired_for=3600)
    assert new_key.kid != old_kid
    assert published_kids(await jwks(h)) == {old_kid, new_key.kid}
    assert (await validate(h, old_token)).valid
    assert (await verifier.verify(old_token)).sid == alice.session.session_id

    new_session = await login(h, LOGIN_NAME)
    assert parts(new_session.access_token)[0]["kid"] == new_key.kid
    assert (await validate(h, new_session.access_token)).valid
    # The SDK refetches the key set for the unknown kid (at most every 30 s).
    h.clock.advance(31)
    assert (await verifier.verify(new_session.access_token)).sid == new_session.session_id

    # Past the keep window the old key is withdrawn: its (long expired) tokens stay dead.
    h.clock.advance(3600)
    assert published_kids(await jwks(h)) == {new_key.kid}
    assert not (await validate(h, old_token)).valid


# -- T5: the signed-in user's account and sessions ---------------------------------------------


async def test_get_account_masks_the_phone(h: Harness, alice: SignedIn) -> None:
    """I1: GetAccount shows 138****5678, never the whole number."""
    reply = await stubs(h).accounts.GetAccount(
        accounts_pb2.GetAccountRequest(), metadata=bearer(h, alice.session.access_token)
    )
    account = reply.account
    assert account.account_id == alice.account_id
    assert account.login_name == LOGIN_NAME
    assert account.subject_type == common_pb2.SUBJECT_TYPE_NATURAL_PERSON
    assert account.phone_masked == "138****5678"
    assert account.accepted_policy_version == 1
    assert account.created_at.seconds == int(h.clock.now())
    assert b"13812345678" not in reply.SerializeToString()


async def test_list_and_revoke_sessions_with_a_bearer_token(h: Harness, alice: SignedIn) -> None:
    """T5: the user lists their sessions and ends one; only their own."""
    s = stubs(h)
    first = alice.session
    h.clock.advance(5)
    second = await login(h, PHONE)

    listed = await s.accounts.ListSessions(
        accounts_pb2.ListSessionsRequest(), metadata=bearer(h, second.access_token)
    )
    by_id = {info.session_id: info for info in listed.sessions}
    assert set(by_id) == {first.session_id, second.session_id}
    assert by_id[second.session_id].current
    assert not by_id[first.session_id].current
    assert all(list(info.auth_methods) == ["pwd"] for info in listed.sessions)
    assert listed.sessions[0].session_id == second.session_id  # most recently used first

    # Another account cannot end alice's session, nor learn whether the id exists.
    await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    mallory = await login(h, OTHER_LOGIN_NAME)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await s.accounts.RevokeSession(
            accounts_pb2.RevokeSessionRequest(session_id=first.session_id),
            metadata=bearer(h, mallory.access_token),
        )
    assert details_of(caught.value).code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await s.accounts.RevokeSession(
            accounts_pb2.RevokeSessionRequest(session_id="ses_" + "0" * 32),
            metadata=bearer(h, mallory.access_token),
        )
    assert (details_of(unknown.value).code, details_of(unknown.value).message) == (
        details_of(caught.value).code,
        details_of(caught.value).message,
    )
    assert (await validate(h, first.access_token)).valid
    mallory_listed = await s.accounts.ListSessions(
        accounts_pb2.ListSessionsRequest(), metadata=bearer(h, mallory.access_token)
    )
    assert [info.session_id for info in mallory_listed.sessions] == [mallory.session_id]

    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await s.accounts.RevokeSession(
            accounts_pb2.RevokeSessionRequest(), metadata=bearer(h, second.access_token)
        )
    assert details_of(empty.value).code == grpc.StatusCode.INVALID_ARGUMENT
    assert "session_id" in details_of(empty.value).violations

    await s.accounts.RevokeSession(
        accounts_pb2.RevokeSessionRequest(session_id=first.session_id),
        metadata=bearer(h, second.access_token),
    )
    assert not (await validate(h, first.access_token)).valid
    with pytest.raises(grpc.aio.AioRpcError) as refresh:
        await s.auth.Refresh(
            auth_pb2.RefreshRequest(refresh_token=first.refresh_token), metadata=h.metadata
        )
    assert details_of(refresh.value).reason == "TOKEN_INVALID"
    listed = await s.accounts.ListSessions(
        accounts_pb2.ListSessionsRequest(), metadata=bearer(h, second.access_token)
    )
    assert [info.session_id for info in listed.sessions] == [second.session_id]

    # Ending the current session ends the bearer's own access at once.
    await s.accounts.RevokeSession(
        accounts_pb2.RevokeSessionRequest(session_id=second.session_id),
        metadata=bearer(h, second.access_token),
    )
    with pytest.raises(grpc.aio.AioRpcError) as after:
        await s.accounts.ListSessions(
            accounts_pb2.ListSessionsRequest(), metadata=bearer(h, second.access_token)
        )
    assert details_of(after.value).reason == "USER_UNAUTHENTICATED"


async def test_me_rpcs_need_a_valid_bearer_token(h: Harness, alice: SignedIn) -> None:
    """T5: no, malformed, forged, foreign-audience, expired or revoked bearer → UNAUTHENTICATED."""
    s = stubs(h)
    token = alice.session.access_token
    header, payload, _ = parts(token)
    for_other = await login(h, LOGIN_NAME, audience="other")
    logged_out = await login(h, LOGIN_NAME)
    await s.auth.Logout(
        auth_pb2.LogoutRequest(access_token=logged_out.access_token), metadata=h.metadata
    )
    bad_metadata: dict[str, tuple[tuple[str, str], ...]] = {
        "no authorization": h.metadata,
        "empty bearer": (*h.metadata, ("authorization", "Bearer ")),
        "garbage bearer": bearer(h, "not-a-token"),
        "Basic scheme": (*h.metadata, ("authorization", f"Basic {token}")),
        "token without scheme": (*h.metadata, ("authorization", token)),
        "alg=none": bearer(h, compose({**header, "alg": "none"}, payload, "")),
        "foreign key": bearer(h, compose(header, payload, Ed25519PrivateKey.generate().sign)),
        "other audience": bearer(h, for_other.access_token),
        "logged out": bearer(h, logged_out.access_token),
    }
    calls: dict[str, Callable[[tuple[tuple[str, str], ...]], Awaitable[object]]] = {
        "GetAccount": lambda md: s.accounts.GetAccount(
            accounts_pb2.GetAccountRequest(), metadata=md
        ),
        "ListSessions": lambda md: s.accounts.ListSessions(
            accounts_pb2.ListSessionsRequest(), metadata=md
        ),
        "RevokeSession": lambda md: s.accounts.RevokeSession(
            accounts_pb2.RevokeSessionRequest(session_id=alice.session.session_id), metadata=md
        ),
    }
    for case, metadata in bad_metadata.items():
        for rpc, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(metadata)
            d = details_of(caught.value)
            assert (d.code, d.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "USER_UNAUTHENTICATED",
            ), (case, rpc)
            assert token not in d.message
    # None of the refused RevokeSession calls ended the session.
    assert (await validate(h, token)).valid

    h.clock.advance(ACCESS_TTL + SERVER_LEEWAY + 1)
    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await s.accounts.GetAccount(accounts_pb2.GetAccountRequest(), metadata=bearer(h, token))
    assert details_of(expired.value).reason == "USER_UNAUTHENTICATED"
