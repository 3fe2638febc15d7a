"""Alembic migrations, run at start-up and by `xiaohe-identity migrate`."""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations and the given database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, lock_file: Path | None = None) -> None:
    """Bring the database to the newest revision; a file lock serialises concurrent starters."""
    if lock_file is None:
        command.upgrade(alembic_config(url), "head")
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            command.upgrade(alembic_config(url), "head")
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


async def upgrade_async(url: str, lock_file: Path | None = None) -> None:
    """`upgrade` from async code: Alembic's env runs its own event loop, so use a thread."""
    await asyncio.to_thread(upgrade, url, lock_file)
