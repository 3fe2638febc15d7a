"""The migrations build the same schema on SQLite and PostgreSQL, and are idempotent."""

from __future__ import annotations

import sqlalchemy as sa

from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.migrate import upgrade_async
from xiaohe.identity.server.storage.schema import metadata


async def test_all_tables_exist_after_upgrade(database: Database, database_url: str) -> None:
    if database.dialect == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        query = (
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    async with database.connect() as conn:
        names = {str(r[0]) for r in await conn.execute(sa.text(query))}
    assert set(metadata.tables) <= names
    assert "alembic_version" in names
    await upgrade_async(database_url)  # a second run changes nothing and does not fail
    async with database.connect() as conn:
        version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
    assert version is not None
