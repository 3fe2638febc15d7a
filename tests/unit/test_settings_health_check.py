"""The interval of each worker's store checks (health follows the stores)."""

from __future__ import annotations

import pytest

from xiaohe.identity.server.config import SettingsError, load_settings

P = "XIAOHE_IDENTITY_"


@pytest.mark.parametrize("value", ["0", "0.05", "301", "soon"])
def test_health_check_interval_is_bounded(value: str) -> None:
    with pytest.raises(SettingsError, match=f"{P}HEALTH_CHECK_SECONDS"):
        load_settings({f"{P}HEALTH_CHECK_SECONDS": value})


def test_health_check_interval_defaults_to_five_seconds() -> None:
    assert load_settings({}).health_check_seconds == 5.0
