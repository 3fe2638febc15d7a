"""Tencent Cloud SMS (腾讯云短信): `SendSms` of API version 2021-01-11, through the official SDK.

The SDK (`tencentcloud-sdk-python-sms`) signs each request with
TC3-HMAC-SHA256 (a canonical request over method, path, `content-type` and
`host`, and the body's SHA-256; a signing key derived from the SecretKey, the
UTC date and the service, scope `date/sms/tc3_request`); its calls block, so
they run in a worker thread. The SDK's retryer and region breaker stay off:
one call, one request; failover and breaking are ours (`failover.py`).

Request: `PhoneNumberSet` [E.164], `SmsSdkAppId`, `SignName` and
`TemplateId` for the purpose, `TemplateParamSet` [code] (Tencent templates
number their variables `{1}`, `{2}` ...), and `SessionContext` = our outbox
message id, which comes back in the status callback (`ext`). The answer's
per-number `SendStatusSet[0].SerialNo` is returned as the provider message id
(the callback's `sid`).

What the answers mean: per-number `Code` "Ok" is accepted. A refusal of the
message itself (invalid number, template or signature not approved,
blacklisted number, the per-number limits `LimitExceeded.PhoneNumber*`) is
permanent and does not fail over (another platform would flood a subscriber
this one protects). Every other refusal (internal errors, request throttling,
balance, refused credentials, unknown codes) is the platform's: retryable,
fails over. Failing to connect fails over; failing after the request went out
is `DeliveryOutcomeUnknown` (no idempotency key).

The SDK logs whole requests at DEBUG level through the `tencentcloud_sdk_common`
logger; `sdk_logging` caps it, so a DEBUG root logger never receives a phone
number or a code from it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, Final

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import (
    TencentCloudSDKException,
)
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.sms.v20210111 import models as sms_models
from tencentcloud.sms.v20210111.sms_client import SmsClient

from xiaohe.identity.server.delivery.never_sent import never_sent
from xiaohe.identity.server.delivery.platforms import Endpoint, PlatformTemplates
from xiaohe.identity.server.delivery.providers import (
    Accepted,
    DeliveryError,
    DeliveryOutcomeUnknown,
    OutgoingMessage,
)
from xiaohe.identity.server.delivery.sdk_logging import quiet_sdk_loggers

DEFAULT_ENDPOINT: Final = "https://sms.tencentcloudapi.com"

PERMANENT_CODES: Final = frozenset(
    {
        "FailedOperation.TemplateIncorrectOrUnapproved",
        "FailedOperation.SignatureIncorrectOrUnapproved",
        "FailedOperation.PhoneNumberInBlacklist",
        "FailedOperation.ContainSensitiveWord",
        "FailedOperation.MissingSignature",
        "FailedOperation.MissingTemplate",
        "InvalidParameterValue.IncorrectPhoneNumber",
        "InvalidParameterValue.TemplateParameterFormatError",
        "InvalidParameterValue.TemplateParameterLengthLimit",
        "InvalidParameterValue.ProhibitedUseUrlInTemplateParameter",
        "InvalidParameterValue.ContentLengthLimit",
        "InvalidParameterValue.SdkAppIdNotExist",
        "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber",
        "UnsupportedOperation.UnsupportedRegion",
    }
)
"""Codes that refuse the message itself (besides `LimitExceeded.PhoneNumber*`): no failover."""

_CODE_SHAPE = re.compile(r"[A-Za-z0-9_.:-]{1,80}")


@dataclass(frozen=True)
class TencentSmsConfig:
    """Credentials, application, endpoint and templates; the secret key stays out of `repr`."""

    secret_id: str
    secret_key: str = field(repr=False)
    sdk_app_id: str
    templates: PlatformTemplates
    endpoint: str = DEFAULT_ENDPOINT
    region: str = "ap-guangzhou"
    timeout: float = 5.0


def _code(value: object) -> str:
    text = str(value) if value is not None else ""
    return text if _CODE_SHAPE.fullmatch(text) else "?"


def _refusal(code: object) -> DeliveryError:
    """A DeliveryError for a refusal code (see the module docstring)."""
    shown = _code(code)
    if shown in PERMANENT_CODES or shown.startswith("LimitExceeded.PhoneNumber"):
        return DeliveryError(False, f"tencent refused {shown}")
    return DeliveryError(True, f"tencent refused {shown}")


class TencentSmsProvider:
    """Sends code SMS through Tencent Cloud's SendSms (see the module docstring)."""

    name = "tencent"
    idempotent = False

    def __init__(self, config: TencentSmsConfig) -> None:
        endpoint = Endpoint.parse(config.endpoint)
        if not config.secret_id or not config.secret_key or not config.sdk_app_id:
            raise ValueError("Tencent Cloud SMS needs a SecretId, a SecretKey and an SdkAppId")
        self._templates = config.templates
        self._app_id = config.sdk_app_id
        quiet_sdk_loggers()
        profile = ClientProfile(
            httpProfile=HttpProfile(
                protocol=endpoint.scheme, endpoint=endpoint.host, reqTimeout=config.timeout
            ),
            disable_region_breaker=True,
        )
        self._client = SmsClient(
            credential.Credential(config.secret_id, config.secret_key), config.region, profile
        )

    def __repr__(self) -> str:
        return f"TencentSmsProvider(name={self.name!r})"

    def build_request(self, message: OutgoingMessage) -> Any:
        """The SDK's SendSmsRequest for a message; DeliveryError if the purpose is not served."""
        sign, template, params = self._templates.for_message(self.name, message)
        request = sms_models.SendSmsRequest()
        request.PhoneNumberSet = [message.to]
        request.SmsSdkAppId = self._app_id
        request.SignName = sign
        request.TemplateId = template
        request.TemplateParamSet = list(params.values())  # {1}, {2}, ... in the text's order
        request.SessionContext = message.message_id
        return request

    async def send(self, message: OutgoingMessage) -> Accepted:
        """Send the SMS and return its SerialNo, or raise DeliveryError (or OutcomeUnknown)."""
        request = self.build_request(message)
        return await asyncio.to_thread(self._send_sync, request)

    def _send_sync(self, request: Any) -> Accepted:
        failure: DeliveryError
        try:
            response = self._client.SendSms(request)
        except TencentCloudSDKException as exc:
            code = exc.get_code()
            if code == "ClientNetworkError":
                if never_sent(exc):
                    failure = DeliveryError(True, "tencent connection error")
                else:
                    failure = DeliveryOutcomeUnknown("tencent no answer", idempotent=False)
            elif code == "ServerNetworkError":  # an HTTP status other than 200
                failure = DeliveryError(True, "tencent http error")
            else:
                failure = _refusal(code)
        except Exception as exc:  # the SDK's parsing of a garbled answer, or a bug
            if never_sent(exc):
                failure = DeliveryError(True, "tencent connection error")
            else:
                failure = DeliveryOutcomeUnknown(
                    f"tencent unreadable answer: {type(exc).__name__}", idempotent=False
                )
        else:
            statuses = getattr(response, "SendStatusSet", None) or []
            status = statuses[0] if statuses else None
            code = getattr(status, "Code", None)
            if code == "Ok":
                serial = getattr(status, "SerialNo", None)
                return Accepted(self.name, str(serial)[:64] if serial else None)
            if status is None:
                # Answered without a per-number status: we cannot tell what it did.
                failure = DeliveryOutcomeUnknown("tencent answer without status", idempotent=False)
            else:
                failure = _refusal(code)
        failure.provider = self.name
        raise failure


__all__ = [
    "DEFAULT_ENDPOINT",
    "PERMANENT_CODES",
    "TencentSmsConfig",
    "TencentSmsProvider",
]
