"""The SMS platforms' receipt pushes, parsed into `Receipt`s exactly as the platforms send them.

Aliyun SMS (`SmsReport`, HTTP batch push) posts a JSON array of objects:

    phone_number, send_time, report_time ("2017-01-01 00:00:00", Beijing time),
    success (bool), err_code ("DELIVERED" or the carrier's code), err_msg,
    sms_size, biz_id (SendSms' BizId), out_id (the OutId we passed)

Tencent Cloud SMS (status callback) posts a JSON array (at most 100 objects):

    user_receive_time ("2015-10-17 08:03:04", Beijing time), nationcode, mobile,
    report_status ("SUCCESS" / "FAIL"), errmsg ("DELIVRD" or the carrier's code),
    description, sid (SendSms' SerialNo), ext (the SessionContext we passed)

Both platforms retry a push that is not acknowledged, so a malformed item is not an
error here: it is left out and counted (`ParsedPush.malformed`), and the rest of the
push is still recorded. The phone number in each item is never read: receipts match
outbox rows by ids, and nothing personal reaches a `Receipt`, a log or a metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from xiaohe.identity.server.clock import is_plausible_time
from xiaohe.identity.server.delivery.receipts import (
    MAX_CODE_LENGTH,
    MAX_ID_LENGTH,
    STATE_DELIVERED,
    STATE_EXPIRED,
    STATE_FAILED,
    Receipt,
)

PROVIDER_ALIYUN = "aliyun"
PROVIDER_TENCENT = "tencent"

MAX_ITEMS = 1000
"""Items read from one push; Tencent sends at most 100, Aliyun documents no bound."""

CHINA_TIME = timezone(timedelta(hours=8), "Asia/Shanghai")
"""Both platforms write local times without a zone: Beijing time (no daylight saving)."""

_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_EXPIRED_CODES = frozenset({"EXPIRED"})


@dataclass(frozen=True)
class ParsedPush:
    """The receipts read from one push, and how many items could not be read."""

    receipts: tuple[Receipt, ...]
    malformed: int


def parse_china_time(value: object) -> float | None:
    """Epoch seconds of a platform time ("2017-01-01 00:00:00", Beijing); None if unreadable.

    A time before 1970 or from 2100 on is unreadable too: no receipt is that old or
    new, and the outbox could not store it.
    """
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.strptime(value.strip(), _TIME_FORMAT).replace(tzinfo=CHINA_TIME)
        seconds = parsed.timestamp()
    except (ValueError, OverflowError):
        return None
    return seconds if is_plausible_time(seconds) else None


def _text(item: dict[str, Any], key: str) -> str | None:
    """A string field, stripped; "" when absent or null; None when of another type."""
    value = item.get(key)
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else None


def _code(value: str) -> str:
    return value[:MAX_CODE_LENGTH]


def _parse(doc: object, item_parser: Callable[[dict[str, Any]], Receipt | None]) -> ParsedPush:
    """Apply `item_parser` to each object of a JSON array; anything else counts as malformed."""
    if not isinstance(doc, list):
        return ParsedPush((), 1)
    receipts: list[Receipt] = []
    malformed = max(0, len(doc) - MAX_ITEMS)
    for item in doc[:MAX_ITEMS]:
        receipt = item_parser(item) if isinstance(item, dict) else None
        if receipt is None:
            malformed += 1
        else:
            receipts.append(receipt)
    return ParsedPush(tuple(receipts), malformed)


def _aliyun_item(item: dict[str, Any]) -> Receipt | None:
    success = item.get("success")
    out_id, biz_id, err_code = (_text(item, k) for k in ("out_id", "biz_id", "err_code"))
    if not isinstance(success, bool) or out_id is None or biz_id is None or err_code is None:
        return None
    if not (out_id or biz_id) or max(len(out_id), len(biz_id)) > MAX_ID_LENGTH:
        return None
    if success:
        state = STATE_DELIVERED
    else:
        state = STATE_EXPIRED if err_code.upper() in _EXPIRED_CODES else STATE_FAILED
    return Receipt(
        state=state,
        message_id=out_id,
        provider=PROVIDER_ALIYUN,
        provider_message_id=biz_id,
        code=_code(err_code),
        done_at=parse_china_time(item.get("report_time")),
    )


def parse_aliyun_sms_report(doc: object) -> ParsedPush:
    """Receipts from the decoded JSON of an Aliyun `SmsReport` push."""
    return _parse(doc, _aliyun_item)


def _tencent_item(item: dict[str, Any]) -> Receipt | None:
    status, sid, errmsg = (_text(item, k) for k in ("report_status", "sid", "errmsg"))
    # `ext` echoes SendSms' SessionContext, a string; an object there carries no id of ours.
    ext = item.get("ext")
    message_id = ext.strip() if isinstance(ext, str) else ""
    if status is None or sid is None or errmsg is None:
        return None
    if not (message_id or sid) or max(len(message_id), len(sid)) > MAX_ID_LENGTH:
        return None
    if status == "SUCCESS":
        state = STATE_DELIVERED
    elif status == "FAIL":
        state = STATE_EXPIRED if errmsg.upper() in _EXPIRED_CODES else STATE_FAILED
    else:
        return None
    return Receipt(
        state=state,
        message_id=message_id,
        provider=PROVIDER_TENCENT,
        provider_message_id=sid,
        code=_code(errmsg),
        done_at=parse_china_time(item.get("user_receive_time")),
    )


def parse_tencent_sms_status(doc: object) -> ParsedPush:
    """Receipts from the decoded JSON of a Tencent Cloud SMS status callback."""
    return _parse(doc, _tencent_item)


__all__ = [
    "CHINA_TIME",
    "MAX_ITEMS",
    "PROVIDER_ALIYUN",
    "PROVIDER_TENCENT",
    "ParsedPush",
    "parse_aliyun_sms_report",
    "parse_china_time",
    "parse_tencent_sms_status",
]
