"""The directory's rules without a server: field and purpose grants, masking, page tokens."""

from __future__ import annotations

import pytest

from xiaohe.identity.server.callers.grants import (
    IDENTITY_FIELDS,
    declared_purposes,
    field_access,
    is_known_grant,
)
from xiaohe.identity.server.errors import InvalidArgument
from xiaohe.identity.server.flows.directory import MASKS
from xiaohe.identity.server.shared.identifiers import mask_person_name
from xiaohe.identity.server.shared.page_tokens import decode_page_token, encode_page_token


@pytest.mark.parametrize(
    ("grant", "known"),
    [
        ("field:phone", True),
        ("field:phone:full", True),
        ("field:uscc:full", True),
        ("field:shoe_size", False),
        ("field:phone:partial", False),
        ("field:", False),
        ("purpose:order_fulfilment", True),
        ("purpose:kyc.v2-b", True),
        ("purpose:", False),
        ("purpose:Marketing", False),
        ("purpose:" + "a" * 41, False),
        ("directory", True),
    ],
)
def test_field_and_purpose_grants_are_known_only_in_their_shapes(grant: str, known: bool) -> None:
    assert is_known_grant(grant) is known


def test_field_access_prefers_full_and_the_wildcard_opens_nothing() -> None:
    grants = frozenset({"field:phone", "field:phone:full", "field:email", "*"})
    assert field_access(grants, "phone") == "full"
    assert field_access(grants, "email") == "masked"
    assert field_access(grants, "name") is None
    assert declared_purposes(frozenset({"*", "purpose:kyc", "directory"})) == {"kyc"}


def test_only_sensitive_fields_have_a_mask() -> None:
    assert set(MASKS) == {"name", "id_number", "phone", "email", "uscc"}
    assert set(MASKS) < set(IDENTITY_FIELDS)


@pytest.mark.parametrize(
    ("name", "masked"),
    [("张三丰", "张**"), ("李四", "李*"), ("王", "王*"), ("Li Na", "L****"), ("", "")],
)
def test_a_person_name_keeps_only_its_first_character(name: str, masked: str) -> None:
    assert mask_person_name(name) == masked


def test_page_tokens_round_trip_and_garbage_is_invalid_argument() -> None:
    assert decode_page_token(encode_page_token(1764700000.25, "dis_ab"), "ListDisclosures") == (
        1764700000.25,
        "dis_ab",
    )
    for bad in ("not-a-token", "x" * 201, encode_page_token(1.0, "a").replace("W", "!")):
        with pytest.raises(InvalidArgument) as caught:
            decode_page_token(bad, "ListDisclosures")
        assert caught.value.violations[0].field == "page_token"
