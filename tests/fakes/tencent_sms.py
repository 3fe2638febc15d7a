"""A local Tencent Cloud SMS API (`SendSms`, 2021-01-11) that checks TC3-HMAC-SHA256 itself.

The verifier below is written from Tencent Cloud's published description of
signature v3, not taken from the SDK:

    CanonicalRequest = Method \\n CanonicalURI \\n CanonicalQueryString \\n
                       CanonicalHeaders \\n SignedHeaders \\n HashedRequestPayload
    CanonicalHeaders: each signed header `name:value\\n`, name and value
        lower-cased and trimmed; `content-type` and `host` must be signed
    HashedRequestPayload = hex SHA-256 of the body
    CredentialScope = Date/sms/tc3_request  (Date: UTC date of X-TC-Timestamp)
    StringToSign = "TC3-HMAC-SHA256\\n" + Timestamp + "\\n" + CredentialScope + "\\n"
                   + hex SHA-256(CanonicalRequest)
    SecretDate = HMAC("TC3" + SecretKey, Date); SecretService = HMAC(SecretDate, "sms");
    SecretSigning = HMAC(SecretService, "tc3_request");
    Signature = hex HMAC(SecretSigning, StringToSign)
    Authorization: TC3-HMAC-SHA256 Credential=<SecretId>/<scope>, SignedHeaders=<a;b>,
                   Signature=<hex>

Scenarios (`fake.script` first, then `fake.scenario`): `ok`, `throttled`
(RequestLimitExceeded), `number_limit` (per-number LimitExceeded.PhoneNumberDailyLimit),
`invalid_template` (FailedOperation.TemplateIncorrectOrUnapproved), `server_error`
(HTTP 502), `hang` (accept, then answer nothing until the fake closes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from tests.fakes._server import LocalServer, post_json
from tests.receipt_pushes import tencent_push

ALGORITHM = "TC3-HMAC-SHA256"
SERVICE = "sms"
ACCEPTING = frozenset({"ok", "hang"})


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def tc3_signature(
    secret_key: str,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    signed_headers: list[str],
    body: bytes,
    timestamp: str,
    date: str,
) -> str:
    """The hex signature of a request by the published TC3-HMAC-SHA256 algorithm."""
    canonical_headers = "".join(f"{h}:{headers[h].strip().lower()}\n" for h in signed_headers)
    canonical_request = "\n".join(
        [
            method.upper(),
            path or "/",
            query,
            canonical_headers,
            ";".join(signed_headers),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{date}/{SERVICE}/tc3_request"
    string_to_sign = "\n".join(
        [ALGORITHM, timestamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(_hmac(_hmac(("TC3" + secret_key).encode(), date), SERVICE), "tc3_request")
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass
class TencentSend:
    """One SendSms the fake received with a valid signature."""

    phone: str
    sdk_app_id: str
    sign_name: str
    template_id: str
    template_params: list[str]
    session_context: str
    scenario: str
    serial_no: str | None


@dataclass
class TencentSmsFake:
    """The fake platform; `received` holds every signed request, `accepted` the ones it took."""

    secret_id: str
    secret_key: str = field(repr=False)
    scenario: str = "ok"
    script: list[str] = field(default_factory=list)
    received: list[TencentSend] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    max_skew_seconds: float = 300.0
    _server: LocalServer | None = None
    _serial: int = 0

    @property
    def accepted(self) -> list[TencentSend]:
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
        fields = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
        secret_id, _, scope = fields.get("Credential", "").partition("/")
        if secret_id != self.secret_id:
            return "credential"
        timestamp = request.headers.get("X-TC-Timestamp", "")
        if not timestamp.isdigit() or abs(int(timestamp) - time.time()) > self.max_skew_seconds:
            return "timestamp"
        date = datetime.fromtimestamp(int(timestamp), tz=UTC).strftime("%Y-%m-%d")
        if scope != f"{date}/{SERVICE}/tc3_request":
            return "scope"
        signed = fields.get("SignedHeaders", "").split(";")
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not {"content-type", "host"} <= set(signed) or not all(h in headers for h in signed):
            return "signed headers"
        if request.headers.get("X-TC-Action") != "SendSms":
            return "action"
        if request.headers.get("X-TC-Version") != "2021-01-11":
            return "version"
        expected = tc3_signature(
            self.secret_key,
            request.method,
            request.path,
            request.rel_url.raw_query_string,
            headers,
            signed,
            body,
            timestamp,
            date,
        )
        if not hmac.compare_digest(expected, fields.get("Signature", "")):
            return "signature"
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        problem = self.check_signature(request, body)
        if problem is not None:
            self.rejected.append(problem)
            return _error("AuthFailure.SignatureFailure")
        doc = json.loads(body)
        scenario = self.script.pop(0) if self.script else self.scenario
        phone = (doc.get("PhoneNumberSet") or [""])[0]
        serial = None
        if scenario in ACCEPTING:
            self._serial += 1
            serial = f"2028:{6000000000 + self._serial}"
        self.received.append(
            TencentSend(
                phone=phone,
                sdk_app_id=doc.get("SmsSdkAppId", ""),
                sign_name=doc.get("SignName", ""),
                template_id=doc.get("TemplateId", ""),
                template_params=list(doc.get("TemplateParamSet") or []),
                session_context=doc.get("SessionContext", ""),
                scenario=scenario,
                serial_no=serial,
            )
        )
        if scenario == "hang":
            assert self._server is not None
            await self._server.release.wait()
        if scenario in ACCEPTING:
            return _status(phone, doc.get("SessionContext", ""), "Ok", serial)
        if scenario == "number_limit":
            return _status(
                phone, doc.get("SessionContext", ""), "LimitExceeded.PhoneNumberDailyLimit"
            )
        if scenario == "throttled":
            return _error("RequestLimitExceeded")
        if scenario == "invalid_template":
            return _error("FailedOperation.TemplateIncorrectOrUnapproved")
        if scenario == "server_error":
            return web.Response(status=502, text="bad gateway")
        raise AssertionError(f"unknown scenario {scenario}")

    @staticmethod
    def receipt(send: TencentSend, success: bool = True) -> dict[str, object]:
        """One item of Tencent Cloud's status callback for a send, in the platform's field names."""
        item = tencent_push(
            send.session_context,
            sid=send.serial_no or "",
            status="SUCCESS" if success else "FAIL",
            err_code="DELIVRD" if success else "UNDELIV",
            phone=send.phone.removeprefix("+86"),
            report_time=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
        parsed: list[dict[str, object]] = json.loads(item)
        return parsed[0]

    async def push_receipts(self, url: str, items: list[dict[str, object]]) -> tuple[int, str]:
        """POST a status-callback array to `url` as the platform does; (status, body)."""
        return await post_json(url, items)


def _json(document: object) -> web.Response:
    return web.Response(
        body=json.dumps(document).encode(), headers={"Content-Type": "application/json"}
    )


def _error(code: str) -> web.Response:
    return _json({"Response": {"Error": {"Code": code, "Message": code}, "RequestId": "r-1"}})


def _status(phone: str, context: str, code: str, serial: str | None = None) -> web.Response:
    item = {
        "SerialNo": serial or "",
        "PhoneNumber": phone,
        "Fee": 1 if code == "Ok" else 0,
        "SessionContext": context,
        "Code": code,
        "Message": "send success" if code == "Ok" else code,
        "IsoCode": "CN",
    }
    return _json({"Response": {"SendStatusSet": [item], "RequestId": "r-2"}})


__all__ = ["TencentSend", "TencentSmsFake", "tc3_signature"]
