"""Settings of deactivation (issue 14): documented defaults, bounds, known obligations only."""

from __future__ import annotations

import pytest

from xiaohe.identity.server.config import DEACTIVATION_OBLIGATIONS, SettingsError, load_settings
from xiaohe.identity.server.flows.deactivation import KNOWN_OBLIGATIONS

P = "XIAOHE_IDENTITY_"


def test_defaults() -> None:
    s = load_settings({})
    assert s.deactivation_cooling_off_seconds == 15 * 86400
    assert s.deactivation_blocking_obligations == ("open_review_cases",)
    assert s.deactivation_sweep_seconds == 300.0


def test_values_from_the_environment() -> None:
    s = load_settings(
        {
            f"{P}DEACTIVATION_COOLING_OFF_SECONDS": "86400",
            f"{P}DEACTIVATION_BLOCKING_OBLIGATIONS": "open_review_cases,pending_real_name",
            f"{P}DEACTIVATION_SWEEP_SECONDS": "60",
        }
    )
    assert s.deactivation_cooling_off_seconds == 86400
    assert s.deactivation_blocking_obligations == ("open_review_cases", "pending_real_name")
    assert s.deactivation_sweep_seconds == 60.0
    assert (
        load_settings(
            {f"{P}DEACTIVATION_BLOCKING_OBLIGATIONS": ""}
        ).deactivation_blocking_obligations
        == ()
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEACTIVATION_COOLING_OFF_SECONDS", "-1"),
        ("DEACTIVATION_COOLING_OFF_SECONDS", str(366 * 86400)),
        ("DEACTIVATION_BLOCKING_OBLIGATIONS", "open_review_cases,unpaid_bills"),
        ("DEACTIVATION_SWEEP_SECONDS", "0"),
    ],
)
def test_out_of_bounds_is_refused_with_the_setting_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({f"{P}{name}": value})


def test_the_config_knows_exactly_the_flows_obligations() -> None:
    assert set(DEACTIVATION_OBLIGATIONS) == set(KNOWN_OBLIGATIONS)
