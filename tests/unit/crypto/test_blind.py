"""Tests of blind indexes and pseudonyms."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from xiaohe.identity.server.crypto.blind import BlindIndex, Pseudonymizer

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def test_blind_index_is_hmac_sha256_of_kind_nul_value() -> None:
    expected = hmac.new(KEY, b"phone\x00+8613800138000", hashlib.sha256).hexdigest()
    assert BlindIndex(KEY).compute("phone", "+8613800138000") == expected


def test_blind_index_is_deterministic() -> None:
    assert BlindIndex(KEY).compute("phone", "+8613800138000") == BlindIndex(KEY).compute(
        "phone", "+8613800138000"
    )
    assert len(BlindIndex(KEY).compute("phone", "+8613800138000")) == 64


def test_blind_index_separates_kinds() -> None:
    index = BlindIndex(KEY)
    digits = "110105194912310021"
    assert index.compute("phone", digits) != index.compute("id_number", digits)
    # The separator prevents shifting characters between kind and value.
    assert index.compute("ab", "c") != index.compute("a", "bc")


def test_blind_index_depends_on_value_and_key() -> None:
    assert BlindIndex(KEY).compute("phone", "1") != BlindIndex(KEY).compute("phone", "2")
    assert BlindIndex(KEY).compute("phone", "1") != BlindIndex(OTHER_KEY).compute("phone", "1")


def test_pseudonym_is_short_keyed_and_kind_separated() -> None:
    p = Pseudonymizer(KEY)
    value = p.pseudonym("phone", "+8613800138000")

    assert len(value) == 32
    int(value, 16)  # hex
    assert value == Pseudonymizer(KEY).pseudonym("phone", "+8613800138000")
    assert value != p.pseudonym("email", "+8613800138000")
    assert value != Pseudonymizer(OTHER_KEY).pseudonym("phone", "+8613800138000")
    assert "13800138000" not in value


@pytest.mark.parametrize("kind", ["", "ph\x00one"])
def test_invalid_kind_is_rejected(kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        BlindIndex(KEY).compute(kind, "x")
    with pytest.raises(ValueError, match="kind"):
        Pseudonymizer(KEY).pseudonym(kind, "x")


def test_short_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        BlindIndex(b"short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Pseudonymizer(b"short")


def test_repr_hides_the_key() -> None:
    assert KEY.hex() not in repr(BlindIndex(KEY))
    assert repr(KEY) not in repr(Pseudonymizer(KEY))
