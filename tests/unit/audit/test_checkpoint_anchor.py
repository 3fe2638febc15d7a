"""Tests of the checkpoint anchor as logged: it survives log redaction and parses back."""

from __future__ import annotations

import pytest

from xiaohe.identity.server.audit.checkpoints import ChainAnchor, anchor_text
from xiaohe.identity.server.errors import InvalidArgument
from xiaohe.identity.server.observability.logging import redact

# MACs shaped to trip the redaction rules if logged as one run: a long hex run (a
# "secret"), mainland mobile numbers, an ID-number-like run, a six-digit "code".
AWKWARD_MACS = (
    "13812345678" + "ab" * 26 + "c",
    "a" + "13912345678" + "0" * 20 + "f" * 32,
    "110105194912310021" + "e" * 46,
    "0123456789abcdef" * 4,
    "f" * 64,
)


@pytest.mark.parametrize("mac", AWKWARD_MACS)
def test_logged_anchor_survives_redaction_and_parses_back(mac: str) -> None:
    """I7: the checkpoint's MAC, as the INFO line shows it, is still the MAC after redaction."""
    assert len(mac) == 64
    line = f"audit checkpoint seq=42 mac={anchor_text(mac)}"
    assert redact(line) == line
    assert ChainAnchor.parse(42, anchor_text(mac)) == ChainAnchor(42, mac)


def test_anchor_input_is_normalised_and_checked() -> None:
    mac = "0123456789abcdef" * 4
    assert ChainAnchor.parse(1, " " + mac.upper() + "\n").mac == mac
    with pytest.raises(InvalidArgument) as info:
        ChainAnchor.parse(0, mac[:-1])
    assert {v.field for v in info.value.violations} == {"anchor.seq", "anchor.mac"}
    with pytest.raises(InvalidArgument):
        ChainAnchor.parse(1, "g" * 64)
