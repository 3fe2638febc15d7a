"""Aliyun SMS (阿里云短信服务): `SendSms` of API version 2017-05-25, through the official SDK.

The SDK (`alibabacloud_dysmsapi20170525`) signs each request with
ACS3-HMAC-SHA256 (a canonical request over method, path, sorted query,
`host`/`x-acs-*` headers and the body's SHA-256, HMAC'd with the AccessKey
secret); its calls block, so they run in a worker thread. The SDK's own
retries stay off: one call, one request, so a resend is always our decision.

Request: `PhoneNumbers` (E.164), `SignName` and `TemplateCode` for the
message's purpose, `TemplateParam` `{"code": ...}`, and `OutId` = our outbox
message id, which the platform echoes in its receipt (`out_id`). The answer's
`BizId` is returned as the provider message id.

What the answers mean (the platform answers business errors with HTTP 200 and
a `Code`): `OK` accepted; a refusal of the message itself (invalid number,
template or signature not approved, the per-number frequency limit
`isv.BUSINESS_LIMIT_CONTROL`) is permanent and does not fail over: another
platform would send what this one refuses to send to a subscriber who is
already being flooded; every other refusal (5xx, throttling, balance, refused
credentials, unknown codes) is the platform's, retryable and fails over.
Failing to connect fails over; failing after the request went out is
`DeliveryOutcomeUnknown` (the platform has no idempotency key).

The SDK's exceptions carry the request URL, whose query holds the phone number
and the code: none of them is chained, logged or shown; reasons are fixed
phrases with the platform's error code. The request lines urllib3 logs at
DEBUG are dropped (`sdk_logging`).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from alibabacloud_dysmsapi20170525 import models as sms_models
from alibabacloud_dysmsapi20170525.client import Client
from alibabacloud_tea_openapi import utils_models
from alibabacloud_tea_openapi.exceptions import (
    AlibabaCloudException,
)
from darabonba.runtime import RuntimeOptions

from xiaohe.identity.server.delivery.never_sent import never_sent
from xiaohe.identity.server.delivery.platforms import Endpoint, PlatformTemplates
from xiaohe.identity.server.delivery.providers import (
    Accepted,
    DeliveryError,
    DeliveryOutcomeUnknown,
    OutgoingMessage,
)
from xiaohe.identity.server.delivery.sdk_logging import quiet_sdk_loggers

DEFAULT_ENDPOINT: Final = "https://dysmsapi.aliyuncs.com"

PERMANENT_CODES: Final = frozenset(
    {
        "isv.MOBILE_NUMBER_ILLEGAL",
        "isv.MOBILE_COUNT_OVER_LIMIT",
        "isv.BUSINESS_LIMIT_CONTROL",
        "isv.SMS_TEMPLATE_ILLEGAL",
        "isv.SMS_SIGNATURE_ILLEGAL",
        "isv.SMS_SIGN_ILLEGAL",
        "isv.TEMPLATE_MISSING_PARAMETERS",
        "isv.TEMPLATE_PARAMS_ILLEGAL",
        "isv.INVALID_PARAMETERS",
        "isv.INVALID_JSON_PARAM",
        "isv.PARAM_LENGTH_LIMIT",
        "isv.PARAM_NOT_SUPPORT_URL",
        "isv.BLACK_KEY_CONTROL_LIMIT",
        "isv.SMS_CONTENT_ILLEGAL",
        "isv.EXTEND_CODE_ERROR",
        "isv.DOMESTIC_NUMBER_NOT_SUPPORTED",
    }
)
"""Codes that refuse the message itself: not retried, no failover."""

_CODE_SHAPE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True)
class AliyunSmsConfig:
    """Credentials, endpoint and templates; the secret stays out of `repr`."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    templates: PlatformTemplates
    endpoint: str = DEFAULT_ENDPOINT
    region: str = "cn-hangzhou"
    connect_timeout: float = 3.0
    read_timeout: float = 5.0


def _code(value: object) -> str:
    """The platform's error code if it looks like one, else `?` (never echo arbitrary text)."""
    text = str(value) if value is not None else ""
    return text if _CODE_SHAPE.fullmatch(text) else "?"


class AliyunSmsProvider:
    """Sends code SMS through Aliyun's SendSms (see the module docstring)."""

    name = "aliyun"
    idempotent = False

    def __init__(self, config: AliyunSmsConfig) -> None:
        endpoint = Endpoint.parse(config.endpoint)
        if not config.access_key_id or not config.access_key_secret:
            raise ValueError("Aliyun SMS needs an AccessKey id and secret")
        quiet_sdk_loggers()
        self._templates = config.templates
        self._runtime_ms = (int(config.connect_timeout * 1000), int(config.read_timeout * 1000))
        self._client = Client(
            utils_models.Config(
                access_key_id=config.access_key_id,
                access_key_secret=config.access_key_secret,
                endpoint=endpoint.host,
                protocol=endpoint.scheme,
                region_id=config.region,
                connect_timeout=self._runtime_ms[0],
                read_timeout=self._runtime_ms[1],
            )
        )

    def __repr__(self) -> str:
        return f"AliyunSmsProvider(name={self.name!r})"

    def build_request(self, message: OutgoingMessage) -> Any:
        """The SDK's SendSmsRequest for a message; DeliveryError if the purpose is not served."""
        sign, template, params = self._templates.for_message(self.name, message)
        return sms_models.SendSmsRequest(
            phone_numbers=message.to,
            sign_name=sign,
            template_code=template,
            template_param=json.dumps(dict(params), ensure_ascii=False, separators=(",", ":")),
            out_id=message.message_id,
        )

    async def send(self, message: OutgoingMessage) -> Accepted:
        """Send the SMS and return its BizId, or raise DeliveryError (or OutcomeUnknown)."""
        request = self.build_request(message)
        return await asyncio.to_thread(self._send_sync, request)

    def _send_sync(self, request: Any) -> Accepted:
        runtime = RuntimeOptions(
            autoretry=False,
            connect_timeout=self._runtime_ms[0],
            read_timeout=self._runtime_ms[1],
        )
        failure: DeliveryError
        try:
            response = self._client.send_sms_with_options(request, runtime)
        except AlibabaCloudException as exc:
            failure = _refusal(getattr(exc, "status_code", None), getattr(exc, "code", None))
        except Exception as exc:  # the SDK wraps network failures; its text holds the URL
            if never_sent(exc):
                failure = DeliveryError(True, "aliyun connection error")
            else:
                failure = DeliveryOutcomeUnknown("aliyun no answer", idempotent=False)
        else:
            body = response.body
            code = getattr(body, "code", None)
            if code == "OK":
                biz_id = getattr(body, "biz_id", None)
                return Accepted(self.name, str(biz_id)[:64] if biz_id else None)
            failure = _refusal(getattr(response, "status_code", 200), code)
        failure.provider = self.name
        raise failure


def _refusal(status: object, code: object) -> DeliveryError:
    """A DeliveryError for an answered refusal (see the module docstring)."""
    shown = _code(code)
    http = status if isinstance(status, int) else 0
    if shown in PERMANENT_CODES:
        return DeliveryError(False, f"aliyun refused {shown}")
    if 400 <= http < 500 and not (
        shown.startswith(("Throttling", "InvalidAccessKeyId", "Forbidden", "SignatureDoesNotMatch"))
        or shown in ("IncompleteSignature", "InvalidTimeStamp.Expired", "SignatureNonceUsed")
    ):
        # A request the platform finds malformed is ours to fix, not the platform's.
        return DeliveryError(False, f"aliyun http {http} {shown}")
    label = f"http {http} {shown}" if http and http != 200 else shown
    return DeliveryError(True, f"aliyun refused {label}")


__all__ = ["DEFAULT_ENDPOINT", "PERMANENT_CODES", "AliyunSmsConfig", "AliyunSmsProvider"]
