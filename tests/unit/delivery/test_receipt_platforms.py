"""The platforms' receipt pushes, parsed from their published formats; garbage never raises."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.receipt_pushes import aliyun_push, tencent_push
from xiaohe.identity.server.delivery.receipt_formats import (
    MAX_ITEMS,
    ParsedPush,
    parse_aliyun_sms_report,
    parse_china_time,
    parse_tencent_sms_status,
)
from xiaohe.identity.server.delivery.receipts import (
    STATE_DELIVERED,
    STATE_EXPIRED,
    STATE_FAILED,
    Receipt,
)
from xiaohe.identity.server.observability.metrics import network_label

MESSAGE_ID = "0f" * 16
# 2017-01-01 00:00:03 in Beijing is 2016-12-31 16:00:03 UTC.
BEIJING_2017 = 1483200003.0

ALIYUN_PUSH = aliyun_push(MESSAGE_ID)
TENCENT_PUSH = tencent_push(MESSAGE_ID, sid="2019:538884*****")


def test_aliyun_sms_report_as_published() -> None:
    parsed = parse_aliyun_sms_report(json.loads(ALIYUN_PUSH))
    assert parsed == ParsedPush(
        (
            Receipt(
                state=STATE_DELIVERED,
                message_id=MESSAGE_ID,
                provider="aliyun",
                provider_message_id="932702304080415357^0",
                code="DELIVERED",
                done_at=BEIJING_2017,
            ),
        ),
        0,
    )
    assert "13811112222" not in repr(parsed)


def test_aliyun_failures_and_expiry() -> None:
    doc = json.loads(ALIYUN_PUSH)
    failed = dict(doc[0], success=False, err_code="MK:0001", err_msg="号码状态异常")
    expired = dict(doc[0], success=False, err_code="EXPIRED", out_id="")
    parsed = parse_aliyun_sms_report([failed, expired])
    assert [(r.state, r.code) for r in parsed.receipts] == [
        (STATE_FAILED, "MK:0001"),
        (STATE_EXPIRED, "EXPIRED"),
    ]
    # No OutId: the BizId alone names the message.
    assert parsed.receipts[1].message_id == ""
    assert parsed.receipts[1].provider_message_id == "932702304080415357^0"


def test_tencent_status_callback_as_published() -> None:
    parsed = parse_tencent_sms_status(json.loads(TENCENT_PUSH))
    (receipt,) = parsed.receipts
    assert receipt == Receipt(
        state=STATE_DELIVERED,
        message_id=MESSAGE_ID,
        provider="tencent",
        provider_message_id="2019:538884*****",
        code="DELIVRD",
        done_at=BEIJING_2017,
    )
    fail = dict(json.loads(TENCENT_PUSH)[0], report_status="FAIL", errmsg="UNDELIV", ext={})
    (failed,) = parse_tencent_sms_status([fail]).receipts
    assert (failed.state, failed.code, failed.message_id) == (STATE_FAILED, "UNDELIV", "")


def test_malformed_items_are_counted_and_the_rest_kept() -> None:
    good = json.loads(ALIYUN_PUSH)[0]
    items: list[Any] = [
        good,
        "not an object",
        dict(good, success="true"),  # a string is not the documented bool
        dict(good, out_id="", biz_id=""),  # names no message
        dict(good, biz_id=12345),
        dict(good, out_id="x" * 65),
        dict(good, report_time="yesterday"),  # readable receipt, unreadable time
    ]
    parsed = parse_aliyun_sms_report(items)
    assert parsed.malformed == 5
    assert [r.done_at for r in parsed.receipts] == [BEIJING_2017, None]
    tencent = json.loads(TENCENT_PUSH)[0]
    parsed = parse_tencent_sms_status(
        [tencent, dict(tencent, report_status="DELIVERED"), dict(tencent, sid=None, ext=None), 7]
    )
    assert (len(parsed.receipts), parsed.malformed) == (1, 3)


def test_a_body_that_is_not_an_array_is_one_malformed_item() -> None:
    assert parse_aliyun_sms_report({"success": True}) == ParsedPush((), 1)
    assert parse_tencent_sms_status(None) == ParsedPush((), 1)


def test_items_past_the_bound_are_counted_not_read() -> None:
    doc = json.loads(TENCENT_PUSH) * (MAX_ITEMS + 5)
    parsed = parse_tencent_sms_status(doc)
    assert (len(parsed.receipts), parsed.malformed) == (MAX_ITEMS, 5)


def test_long_carrier_codes_are_cut_to_the_column() -> None:
    item = dict(json.loads(ALIYUN_PUSH)[0], success=False, err_code="E" * 80)
    (receipt,) = parse_aliyun_sms_report([item]).receipts
    assert receipt.code == "E" * 32


def test_china_time() -> None:
    assert parse_china_time("2017-01-01 00:00:03") == BEIJING_2017
    assert parse_china_time("2017-13-01 00:00:03") is None
    # Readable but impossible: unreadable, so the item is still acknowledged (no 500 loop).
    assert parse_china_time("0001-01-01 00:00:00") is None
    assert parse_china_time("9999-12-31 23:59:59") is None
    assert parse_china_time(1483200003) is None


def test_network_label_is_bounded() -> None:
    """Prometheus sees the 3-digit network, never the 7-digit prefix or a number."""
    assert network_label("86-1381234") == "86-138"
    assert network_label("") == "other"
    assert network_label("+8613812345678") == "other"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=20,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        key: JSON | st.text(max_size=70)
        for key in (
            "success",
            "out_id",
            "biz_id",
            "err_code",
            "report_time",
            "report_status",
            "sid",
            "ext",
            "errmsg",
            "user_receive_time",
        )
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, st.lists(st.one_of(FIELDS, JSON), max_size=5)))
def test_any_json_parses_without_raising(doc: object) -> None:
    """Whatever a platform (or anyone with the secret) sends, parsing never raises."""
    for parse in (parse_aliyun_sms_report, parse_tencent_sms_status):
        parsed = parse(doc)
        items = len(doc) if isinstance(doc, list) else 1
        assert len(parsed.receipts) + parsed.malformed == items
