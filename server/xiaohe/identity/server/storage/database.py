"""The SQL engine: SQLite (embedded default) or PostgreSQL, async, with the pragmas SQLite needs.

Every worker process shares the SQLite file, so it runs in WAL mode with a busy
timeout; writers are serialised by SQLite, readers never block. Connection
failures surface as `Unavailable` (F2) through `translate_errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.storage import inline_sqlite


def create_engine(url: str) -> AsyncEngine:
    """An async engine for the URL; SQLite gets WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        # The inline driver (storage/inline_sqlite.py) replaces aiosqlite's thread per
        # connection; it waits for other processes' locks without blocking the loop.
        engine = create_async_engine(url, module=inline_sqlite.dbapi())

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from the driver so `begin` below decides the mode.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers take the lock up front: a deferred read-then-write transaction can fail
            # with SQLITE_BUSY when another worker process committed in between.
            # Reads run without BEGIN: each SELECT sees a consistent WAL snapshot of its own.
            if conn.get_execution_options().get("xh_write", False):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    schema = parsed.query.get("schema")
    if isinstance(schema, str) and schema:
        # `?schema=NAME` puts every table in that PostgreSQL schema (tests use one per test).
        parsed = parsed.difference_update_query(["schema"])
        connect_args["server_settings"] = {"search_path": schema}
    return create_async_engine(
        parsed, pool_size=10, max_overflow=10, pool_pre_ping=True, connect_args=connect_args
    )


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn lost-connection database errors into `Unavailable`; integrity errors pass through."""
    try:
        yield
    except OperationalError as exc:
        raise Unavailable("the database is temporarily unavailable") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable("the database is temporarily unavailable") from exc
        raise
    except (OSError, ConnectionError) as exc:
        raise Unavailable("the database is temporarily unavailable") from exc


class Database:
    """Owns the engine; `begin()` yields a connection inside one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = engine.execution_options(xh_write=True)
        # SQLite has one writer at a time. This process's writers queue on a lock and share
        # one long-lived connection (no pool checkout per write); other processes' writers
        # are waited for by the driver's asynchronous retry (storage/inline_sqlite.py).
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.dialect == "sqlite" else None
        self._write_conn: AsyncConnection | None = None

    @classmethod
    def from_url(cls, url: str) -> Database:
        """A Database for a SQLAlchemy URL."""
        return cls(create_engine(url))

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; committed on success, rolled back on error."""
        with translate_errors():
            if self._write_lock is None:
                async with self._writer.begin() as conn:
                    yield conn
                return
            async with self._write_lock:
                if self._write_conn is None:
                    self._write_conn = await self._writer.connect()
                conn = self._write_conn
                try:
                    async with conn.begin():
                        yield conn
                except BaseException:
                    if conn.invalidated:
                        self._write_conn = None
                        await conn.close()
                    raise

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection without an explicit transaction (reads)."""
        with translate_errors():
            async with self.engine.connect() as conn:
                yield conn

    async def close(self) -> None:
        """Close the writer connection and dispose the pool."""
        if self._write_conn is not None:
            await self._write_conn.close()
            self._write_conn = None
        await self.engine.dispose()


def utc(ts: float) -> datetime:
    """An aware UTC datetime from epoch seconds."""
    return datetime.fromtimestamp(ts, tz=UTC)


def epoch(dt: datetime) -> float:
    """Epoch seconds from a datetime (SQLite returns naive values, taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


__all__ = ["Database", "create_engine", "epoch", "sa", "translate_errors", "utc"]
