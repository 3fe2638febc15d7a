"""Which database URLs the settings accept, and the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from xiaohe.identity.server.config import Settings, SettingsError, load_settings

ENV = "XIAOHE_IDENTITY_DATABASE_URL"
KEYRING = {"XIAOHE_IDENTITY_KEYRING_FILE": "/run/secrets/keyring.json"}


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/xiaohe/identity.db",
        "sqlite+aiosqlite:////var/lib/xiaohe/identity.db",  # the spelling of earlier releases
        "postgresql+asyncpg://identity@db.internal:5432/identity",
    ],
)
def test_supported_database_urls_are_accepted(url: str) -> None:
    assert load_settings({ENV: url, **KEYRING}).effective_database_url == url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://identity@db.internal:5432/identity?sslmode=require",
        "postgres://identity@db.internal:5432/identity?sslmode=require",
    ],
)
def test_the_standard_postgresql_forms_name_the_servers_driver(url: str) -> None:
    settings = load_settings({ENV: url, **KEYRING})
    assert settings.effective_database_url == (
        "postgresql+asyncpg://identity@db.internal:5432/identity?ssl=require"
    )


@pytest.mark.parametrize(
    "url",
    ["mysql://identity@db/identity", "postgresql+psycopg://identity@db/identity", "identity.db"],
)
def test_other_database_urls_are_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(SettingsError, match=f"{ENV}: use sqlite:// or postgresql://"):
        load_settings({ENV: url})


@pytest.mark.parametrize(
    ("name", "value"),
    [("DATABASE_POOL_SIZE", "0"), ("DATABASE_STATEMENT_TIMEOUT_MS", "-1")],
)
def test_pool_size_and_statement_timeout_are_bounded(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"XIAOHE_IDENTITY_{name}"):
        load_settings({f"XIAOHE_IDENTITY_{name}": value})


def test_the_default_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.effective_database_url == f"sqlite:///{(tmp_path / 'identity.db').resolve()}"
