"""Alembic environment: runs migrations over the engine the server uses for the URL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from xiaohe.identity.server.storage.database import create_engine, is_sqlite, sqlite_engine
from xiaohe.identity.server.storage.schema import metadata

config = context.config
# Migrations run on their own thread (storage/migrate.py), so they may wait for a lock.
SQLITE_BUSY_TIMEOUT = 30.0


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _sqlite(url: str) -> None:
    engine = sqlite_engine(url, busy_timeout=SQLITE_BUSY_TIMEOUT)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()


async def _postgres(url: str) -> None:
    # No statement timeout: building an index on a large table may take minutes.
    engine = create_engine(url, pool_size=1, statement_timeout_ms=0)
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


_url = config.get_main_option("sqlalchemy.url") or ""
if is_sqlite(_url):
    _sqlite(_url)
else:
    asyncio.run(_postgres(_url))
