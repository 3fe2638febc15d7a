"""A local Aliyun SMS API (`SendSms`, 2017-05-25) that checks ACS3-HMAC-SHA256 signatures itself.

The verifier below is written from Aliyun's published description of the V3
signature, not taken from the SDK:

    CanonicalRequest = Method \\n CanonicalURI \\n CanonicalQueryString \\n
                       CanonicalHeaders \\n SignedHeaders \\n HashedRequestPayload
    CanonicalQueryString: parameters sorted by name, names and values
        percent-encoded per RFC 3986 (space as %20), `name=value` joined by `&`
    CanonicalHeaders: each signed header `lowercase-name:trimmed-value\\n`, sorted;
        `host` and every `x-acs-*` header must be signed
    HashedRequestPayload = hex SHA-256 of the body = header x-acs-content-sha256
    StringToSign = "ACS3-HMAC-SHA256\\n" + hex SHA-256(CanonicalRequest)
    Signature = hex HMAC-SHA256(AccessKeySecret, StringToSign)
    Authorization: ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<a;b>,Signature=<hex>

Scenarios (`fake.script` is consumed first, then `fake.scenario`): `ok`,
`throttled` (HTTP 400 Throttling.User), `number_limit` (isv.BUSINESS_LIMIT_CONTROL),
`invalid_template` (isv.SMS_TEMPLATE_ILLEGAL), `server_error` (HTTP 503),
`hang` (accept, record as sent, then answer nothing until the fake closes).
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fakes._server import LocalServer, post_json
from tests.fakes.acs3 import ALGORITHM, acs3_signature, sha256_hex
from tests.receipt_pushes import aliyun_push

ACCEPTING = frozenset({"ok", "hang"})


@dataclass
class AliyunSend:
    """One SendSms the fake received with a valid signature."""

    phone: str
    sign_name: str
    template_code: str
    template_param: dict[str, str]
    out_id: str
    scenario: str
    biz_id: str | None


@dataclass
class AliyunSmsFake:
    """The fake platform; `received` holds every signed request, `accepted` the ones it took."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    scenario: str = "ok"
    script: list[str] = field(default_factory=list)
    received: list[AliyunSend] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    """Why each unsigned or badly signed request was refused."""
    max_skew_seconds: float = 900.0
    _nonces: set[str] = field(default_factory=set)
    _server: LocalServer | None = None
    _serial: int = 0

    @property
    def accepted(self) -> list[AliyunSend]:
        """Requests the platform took (and would deliver)."""
        return [s for s in self.received if s.scenario in ACCEPTING]

    async def start(self) -> str:
        """Start on a free loopback port; returns the endpoint URL."""
        self._server = LocalServer(self._handle)
        return await self._server.start()

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    def check_signature(self, request: web.Request, body: bytes) -> str | None:
        """None if the request is signed correctly, else the reason."""
        auth = request.headers.get("Authorization", "")
        algorithm, _, rest = auth.partition(" ")
        if algorithm != ALGORITHM:
            return "algorithm"
        fields = dict(part.split("=", 1) for part in rest.split(",") if "=" in part)
        if fields.get("Credential") != self.access_key_id:
            return "credential"
        signed = fields.get("SignedHeaders", "").split(";")
        headers = {k.lower(): v for k, v in request.headers.items()}
        if signed != sorted(signed) or not all(h in headers for h in signed):
            return "signed headers"
        must_sign = {"host"} | {h for h in headers if h.startswith("x-acs-")}
        if not must_sign <= set(signed):
            return "unsigned header"
        if headers.get("x-acs-content-sha256") != sha256_hex(body):
            return "content hash"
        if headers.get("x-acs-action") != "SendSms" or headers.get("x-acs-version") != "2017-05-25":
            return "action"
        try:
            date = datetime.strptime(headers.get("x-acs-date", ""), "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            return "date"
        if abs(date.replace(tzinfo=UTC).timestamp() - time.time()) > self.max_skew_seconds:
            return "date skew"
        nonce = headers.get("x-acs-signature-nonce", "")
        if not nonce or nonce in self._nonces:
            return "nonce"
        query = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
        expected = acs3_signature(
            self.access_key_secret, request.method, request.path, query, headers, signed, body
        )
        if not hmac.compare_digest(expected, fields.get("Signature", "")):
            return "signature"
        self._nonces.add(nonce)
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        problem = self.check_signature(request, body)
        if problem is not None:
            self.rejected.append(problem)
            return _answer(400, "SignatureDoesNotMatch")
        params = dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True))
        if request.content_type == "application/x-www-form-urlencoded":
            params.update(parse_qsl(body.decode(), keep_blank_values=True))
        scenario = self.script.pop(0) if self.script else self.scenario
        biz_id = None
        if scenario in ACCEPTING:
            self._serial += 1
            biz_id = f"{900000 + self._serial}^0"
        self.received.append(
            AliyunSend(
                phone=params.get("PhoneNumbers", ""),
                sign_name=params.get("SignName", ""),
                template_code=params.get("TemplateCode", ""),
                template_param=json.loads(params.get("TemplateParam") or "{}"),
                out_id=params.get("OutId", ""),
                scenario=scenario,
                biz_id=biz_id,
            )
        )
        if scenario == "ok":
            return _answer(200, "OK", BizId=biz_id)
        if scenario == "hang":
            assert self._server is not None
            await self._server.release.wait()
            return _answer(200, "OK", BizId=biz_id)
        if scenario == "throttled":
            return _answer(400, "Throttling.User")
        if scenario == "number_limit":
            return _answer(200, "isv.BUSINESS_LIMIT_CONTROL")
        if scenario == "invalid_template":
            return _answer(200, "isv.SMS_TEMPLATE_ILLEGAL")
        if scenario == "server_error":
            return _answer(503, "ServiceUnavailable")
        raise AssertionError(f"unknown scenario {scenario}")

    @staticmethod
    def receipt(
        send: AliyunSend, success: bool = True, err_code: str = "DELIVERED"
    ) -> dict[str, object]:
        """One item of Aliyun's SmsReport push for a send, in the platform's field names."""
        item = aliyun_push(
            send.out_id,
            biz_id=send.biz_id or "",
            success=success,
            err_code=err_code,
            phone=send.phone.removeprefix("+86"),
            report_time=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
        parsed: list[dict[str, object]] = json.loads(item)
        return parsed[0]

    async def push_receipts(self, url: str, items: list[dict[str, object]]) -> tuple[int, str]:
        """POST an SmsReport array to `url` as the platform does; (status, body)."""
        return await post_json(url, items)


def _answer(status: int, code: str, **extra: object) -> web.Response:
    document = {"RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990", "Code": code, "Message": code}
    document.update({k: v for k, v in extra.items() if v is not None})
    return web.Response(
        status=status,
        body=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"},
    )


async def started(access_key_id: str, access_key_secret: str) -> tuple[AliyunSmsFake, str]:
    """A started fake and its URL (close it with `await fake.close()`)."""
    fake = AliyunSmsFake(access_key_id, access_key_secret)
    return fake, await fake.start()


__all__ = ["AliyunSend", "AliyunSmsFake", "started"]
