"""The JWKS over HTTP on the callback listener: same keys as GetSigningKeys, cache headers, 304."""

from __future__ import annotations

import json

import aiohttp

from tests.integration.conftest import HarnessFactory
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
