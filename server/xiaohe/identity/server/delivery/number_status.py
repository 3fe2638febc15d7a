"""Number status: "was this mobile number re-issued to someone else after a date?" (二次号).

Carriers recycle a cancelled number to a new subscriber after a quarantine; the
new holder then receives whatever the platform sends to it, reset and recovery
codes included. A number-status service answers, for a number and the date it
was bound here, whether the carrier has issued it again since
(`NumberStatus`). The recycled-number flow asks before a RESET_PASSWORD or
RECOVER_ACCOUNT code goes to an old binding (`flows/recycled_numbers.py`).

`AliyunNumberStatusCheck` asks Aliyun's 号码百科 `DescribePhoneTwiceTelVerify`
(API version 2020-02-17) through its official SDK, signed ACS3-HMAC-SHA256 by
the SDK. The number leaves as its SHA-256 (`Mask=SHA256`), not in the clear:
the service only needs to match it, and the platform's privacy policy promises
numbers to carriers and SMS platforms for delivery, not to a lookup service.
Its `VerifyResult`: 1 recycled, 2 not recycled, 3 cancelled, 0 cannot tell;
4 (transferred to another holder, 过户) is treated as recycled, since someone
else holds the number either way. Any other code (`RequestFrequencyLimit`,
unsupported carriers or ported numbers), a transport error or a timeout is
UNKNOWN: the caller decides what unknown means (see the flow). The check never
raises for the service's answers, and nothing it logs carries the number, the
keys or the auth code.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import datetime
from enum import StrEnum
from typing import Final, Protocol
from urllib.parse import urlsplit

from xiaohe.identity.server.delivery.sdk_logging import quiet_sdk_loggers
from xiaohe.identity.server.shared.identifiers import CHINA_TIMEZONE

logger = logging.getLogger(__name__)

MAINLAND_PREFIX: Final = "+86"
START_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
"""`StartTime` as the API takes it, in China's local time."""
DEFAULT_REGION: Final = "cn-hangzhou"
DEFAULT_TIMEOUT_SECONDS: Final = 2.0


class NumberStatus(StrEnum):
    """What a number-status service says about a number since a date."""

    RECYCLED = "recycled"
    NOT_RECYCLED = "not_recycled"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class NumberStatusCheck(Protocol):
    """Asks whether a number was re-issued after a date (`AliyunNumberStatusCheck`)."""

    async def status_since(self, e164: str, since: float) -> NumberStatus:
        """The number's status since `since` (epoch seconds); UNKNOWN rather than raising."""
        ...


_VERIFY_RESULTS: Final = {
    "1": NumberStatus.RECYCLED,
    "2": NumberStatus.NOT_RECYCLED,
    "3": NumberStatus.CANCELLED,
    "4": NumberStatus.RECYCLED,
}
"""`Data.VerifyResult` → status; "0" (cannot tell) and anything else are UNKNOWN."""


def masked_number(e164: str) -> str:
    """The `InputNumber` for `Mask=SHA256`: SHA-256 hex of the 11-digit national number."""
    return hashlib.sha256(e164.removeprefix(MAINLAND_PREFIX).encode("ascii")).hexdigest()


def start_time(since: float) -> str:
    """The `StartTime` of a binding made at `since` (epoch seconds)."""
    return datetime.fromtimestamp(since, tz=CHINA_TIMEZONE).strftime(START_TIME_FORMAT)


class AliyunNumberStatusCheck:
    """`NumberStatusCheck` on Aliyun's 二次号 check (`DescribePhoneTwiceTelVerify`).

    `endpoint` overrides the SDK's default host (tests point it at a local
    server): `https://host[:port]`, or `http://` to a loopback address, checked
    by the settings. Each call is bounded by `timeout_seconds` as a whole.
    """

    def __init__(
        self,
        *,
        access_key_id: str,
        access_key_secret: str,
        auth_code: str,
        endpoint: str = "",
        region: str = DEFAULT_REGION,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        if not access_key_id or not access_key_secret or not auth_code:
            raise ValueError(
                "the number-status check needs an access key, its secret and an auth code"
            )
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        # The SDK is imported by the one check that uses it: it takes a third of a second,
        # and every process that imports the protocol above (each CLI command) would pay.
        from alibabacloud_dytnsapi20200217.client import Client as DytnsClient
        from alibabacloud_tea_openapi.utils_models import Config as OpenApiConfig

        config = OpenApiConfig(
            access_key_id=access_key_id,
            access_key_secret=access_key_secret,
            region_id=region,
            connect_timeout=int(timeout_seconds * 1000),
            read_timeout=int(timeout_seconds * 1000),
        )
        self._endpoint = ""
        if endpoint:
            parts = urlsplit(endpoint)
            config.endpoint = parts.netloc
            config.protocol = parts.scheme.upper()
            self._endpoint = f"{parts.scheme}://{parts.netloc}"
        self._client = DytnsClient(config)
        quiet_sdk_loggers()
        self._auth_code = auth_code
        self._timeout = timeout_seconds

    def __repr__(self) -> str:
        return f"AliyunNumberStatusCheck(endpoint={self._endpoint or 'default'!r})"

    async def status_since(self, e164: str, since: float) -> NumberStatus:
        """Ask whether the number was re-issued after `since`; UNKNOWN on any failure."""
        if not e164.startswith(MAINLAND_PREFIX) or len(e164) != len(MAINLAND_PREFIX) + 11:
            return NumberStatus.UNKNOWN  # the service knows mainland mobile numbers only
        from alibabacloud_dytnsapi20200217.models import DescribePhoneTwiceTelVerifyRequest

        request = DescribePhoneTwiceTelVerifyRequest(
            auth_code=self._auth_code,
            input_number=masked_number(e164),
            mask="SHA256",
            start_time=start_time(since),
        )
        try:
            response = await asyncio.wait_for(
                self._client.describe_phone_twice_tel_verify_async(request), self._timeout
            )
        except Exception as exc:
            # The SDK's messages may quote the request; log the type and the service's code only.
            code = str(getattr(exc, "code", "") or "")[:64]
            logger.warning("number-status check failed: %s %s", type(exc).__name__, code)
            return NumberStatus.UNKNOWN
        body = response.body
        if body is None or body.code != "OK" or body.data is None:
            code = "" if body is None else str(body.code or "")[:64]
            logger.info("number-status check answered without a result: %s", code)
            return NumberStatus.UNKNOWN
        return _VERIFY_RESULTS.get(str(body.data.verify_result), NumberStatus.UNKNOWN)


__all__ = [
    "AliyunNumberStatusCheck",
    "NumberStatus",
    "NumberStatusCheck",
    "masked_number",
    "start_time",
]
