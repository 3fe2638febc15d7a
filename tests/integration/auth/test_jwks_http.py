"""The JWKS over HTTP on the callback listener: same keys as GetSigningKeys, cache headers, 304."""

from __future__ import annotations

import base64
import json

import aiohttp

from tests.integration.conftest import HarnessFactory
from tests.integration.flows import LOGIN_NAME, PHONE, register
from xiaohe.identity.server.sessions.models import SessionSubject
from xiaohe.identity.v1 import auth_pb2, auth_pb2_grpc


async def test_jwks_is_served_with_cache_headers_and_follows_rotation(
    harness_factory: HarnessFactory,
) -> None:
    h = await harness_factory(callback_listen="127.0.0.1:0")
    url = f"http://127.0.0.1:{h.running.callback_port}/.well-known/jwks.json"
    over_grpc = await auth_pb2_grpc.AuthServiceStub(h.channel).GetSigningKeys(
        auth_pb2.GetSigningKeysRequest(), metadata=h.metadata
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            assert response.headers["Cache-Control"] == "public, max-age=300"
            etag = response.headers["ETag"]
            first = await response.json()
        assert first == json.loads(over_grpc.jwks_json)
        assert [k["kty"] for k in first["keys"]] == ["OKP"]

        async with session.get(url, headers={"If-None-Match": f'"other", W/{etag}'}) as cached:
            assert cached.status == 304
            assert cached.headers["ETag"] == etag
            assert await cached.read() == b""

        h.container.keyring.rotate_signing_key(keep_retired_for=4200)
        async with session.get(url, headers={"If-None-Match": etag}) as rotated:
            assert rotated.status == 200
            assert rotated.headers["ETag"] != etag
            kids = [k["kid"] for k in (await rotated.json())["keys"]]
        assert len(kids) == 2
        assert first["keys"][0]["kid"] in kids

        async with session.post(url, data=b"{}") as posted:
            assert posted.status == 405


def kid_of(token: str) -> str:
    """The `kid` in a JWT's header (not verified: only which key signed it)."""
    header = token.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


async def test_a_staged_key_is_published_before_it_signs(harness_factory: HarnessFactory) -> None:
    """A staged rotation (`keys rotate-signing --stage`): the JWKS carries the next key while
    tokens are still signed by the active one, so a gateway's cache holds the key before the
    first token it signs; the next rotation signs with exactly that key, the old one still
    published."""
    h = await harness_factory(callback_listen="127.0.0.1:0")
    url = f"http://127.0.0.1:{h.running.callback_port}/.well-known/jwks.json"
    ring = h.container.keyring
    account_id = await register(h, LOGIN_NAME, PHONE)
    subject = SessionSubject(account_id=account_id, subject_type="NATURAL_PERSON", rn_level=0)
    old = ring.active_signing_key.kid
    staged = ring.rotate_signing_key(keep_retired_for=4200, activate=False)
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            published = {k["kid"] for k in (await response.json())["keys"]}
        assert published == {old, staged.kid}
        before = await h.container.sessions.create(subject, ("pwd",), client_id="gateway")
        assert kid_of(before.access_token) == old

        ring.rotate_signing_key(keep_retired_for=4200)
        after = await h.container.sessions.create(subject, ("pwd",), client_id="gateway")
        assert kid_of(after.access_token) == staged.kid
        async with session.get(url) as response:
            published = {k["kid"] for k in (await response.json())["keys"]}
        assert published == {old, staged.kid}
