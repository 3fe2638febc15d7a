"""A local identity-check service speaking the protocol `realname/verifiers.HttpVerifier` uses.

It checks what a real gateway checks, written here independently of the server's
code: the app key, the timestamp (within 15 minutes of its clock), a nonce never
seen before, the body's Content-MD5, and the HMAC-SHA256 signature over
`METHOD\\nAccept\\nContent-MD5\\nContent-Type\\nDate\\n` + the signed headers
(`name:value\\n`, in the order X-Ca-Signature-Headers lists them) + the path.
Then it answers from its records: 1 match, 2 mismatch, 3 no record.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes._server import LocalServer

MATCH, MISMATCH, NO_RECORD = 1, 2, 3


@dataclass
class IdentityCheckService:
    """The fake service's state: credentials, records and what it received."""

    app_key: str
    app_secret: str
    now_ms: Callable[[], int]
    people: dict[str, str] = field(default_factory=dict)
    """ID number -> name of the authoritative records."""
    phones: dict[str, str] = field(default_factory=dict)
    """ID number -> mobile (national digits)."""
    companies: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """USCC -> (organisation name, representative name, representative ID number)."""
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    seen_nonces: set[str] = field(default_factory=set)
    server: LocalServer | None = None

    async def start(self) -> str:
        """Serve on a free loopback port; returns the base URL (with a path prefix)."""
        self.server = LocalServer(self._handle)
        url = await self.server.start()
        return url + "/gateway"

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def _refuse(self, why: str) -> web.Response:
        self.refused.append(why)
        return web.json_response({"code": 401, "message": why}, status=401)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        h = request.headers
        if h.get("X-Ca-Key") != self.app_key:
            return self._refuse("unknown app key")
        try:
            ts = int(h.get("X-Ca-Timestamp", ""))
        except ValueError:
            return self._refuse("bad timestamp")
        if abs(self.now_ms() - ts) > 15 * 60 * 1000:
            return self._refuse("stale timestamp")
        nonce = h.get("X-Ca-Nonce", "")
        if not nonce or nonce in self.seen_nonces:
            return self._refuse("replayed nonce")
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324
        if h.get("Content-MD5") != md5:
            return self._refuse("content md5")
        names = [n.strip().lower() for n in h.get("X-Ca-Signature-Headers", "").split(",")]
        if sorted(names) != ["x-ca-key", "x-ca-nonce", "x-ca-timestamp"]:
            return self._refuse("signed headers")
        text = (
            "\n".join(
                [
                    request.method,
                    h.get("Accept", ""),
                    h.get("Content-MD5", ""),
                    h.get("Content-Type", ""),
                    h.get("Date", ""),
                ]
            )
            + "\n"
            + "".join(f"{n}:{h.get(n, '')}\n" for n in names)
            + request.path
        )
        expected = base64.b64encode(
            hmac.new(self.app_secret.encode(), text.encode(), hashlib.sha256).digest()
        ).decode()
        if not hmac.compare_digest(expected, h.get("X-Ca-Signature", "")):
            return self._refuse("signature")
        self.seen_nonces.add(nonce)
        document = json.loads(body)
        self.requests.append((request.path, document))
        return web.json_response({"code": 0, "result": self._answer(request.path, document)})

    def _answer(self, path: str, d: dict[str, str]) -> int:
        if path.endswith("/enterprise/four-elements"):
            record = self.companies.get(d["uscc"])
            if record is None:
                return NO_RECORD
            expected = (
                d["organization_name"],
                d["representative_name"],
                d["representative_id_number"],
            )
            return MATCH if record == expected else MISMATCH
        name = self.people.get(d["id_number"])
        if name is None:
            return NO_RECORD
        if name != d["name"]:
            return MISMATCH
        if path.endswith("/three-elements") and self.phones.get(d["id_number"]) != d["mobile"]:
            return MISMATCH
        return MATCH
