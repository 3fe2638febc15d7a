"""A no-match recovery's masked login name cannot be told from a real one by its ends."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from xiaohe.identity.server.errors import InvalidArgument
from xiaohe.identity.server.flows.recovery import decoy_login_name
from xiaohe.identity.server.shared.identifiers import mask_login_name, normalize_login_name

DECOYS = frozenset(decoy_login_name(first, last) for first in range(256) for last in range(256))


def test_decoys_start_with_any_letter_and_end_with_any_login_name_character() -> None:
    assert {d[0] for d in DECOYS} == set("abcdefghijklmnopqrstuvwxyz")
    assert {d[-1] for d in DECOYS} == set("abcdefghijklmnopqrstuvwxyz0123456789_.-")


@given(st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{3,31}", fullmatch=True))
def test_every_real_masked_login_name_is_a_possible_decoy(typed: str) -> None:
    try:
        login_name = normalize_login_name(typed)
    except InvalidArgument:
        assume(False)
        raise
    assert mask_login_name(login_name) in DECOYS
