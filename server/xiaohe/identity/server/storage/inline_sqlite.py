"""SQLite on the event loop: an aiosqlite-compatible driver without a thread per connection.

SQLAlchemy's async SQLite dialect talks to `aiosqlite`, which runs every call
(cursor, execute, fetch, commit) on a private thread and wakes the event loop
when it is done: about 0.1 ms of hand-over per call, several calls per
statement. A SQLite statement on a warm page cache takes microseconds, so the
hand-over cost dominates and the login path paid more for it than for its
queries. This module offers the same API, executing inline.

Two things could block the loop, and neither is allowed to:
- Waiting for another process's write lock. The connection's busy timeout is 0;
  a statement refused with SQLITE_BUSY had no effect, so it is retried after an
  `asyncio.sleep` (backing off to 20 ms) until `LOCK_WAIT_SECONDS` pass.
- Durable commits. WAL with `synchronous=NORMAL` appends to the log without an
  fsync per commit; only the periodic checkpoint syncs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from types import SimpleNamespace
from typing import Any, TypeVar

from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi

__version__ = "1.0"

LOCK_WAIT_SECONDS = 30.0
_FIRST_BACKOFF = 0.0005
_MAX_BACKOFF = 0.02

DatabaseError = sqlite3.DatabaseError
Error = sqlite3.Error
IntegrityError = sqlite3.IntegrityError
NotSupportedError = sqlite3.NotSupportedError
OperationalError = sqlite3.OperationalError
ProgrammingError = sqlite3.ProgrammingError
sqlite_version = sqlite3.sqlite_version
sqlite_version_info = sqlite3.sqlite_version_info

T = TypeVar("T")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text


async def _retry_busy(operation: Callable[[], T]) -> T:
    """Run a statement; while another process holds the lock, wait asynchronously and retry."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    delay = _FIRST_BACKOFF
    while True:
        try:
            return operation()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, _MAX_BACKOFF)


class _ImmediateQueue:
    """Stands in for aiosqlite's request queue, which SQLAlchemy uses to set isolation_level."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:
            future.set_exception(exc)


class Cursor:
    """An async cursor over a sqlite3 cursor."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        """Execute one statement."""
        await _retry_busy(lambda: self._cursor.execute(sql, parameters or ()))
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Cursor:
        """Execute one statement for each parameter set."""
        rows = list(parameters)
        await _retry_busy(lambda: self._cursor.executemany(sql, rows))
        return self

    async def fetchone(self) -> Any:
        """The next row."""
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to size rows."""
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        """The remaining rows."""
        return self._cursor.fetchall()

    async def close(self) -> None:
        """Close the cursor."""
        self._cursor.close()

    @property
    def description(self) -> Any:
        """Column descriptions of the last query."""
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        """Rows changed by the last statement."""
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        """The rowid of the last inserted row."""
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        """The default fetchmany size."""
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class Connection:
    """An async connection executing on the calling thread (the event loop)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection
        self._connection: sqlite3.Connection | None = connection
        self._tx = _ImmediateQueue()

    @property
    def isolation_level(self) -> str | None:
        """The driver's transaction mode (None: the caller issues BEGIN itself)."""
        return self._conn.isolation_level

    def cursor(self) -> Cursor:
        """A new cursor (also usable as `async with`)."""
        return Cursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        """Execute on a new cursor."""
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        """Commit the transaction."""
        await _retry_busy(self._conn.commit)

    async def rollback(self) -> None:
        """Roll the transaction back."""
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        """Register a SQL function."""
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        """Close at once (SQLAlchemy's terminate)."""
        if self._connection is not None:
            self._connection = None
            self._conn.close()


class _PendingConnection:
    """What `connect` returns: awaitable, with the `_thread` attribute SQLAlchemy touches."""

    def __init__(self, database: str, kwargs: dict[str, Any]) -> None:
        self._database = database
        self._kwargs = kwargs
        self._thread = SimpleNamespace(daemon=True)

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._open().__await__()

    async def _open(self) -> Connection:
        kwargs = dict(self._kwargs)
        kwargs["timeout"] = 0  # lock waits are asynchronous sleeps (_retry_busy), never blocking
        kwargs["check_same_thread"] = False
        return Connection(sqlite3.connect(self._database, **kwargs))


def connect(database: str, **kwargs: Any) -> _PendingConnection:
    """Open a connection (awaitable), like `aiosqlite.connect`."""
    return _PendingConnection(database, kwargs)


def dbapi() -> AsyncAdapt_aiosqlite_dbapi:
    """This module wrapped as the DBAPI SQLAlchemy's aiosqlite dialect expects."""
    import sys

    return AsyncAdapt_aiosqlite_dbapi(sys.modules[__name__], sqlite3)
