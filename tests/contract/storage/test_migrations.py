"""The migrations build the same schema on SQLite and PostgreSQL, and are idempotent."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from xiaohe.identity.server.storage.database import Database, create_engine, sqlite_engine
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


def _schema_diffs(conn: Connection) -> list[object]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


async def test_the_migrations_build_exactly_the_declared_schema(
    database: Database, database_url: str
) -> None:
    """The schema is written twice (storage/schema.py and the Alembic migrations); they agree
    table by table and column by column (types, nullability, defaults, indexes, keys)."""
    if database.dialect == "sqlite":
        engine = sqlite_engine(database_url)
        try:
            with engine.connect() as conn:
                diffs = _schema_diffs(conn)
        finally:
            engine.dispose()
    else:
        async_engine = create_engine(database_url)
        try:
            async with async_engine.connect() as conn:
                diffs = await conn.run_sync(_schema_diffs)
        finally:
            await async_engine.dispose()
    assert diffs == []
