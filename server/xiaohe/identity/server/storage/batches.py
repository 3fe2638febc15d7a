"""Bounded deletes: one batch of rows removed in one transaction, for the retention sweep.

A sweep over a large table must not hold one lock for minutes nor build one huge
transaction, so it deletes at most `limit` rows at a time: it selects the keys of
the oldest due rows (`ORDER BY`, `LIMIT`) and deletes exactly those, in the
caller's unit of work. The same statement is valid on SQLite and PostgreSQL
(`DELETE ... WHERE key IN (SELECT key ... LIMIT n)` is not, on older SQLite
builds, so the keys are read first). Run again, a batch deletes nothing more:
what was removed is no longer due.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from xiaohe.identity.server.storage.database import Database, translate_errors


async def delete_due(
    database: Database,
    table: sa.Table,
    key: sa.Column[str],
    due: ColumnElement[bool],
    order_by: sa.Column[object],
    limit: int,
) -> int:
    """Delete at most `limit` rows of `table` for which `due` holds, oldest first; how many."""
    if limit < 1:
        raise ValueError("a batch holds at least one row")
    async with database.begin() as conn:
        with translate_errors():
            keys = (
                (await conn.execute(sa.select(key).where(due).order_by(order_by, key).limit(limit)))
                .scalars()
                .all()
            )
            if not keys:
                return 0
            result = await conn.execute(sa.delete(table).where(key.in_(keys)))
    return int(result.rowcount)


async def count_due(database: Database, table: sa.Table, due: ColumnElement[bool]) -> int:
    """How many rows of `table` are due (the sweep's dry run)."""
    async with database.connect() as conn:
        value = (
            await conn.execute(sa.select(sa.func.count()).select_from(table).where(due))
        ).scalar()
    return int(value or 0)


async def delete_all_due(
    database: Database,
    table: sa.Table,
    key: sa.Column[str],
    due: ColumnElement[bool],
    order_by: sa.Column[object],
    limit: int,
) -> AsyncIterator[int]:
    """Delete every due row, `limit` per transaction; yields how many each batch removed."""
    while True:
        removed = await delete_due(database, table, key, due, order_by, limit)
        if removed:
            yield removed
        if removed < limit:
            return
