"""SQLite on the event loop: lock waits across processes never block the loop, and fail cleanly."""

from __future__ import annotations

import asyncio
import os
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


async def test_a_failed_commit_rolls_back_and_the_writer_stays_usable(db: Database) -> None:
    """A deferred foreign-key violation is found only at COMMIT: the error arrives like any
    statement's, nothing is stored, and the next transaction works."""
    async with db.begin() as conn:
        await conn.execute(
            sa.text("CREATE TABLE child (id INTEGER PRIMARY KEY, probe_id REFERENCES probe(id))")
        )

    async def orphan() -> None:
        async with db.begin() as conn:
            await conn.execute(sa.text("PRAGMA defer_foreign_keys = ON"))
            await conn.execute(sa.text("INSERT INTO child (probe_id) VALUES (42)"))
            await conn.execute(sa.text("INSERT INTO probe (who) VALUES ('undone')"))

    with pytest.raises(sa.exc.IntegrityError):
        await orphan()
    await _insert(db, "kept")
    assert await _who(db) == ["kept"]


async def test_a_result_left_half_read_does_not_hold_an_old_snapshot(db: Database) -> None:
    """Reads share one connection: an unfinished result must not pin every later read to
    the data of its time."""
    for who in ("a", "b", "c"):
        await _insert(db, who)
    async with db.connect() as conn:
        result = await conn.execute(sa.text("SELECT who FROM probe"))
        assert result.fetchone() is not None  # the rest is never read
    await _insert(db, "d")
    assert await _who(db) == ["a", "b", "c", "d"]


async def test_only_the_checkpoint_call_copies_the_log_into_the_file(
    db: Database, db_file: Path
) -> None:
    """No commit stalls the loop with a checkpoint; `checkpoint` (on a thread) does it."""
    async with db.connect() as conn:
        assert (await conn.execute(sa.text("PRAGMA wal_autocheckpoint"))).scalar() == 0
    size = await asyncio.to_thread(os.path.getsize, db_file)
    for _ in range(12):  # about 1,200 pages: past SQLite's default threshold of 1,000
        async with db.begin() as conn:
            await conn.execute(
                sa.text("INSERT INTO probe (who) VALUES (:who)"),
                [{"who": "x" * 4000} for _ in range(100)],
            )
    assert await asyncio.to_thread(os.path.getsize, db_file) == size
    await db.checkpoint()
    assert await asyncio.to_thread(os.path.getsize, db_file) > size + 4_000_000


async def test_a_checkpoint_never_creates_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    database = Database.from_url(f"sqlite:///{missing}")
    try:
        with pytest.raises(Unavailable):
            await database.checkpoint()
    finally:
        await database.close()
    assert not await asyncio.to_thread(missing.exists)
