"""Callers' `XIAOHE_IDENTITY_*` variables beside the server's: ignored; typos still stop it."""

from __future__ import annotations

from pathlib import Path

import pytest

from xiaohe.identity.server.config import SettingsError, load_settings

P = "XIAOHE_IDENTITY_"


CALLERS_NAMES = ["target", "client_id", "client_secret", "client_file"]


@pytest.mark.parametrize("name", CALLERS_NAMES)
def test_a_callers_variable_is_ignored(name: str) -> None:
    """`XIAOHE_IDENTITY_TARGET` and the like configure clients, not the server."""
    settings = load_settings({f"{P}{name.upper()}": "127.0.0.1:50051", f"{P}WORKERS": "3"})
    assert settings.workers == 3


def test_only_callers_names_are_ignored() -> None:
    from xiaohe.identity.server.config import CLIENT_SIDE_NAMES

    assert set(CLIENT_SIDE_NAMES) == set(CALLERS_NAMES)


def test_a_misspelt_setting_still_stops_start_up() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({f"{P}TARGET": "127.0.0.1:50051", f"{P}LISTN": "127.0.0.1:50051"})
    assert str(caught.value) == f"{P}LISTN: unknown setting"


def test_a_callers_name_in_the_settings_file_is_still_unknown(tmp_path: Path) -> None:
    """The TOML file is the server's own: `target` there is a mistake, and says so."""
    path = tmp_path / "identity.toml"
    path.write_text('target = "127.0.0.1:50051"\n')
    with pytest.raises(SettingsError, match="unknown setting 'target'"):
        load_settings({}, config_file=path)
