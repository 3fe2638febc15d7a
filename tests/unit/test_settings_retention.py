"""Retention settings: logs are kept at least six months (Cybersecurity Law Art. 21)."""

from __future__ import annotations

import pytest

from xiaohe.identity.server.config import SettingsError, load_settings

P = "XIAOHE_IDENTITY_"


@pytest.mark.parametrize("name", ["RETENTION_LOG_DAYS", "RETENTION_SESSION_DAYS"])
@pytest.mark.parametrize("value", ["179", "0", "-1"])
def test_logs_cannot_be_kept_less_than_six_months(name: str, value: str) -> None:
    """I7: audit and other logs are kept at least six months; a shorter setting stops start-up."""
    with pytest.raises(SettingsError, match=f"{P}{name}: at least 180"):
        load_settings({f"{P}{name}": value})


@pytest.mark.parametrize("name", ["RETENTION_LOG_DAYS", "RETENTION_SESSION_DAYS"])
def test_six_months_and_more_are_accepted(name: str) -> None:
    settings = load_settings({f"{P}{name}": "180"})
    assert getattr(settings, name.lower()) == 180
    assert getattr(load_settings({f"{P}{name}": "400"}), name.lower()) == 400


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RETENTION_OUTBOX_DAYS", "0"),
        ("RETENTION_REVIEW_CASE_DAYS", "0"),
        ("RETENTION_DOCUMENT_DAYS", "0"),
        ("RETENTION_ORPHAN_FILE_HOURS", "0"),
        ("RETENTION_BATCH_SIZE", "0"),
        ("RETENTION_BATCH_SIZE", "10001"),
        ("RETENTION_SWEEP_SECONDS", "59"),
        ("RETENTION_SWEEP_SECONDS", "-1"),
    ],
)
def test_other_retention_settings_are_bounded(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{P}{name}"):
        load_settings({f"{P}{name}": value})


def test_the_scheduled_sweep_can_be_turned_off() -> None:
    assert load_settings({f"{P}RETENTION_SWEEP_SECONDS": "0"}).retention_sweep_seconds == 0
    assert load_settings({}).retention_sweep_seconds == 3600
