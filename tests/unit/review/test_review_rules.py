"""Pure rules of review: masking case fields, page tokens, reasons and notes."""

from __future__ import annotations

import pytest

from xiaohe.identity.server.errors import InvalidArgument
from xiaohe.identity.server.flows.review import _required_text, mask_field
from xiaohe.identity.server.review.models import CaseState
from xiaohe.identity.server.shared.page_tokens import decode_page_token, encode_page_token
from xiaohe.identity.server.shared.validation import Violations


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("new_phone", "+8613700001111", "137****1111"),
        ("id_number", "11010519491231002X", "110*************2X"),
        ("representative_id_number", "440524188001010014", "440*************14"),
        ("name", "张伟", "张*"),
        ("representative_name", "欧阳娜娜", "欧***"),
        ("login_name", "zhang.wei", "z******i"),
        ("email", "zhang.wei@example.cn", "z***@example.cn"),
        ("uscc", "91350100M000100Y43", "91350100M000100Y43"),
        ("id_type", "RESIDENT_ID_CARD", "RESIDENT_ID_CARD"),
        ("account", "no matching account", "no matching account"),
        ("address", "福建省福州市鼓楼区", "****"),
    ],
)
def test_fields_are_masked_by_name_and_unknown_ones_completely(
    name: str, value: str, shown: str
) -> None:
    """I1: personal data is masked until revealed; a field review does not know is hidden."""
    assert mask_field(name, value) == shown


def test_a_page_token_round_trips_and_garbage_is_a_field_violation() -> None:
    """F3: a forged token (not a number, NaN, out of range) is a field violation, not
    INTERNAL."""
    token = encode_page_token(1_790_000_000.25, "case_abc")
    assert decode_page_token(token, "ListCases") == (1_790_000_000.25, "case_abc")
    forged = [encode_page_token(t, "c") for t in (float("nan"), 1e300, -1e12)]
    forged.append(encode_page_token(True, "c"))
    for bad in ("", "!!!", "W10", "x" * 201, encode_page_token(1.0, "c")[:-2] + "@@", *forged):
        with pytest.raises(InvalidArgument) as caught:
            decode_page_token(bad, "ListCases")
        assert caught.value.violations[0].field == "page_token"


def test_reasons_keep_their_words_and_refuse_hidden_characters() -> None:
    v = Violations()
    assert (
        _required_text(v, "reason", "  证件，清晰\r\n第二行　全角空格 ")
        == "证件，清晰\n第二行　全角空格"
    )
    assert v.items == []
    for bad in ("", "   ", "a\u202eb", "a\x00b", "x" * 2001):
        v = Violations()
        assert _required_text(v, "reason", bad) == ""
        assert [i.field for i in v.items] == ["reason"]


def test_only_approved_and_rejected_are_final() -> None:
    assert {s for s in CaseState if s.final} == {CaseState.APPROVED, CaseState.REJECTED}
