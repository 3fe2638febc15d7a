"""Faults injected into the real database: a table that refuses every new row.

A flow that writes to several tables must leave nothing behind when a later
write fails. These triggers make one table fail on INSERT (or UPDATE) on SQLite
and PostgreSQL alike, so a test can break a flow after its first write without
replacing any part of the code under test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa

from xiaohe.identity.server.storage.database import Database

INJECTED = "injected fault"


@asynccontextmanager
async def failing_writes(
    database: Database, table: str, operation: str = "INSERT"
) -> AsyncIterator[None]:
    """While inside, every `operation` (INSERT or UPDATE) on `table` fails."""
    name = f"xh_fault_{table}_{operation.lower()}"
    async with database.begin() as conn:
        if database.dialect == "sqlite":
            await conn.execute(
                sa.text(
                    f"CREATE TRIGGER {name} BEFORE {operation} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{INJECTED}'); END"
                )
            )
        else:
            await conn.execute(
                sa.text(
                    f"CREATE FUNCTION {name}() RETURNS trigger AS $$ "
                    f"BEGIN RAISE EXCEPTION '{INJECTED}'; END $$ LANGUAGE plpgsql"
                )
            )
            await conn.execute(
                sa.text(
                    f"CREATE TRIGGER {name} BEFORE {operation} ON {table} "
                    f"FOR EACH ROW EXECUTE FUNCTION {name}()"
                )
            )
    try:
        yield
    finally:
        async with database.begin() as conn:
            await conn.execute(
                sa.text(
                    f"DROP TRIGGER {name}"
                    + ("" if database.dialect == "sqlite" else f" ON {table}")
                )
            )
            if database.dialect != "sqlite":
                await conn.execute(sa.text(f"DROP FUNCTION {name}()"))


async def row_counts(database: Database, *tables: str) -> dict[str, int]:
    """How many rows each table holds."""
    counts: dict[str, int] = {}
    async with database.connect() as conn:
        for table in tables:
            counts[table] = int(
                (await conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}"))).scalar_one()  # noqa: S608
            )
    return counts
