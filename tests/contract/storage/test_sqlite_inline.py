"""SQLite on the event loop: lock waits across processes never block the loop, and fail cleanly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.storage import database as database_module
from xiaohe.identity.server.storage.database import Database

# Another worker process: takes the write lock, says so, holds it, then commits a row.
_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO probe (who) VALUES ('other process')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


HoldLock = Callable[[float], subprocess.Popen[str]]


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "identity.db"


@pytest.fixture
async def db(db_file: Path) -> AsyncIterator[Database]:
    database = Database.from_url(f"sqlite:///{db_file}")
    async with database.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE probe (id INTEGER PRIMARY KEY, who TEXT)"))
    yield database
    await database.close()


@pytest.fixture
def hold_lock(db_file: Path) -> Iterator[HoldLock]:
    """Start a process that holds the write lock for a while; returns once it holds it."""
    procs: list[subprocess.Popen[str]] = []

    def start(seconds: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(db_file), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.wait(timeout=10)


async def _insert(db: Database, who: str) -> None:
    async with db.begin() as conn:
        await conn.execute(sa.text("INSERT INTO probe (who) VALUES (:who)"), {"who": who})


async def _who(db: Database) -> list[str]:
    async with db.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT who FROM probe ORDER BY id"))).all()
    return [str(r.who) for r in rows]


async def test_a_writer_waits_for_another_process_while_the_loop_runs(
    db: Database, hold_lock: HoldLock
) -> None:
    hold_lock(0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        # A read is not blocked by the other process's open write transaction.
        assert await _who(db) == []
        async with db.begin() as conn:
            await conn.execute(sa.text("INSERT INTO probe (who) VALUES ('this process')"))
    finally:
        ticking.cancel()
    assert ticks >= 10  # the loop kept running while the write waited for the lock
    assert await _who(db) == ["other process", "this process"]


async def test_a_lock_held_too_long_is_unavailable_and_writes_nothing(
    db: Database, hold_lock: HoldLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "LOCK_WAIT_SECONDS", 0.2)
    hold_lock(1.0)
    with pytest.raises(Unavailable):
        await _insert(db, "this process")
    await asyncio.sleep(1.0)
    async with db.begin() as conn:  # the writer connection is usable again
        await conn.execute(sa.text("INSERT INTO probe (who) VALUES ('later')"))
    assert await _who(db) == ["other process", "later"]


async def test_an_error_inside_a_transaction_rolls_it_back(db: Database) -> None:
    async def failing_write() -> None:
        async with db.begin() as conn:
            await conn.execute(sa.text("INSERT INTO probe (who) VALUES ('undone')"))
            raise RuntimeError("caller failed")

    with pytest.raises(RuntimeError):
        await failing_write()
    async with db.begin() as conn:
        await conn.execute(sa.text("INSERT INTO probe (who) VALUES ('kept')"))
    assert await _who(db) == ["kept"]


async def test_writes_of_one_process_are_serialised(db: Database) -> None:
    async def write(i: int) -> None:
        async with db.begin() as conn:
            count = (await conn.execute(sa.text("SELECT count(*) FROM probe"))).scalar_one()
            await asyncio.sleep(0)  # another writer would interleave here without the lock
            await conn.execute(
                sa.text("INSERT INTO probe (who) VALUES (:who)"), {"who": str(count)}
            )

    await asyncio.gather(*(write(i) for i in range(20)))
    assert await _who(db) == [str(i) for i in range(20)]
