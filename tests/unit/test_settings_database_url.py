"""Which database URLs the settings accept, and the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from xiaohe.identity.server.config import Settings, SettingsError, load_settings

ENV = "XIAOHE_IDENTITY_DATABASE_URL"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/xiaohe/identity.db",
        "sqlite+aiosqlite:////var/lib/xiaohe/identity.db",  # the spelling of earlier releases
        "postgresql+asyncpg://identity@db.internal:5432/identity",
    ],
)
def test_supported_database_urls_are_accepted(url: str) -> None:
    env = {ENV: url, "XIAOHE_IDENTITY_KEYRING_FILE": "/run/secrets/keyring.json"}
    assert load_settings(env).effective_database_url == url


@pytest.mark.parametrize(
    "url", ["mysql://identity@db/identity", "postgresql://identity@db/identity", "identity.db"]
)
def test_other_database_urls_are_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(SettingsError, match=f"{ENV}: use sqlite:// or postgresql\\+asyncpg://"):
        load_settings({ENV: url})


def test_the_default_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.effective_database_url == f"sqlite:///{(tmp_path / 'identity.db').resolve()}"
