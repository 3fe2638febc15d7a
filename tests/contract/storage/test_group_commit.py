"""GroupCommit on SQLite and PostgreSQL: shared transactions, one failure fails alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from xiaohe.identity.server.storage.database import Database, SqlConnection
from xiaohe.identity.server.storage.group_commit import GroupCommit
from xiaohe.identity.server.storage.schema import clients

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def insert(client_id: str) -> sa.Insert:
    return clients.insert().values(
        client_id=client_id, name=client_id, secret_hash="h", grants="", created_at=NOW
    )


async def stored(database: Database) -> set[str]:
    async with database.connect() as conn:
        return set((await conn.execute(sa.select(clients.c.client_id))).scalars())


def count_transactions(database: Database) -> list[int]:
    """A one-element list counting the transactions the database starts from now on."""
    started = [0]
    engine = database._engine.sync_engine if database._engine else database._sqlite
    assert engine is not None

    @event.listens_for(engine, "before_cursor_execute")
    def _sqlite_begin(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.startswith("BEGIN"):
            started[0] += 1

    @event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        if database.dialect == "postgresql":
            started[0] += 1

    return started


async def test_concurrent_writes_share_transactions_and_each_gets_its_result(
    database: Database,
) -> None:
    group = GroupCommit(database)
    started = count_transactions(database)

    def write(i: int):  # type: ignore[no-untyped-def]
        async def run(conn: SqlConnection) -> int:
            await conn.execute(insert(f"c{i}"))
            return i

        return run

    results = await asyncio.gather(*(group.run(write(i)) for i in range(40)))
    assert results == list(range(40))
    assert await stored(database) == {f"c{i}" for i in range(40)}
    # The first write goes alone while the others queue behind it; they share what is left.
    assert 1 <= started[0] <= 3


def inserting(client_id: str, result: str):  # type: ignore[no-untyped-def]
    async def run(conn: SqlConnection) -> str:
        await conn.execute(insert(client_id))
        return result

    return run


async def test_a_failing_write_fails_alone(database: Database) -> None:
    group = GroupCommit(database)
    await group.run(inserting("taken", "first"))
    outcomes = await asyncio.gather(
        group.run(inserting("fresh", "ok")),
        group.run(inserting("taken", "never")),
        group.run(inserting("other", "ok too")),
        return_exceptions=True,
    )
    assert outcomes[0] == "ok"
    assert isinstance(outcomes[1], sa.exc.IntegrityError)
    assert outcomes[2] == "ok too"
    assert await stored(database) == {"taken", "fresh", "other"}


def fail_next_commit(database: Database) -> None:
    """Make the database's next COMMIT raise, as when the connection drops during it."""
    armed = [True]
    engine = database._engine.sync_engine if database._engine else database._sqlite
    assert engine is not None

    def fail() -> None:
        if armed[0]:
            armed[0] = False
            raise ConnectionResetError("connection lost during COMMIT")

    @event.listens_for(engine, "before_cursor_execute")
    def _sqlite_commit(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.startswith("COMMIT"):
            fail()

    @event.listens_for(engine, "commit")
    def _commit(conn):  # type: ignore[no-untyped-def]
        if database.dialect == "postgresql":
            fail()


async def test_a_failed_commit_fails_its_batch_and_runs_no_write_again(
    database: Database,
) -> None:
    """A COMMIT that fails may have committed (the connection dropped after the server did):
    every write of that batch fails, and none is run a second time."""
    group = GroupCommit(database)
    runs: list[str] = []

    def counted(client_id: str):  # type: ignore[no-untyped-def]
        async def run(conn: SqlConnection) -> str:
            runs.append(client_id)
            await conn.execute(insert(client_id))
            return client_id

        return run

    fail_next_commit(database)
    ids = [f"c{i}" for i in range(6)]
    outcomes = await asyncio.gather(*(group.run(counted(i)) for i in ids), return_exceptions=True)
    assert sorted(runs) == ids
    failed = {i for i, outcome in zip(ids, outcomes, strict=True) if isinstance(outcome, Exception)}
    assert failed
    assert await stored(database) == set(ids) - failed


async def test_inside_a_unit_of_work_the_write_joins_it(database: Database) -> None:
    """No grouping inside a use case: the write commits or rolls back with it."""
    group = GroupCommit(database)

    async def write(conn: SqlConnection) -> None:
        await conn.execute(insert("joined"))

    async def use_case() -> None:
        async with database.begin():
            await group.run(write)
            raise RuntimeError("use case failed")

    with pytest.raises(RuntimeError, match="use case failed"):
        await use_case()
    assert await stored(database) == set()


def test_batch_size_must_be_positive(database: Database) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(database, max_batch=0)
