"""The token-signing keys over HTTP: `GET /.well-known/jwks.json` on the callback listener.

Business systems on gRPC fetch the keys with `AuthService.GetSigningKeys`; gateways
and systems that only speak HTTP (Envoy's `jwt_authn`, nginx, Kong, any JWT library
with a JWKS client) need a URL. This serves the same document (RFC 7517, the
current public keys of the key ring, read on every request so a rotation shows at
once) with:

- `Content-Type: application/json`;
- `Cache-Control: public, max-age=300`. A rotation makes the new key active at
  once, so a cache delays the acceptance of new-key tokens by up to its age: five
  minutes matches the rolling restart a rotation already takes (operator guide §6),
  while a retired key stays published for the token lifetime plus an hour, so no
  cache ever drops a key too early;
- a strong `ETag` (a hash of the body), answering `If-None-Match` with 304, so a
  cache revalidates for the price of a header.

The keys are public; the route needs no secret and serves the same bytes to all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from xiaohe.identity.server.sessions.tokens import jwks_json

JWKS_PATH = "/.well-known/jwks.json"
JWKS_MAX_AGE_SECONDS = 300
CACHE_CONTROL = f"public, max-age={JWKS_MAX_AGE_SECONDS}"

PublicKeys = Callable[[], Mapping[str, bytes]]


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether an `If-None-Match` header names `etag` (weak comparison, RFC 9110 §13.1.2)."""
    candidates = [c.strip() for c in if_none_match.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


def jwks_handler(
    public_keys: PublicKeys, count: Callable[[str], None] | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of `JWKS_PATH`; `count(outcome)` ("ok", "not_modified") if given."""

    async def handle(request: web.Request) -> web.Response:
        body = jwks_json(public_keys()).encode("utf-8")
        etag = _etag(body)
        headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag}
        if _matches(request.headers.get("If-None-Match", ""), etag):
            if count is not None:
                count("not_modified")
            return web.Response(status=304, headers=headers)
        if count is not None:
            count("ok")
        return web.Response(body=body, content_type="application/json", headers=headers)

    return handle


__all__ = ["CACHE_CONTROL", "JWKS_MAX_AGE_SECONDS", "JWKS_PATH", "jwks_handler"]
