"""A local stand-in for Aliyun's 二次号 check (`DescribePhoneTwiceTelVerify`, 2020-02-17).

It speaks the API's format (an RPC-style POST whose parameters sit in the query
string; a JSON answer `{"Code", "Message", "RequestId", "Data": {"Carrier",
"VerifyResult"}}`) and checks every request's ACS3-HMAC-SHA256 signature on its
own, by the published algorithm, with code written here rather than taken from
the SDK:

    CanonicalRequest = METHOD \\n URI \\n CanonicalQuery \\n CanonicalHeaders \\n
                       SignedHeaders \\n hex(SHA256(body))
    StringToSign     = "ACS3-HMAC-SHA256" \\n hex(SHA256(CanonicalRequest))
    Signature        = hex(HMAC-SHA256(AccessKeySecret, StringToSign))

with query keys sorted and keys and values percent-encoded per RFC 3986, and
the headers named in `SignedHeaders` (which must cover host and the `x-acs-*`
headers the API requires) as `name:trimmed value` lines. A wrong key id, a bad
signature, a body that does not match `x-acs-content-sha256` or a replayed
nonce is answered like the real service (HTTP 400/403 with an error code) and
counted in `rejected`.

Answers are configured per number (`answer`); the number arrives as the SHA-256
of its 11 national digits (`Mask=SHA256`), which is also what a test looks it up by.
"""

from __future__ import annotations

import hmac
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from tests.fakes.acs3 import ALGORITHM, acs3_signature, sha256_hex

ACTION = "DescribePhoneTwiceTelVerify"
VERSION = "2020-02-17"
REQUIRED_SIGNED = frozenset(
    {
        "host",
        "x-acs-action",
        "x-acs-version",
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-content-sha256",
    }
)
_AUTHORIZATION = re.compile(
    rf"{ALGORITHM} Credential=(?P<key>[^,]+),SignedHeaders=(?P<signed>[^,]+),"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


def national_digest(e164: str) -> str:
    """How a test names a number to the fake: SHA-256 of its 11 national digits."""
    return sha256_hex(e164.removeprefix("+86").encode())


@dataclass
class FakeNumberStatusService:
    """An aiohttp server on 127.0.0.1:0 answering DescribePhoneTwiceTelVerify."""

    access_key_id: str
    access_key_secret: str
    auth_code: str
    answers: dict[str, tuple[str, str]] = field(default_factory=dict)
    """National digest → (Code, VerifyResult); numbers not listed answer ("OK", "2")."""
    requests: list[dict[str, str]] = field(default_factory=list)
    """The query of every accepted request."""
    rejected: list[str] = field(default_factory=list)
    """The error code of every refused request."""
    _nonces: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    url: str = ""

    def answer(self, e164: str, verify_result: str, code: str = "OK") -> None:
        """What the service says about `e164` from now on."""
        self.answers[national_digest(e164)] = (code, verify_result)

    async def start(self) -> str:
        """Serve on a free loopback port; returns the endpoint URL (`http://127.0.0.1:PORT`)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)  # its lines would quote the request
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        refusal = self._authenticate(request, body)
        if refusal is not None:
            status, code = refusal
            self.rejected.append(code)
            return self._json(
                {"Code": code, "Message": code, "RequestId": str(uuid.uuid4())}, status
            )
        query = dict(request.query)
        problem = self._check_parameters(request, query)
        if problem is not None:
            self.rejected.append(problem)
            return self._json(
                {"Code": problem, "Message": problem, "RequestId": str(uuid.uuid4())}, 400
            )
        self.requests.append(query)
        code, result = self.answers.get(query["InputNumber"].lower(), ("OK", "2"))
        payload: dict[str, Any] = {"Code": code, "Message": code, "RequestId": str(uuid.uuid4())}
        if code == "OK":
            payload["Data"] = {"Carrier": "CMCC", "VerifyResult": result}
        return self._json(payload, 200)

    def _authenticate(self, request: web.Request, body: bytes) -> tuple[int, str] | None:
        """None for a correctly signed request, else (HTTP status, error code)."""
        match = _AUTHORIZATION.fullmatch(request.headers.get("Authorization", ""))
        if match is None:
            return 400, "IncompleteSignature"
        if match["key"] != self.access_key_id:
            return 404, "InvalidAccessKeyId.NotFound"
        signed = match["signed"].split(";")
        if signed != sorted(signed) or not set(signed) >= REQUIRED_SIGNED:
            return 400, "IncompleteSignature"
        headers = {k.lower(): v for k, v in request.headers.items()}
        if headers.get("x-acs-content-sha256", "") != sha256_hex(body):
            return 400, "ContentSHA256NotMatched"
        signature = acs3_signature(
            self.access_key_secret,
            request.method,
            request.path,
            list(request.query.items()),
            headers,
            signed,
            body,
        )
        if not hmac.compare_digest(signature, match["signature"]):
            return 400, "SignatureDoesNotMatch"
        nonce = headers["x-acs-signature-nonce"]
        if nonce in self._nonces:
            return 400, "SignatureNonceUsed"
        self._nonces.add(nonce)
        return None

    def _check_parameters(self, request: web.Request, query: dict[str, str]) -> str | None:
        """None for a well-formed DescribePhoneTwiceTelVerify, else the error code."""
        if request.headers.get("x-acs-action") != ACTION:
            return "InvalidAction.NotFound"
        if request.headers.get("x-acs-version") != VERSION:
            return "InvalidVersion"
        if query.get("AuthCode") != self.auth_code:
            return "isv.AUTH_CODE_INVALID"
        if query.get("Mask") not in {"NORMAL", "MD5", "SHA256"}:
            return "isv.INVALID_PARAMETERS"
        if query["Mask"] == "SHA256" and not re.fullmatch(
            r"[0-9a-fA-F]{64}", query.get("InputNumber", "")
        ):
            return "isv.INVALID_PARAMETERS"
        if query["Mask"] == "NORMAL":
            # Accept it, as the service does, but index it like the masked form.
            query["InputNumber"] = national_digest(query.get("InputNumber", ""))
        try:
            datetime.strptime(query.get("StartTime", ""), "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return "isv.INVALID_PARAMETERS"
        return None

    @staticmethod
    def _json(payload: dict[str, Any], status: int) -> web.Response:
        return web.Response(
            status=status,
            text=json.dumps(payload, ensure_ascii=False),
            content_type="application/json",
        )
