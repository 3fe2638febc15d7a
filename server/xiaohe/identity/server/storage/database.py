"""The SQL store: SQLite (embedded default) run inline on the event loop, or PostgreSQL, async.

Callers see one interface: `Database.begin()` yields a `SqlConnection` inside one
write transaction, `Database.connect()` one for reads, and `SqlConnection.execute`
is awaited and returns a SQLAlchemy `CursorResult`. Connection failures surface
as `Unavailable` (F2) through `translate_errors`.

SQLite runs on SQLAlchemy's *synchronous* engine with the standard `sqlite3`
driver, on the event loop thread. A statement on a warm page cache takes a few
microseconds; handing it to a thread (aiosqlite) or through SQLAlchemy's async
adaptation costs ten to forty times that, and the login path paid more for the
hand-overs than for its queries. Two things could block the loop, and neither is
allowed to:

- Waiting for another process's lock. Every worker process shares the file, in
  WAL mode (readers never block); the busy timeout is 0, and a statement refused
  with SQLITE_BUSY, which had no effect, is retried after an `asyncio.sleep`
  (backing off to 20 ms) until `LOCK_WAIT_SECONDS` pass. A write transaction
  takes the write lock up front (`BEGIN IMMEDIATE`), so it cannot fail half-way
  because another process committed in between. Within one process, writers
  queue on an asyncio lock and share one long-lived connection; reads share
  another, each SELECT on its own WAL snapshot.
- Durable commits and checkpoints. WAL with `synchronous=NORMAL` appends to the
  log without an fsync per commit. Copying the log back into the database file
  (a checkpoint, which syncs) is not left to whichever commit crosses SQLite's
  threshold: connections here never checkpoint by themselves, and the server
  calls `Database.checkpoint` (PASSIVE, on a thread of its own) every second.
  The last connection to close checkpoints too, so short-lived users (the CLI,
  tests) need nothing more.

What still runs on the loop is SQLite's own work: statements on pages in memory
take microseconds; a page read from disk takes as long as the disk does.

The unit of work. A use case that writes to several stores (an account, its
sessions, an audit record, an outbox message) opens one transaction with
`begin()` and calls the repositories it needs; each repository opens its own
`begin()` (or `connect()` to read) and so *joins* the transaction already open
in this task instead of starting another: nobody hands a connection down. The
transaction commits once, when the outermost block ends, and then runs what
was registered with `after_commit` (a message handed to the dispatcher, a
revocation published to Redis): side effects outside SQL happen only for
changes that are durable, and a failure anywhere before the commit leaves
nothing behind, neither rows nor side effects. Joining is per asyncio task: a
task started inside the block (which copies the context) opens transactions of
its own, so two coroutines never share a connection. Keep a unit of work
short and free of slow steps (Argon2, Redis, the network): on SQLite it holds
the database's single write lock, on PostgreSQL its row locks, until it ends.
A write outside SQL that must precede the commit (a document's file, which its
row names) registers its undo with `on_rollback`: it runs when the unit of work
rolls back, a cancelled call included.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, CursorResult, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable

from xiaohe.identity.server.errors import Unavailable

LOCK_WAIT_SECONDS: Final = 30.0
_FIRST_BACKOFF: Final = 0.0005
_MAX_BACKOFF: Final = 0.02

Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
"""Bound values of one statement: a mapping, or a sequence of mappings (executemany)."""

Outcome = CursorResult[*tuple[Any, ...]]
"""What a statement returns: its rows, or for a change its `rowcount`."""

T = TypeVar("T")


AfterCommit = Callable[[], Awaitable[object] | object]
"""Work to run once the use case's transaction has committed (see the module docstring)."""


class UnitOfWork(Protocol):
    """What a flow needs to make its changes atomic: `Database.begin()` and `after_commit`."""

    def begin(self) -> AbstractAsyncContextManager[SqlConnection]:
        """Open (or join) the use case's transaction."""
        ...

    async def after_commit(self, work: AfterCommit) -> None:
        """Run `work` after the open transaction commits."""
        ...

    def in_transaction(self) -> bool:
        """Whether this task has a unit of work open."""
        ...


class SqlConnection(Protocol):
    """A connection as the stores use it: awaited statements.

    Read a result's rows inside the `connect()` or `begin()` block that made it: on
    SQLite they come from a connection other coroutines share, and the block's end
    closes them.
    """

    async def execute(self, statement: Executable, parameters: Parameters = None) -> Outcome:
        """Execute one statement (or one per parameter mapping) and return its result."""
        ...


def is_sqlite(url: str) -> bool:
    """Whether a database URL names SQLite."""
    return url.startswith("sqlite")


def sqlite_engine(url: str, *, busy_timeout: float = 0.0, autocheckpoint: bool = True) -> Engine:
    """A synchronous engine on the SQLite file of `url`, with WAL, foreign keys and no fsync.

    The server uses busy_timeout 0 (lock waits are asynchronous retries) and no
    automatic checkpoints (see the module docstring); migrations, which run on
    their own thread, may block.
    """
    engine = sa.create_engine(
        make_url(url).set(drivername="sqlite+pysqlite"),
        connect_args={"timeout": busy_timeout, "check_same_thread": False},
        hide_parameters=True,  # bound values (names, login names) never reach an error text
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver: `Database.begin` issues BEGIN itself,
        # and reads run without BEGIN (each SELECT sees a consistent snapshot of its own).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # Switching to WAL takes a lock even when the file is in WAL already; ask first.
        if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        if not autocheckpoint:
            cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    return engine


STALL_SECONDS = 2.0
"""How long a connection attempt or a wait for a pooled connection may take (SECURITY F4)."""


def create_engine(
    url: str, *, pool_size: int = 10, statement_timeout_ms: int = 2000
) -> AsyncEngine:
    """An async engine for a PostgreSQL URL; `?schema=NAME` sets the search path.

    Each process keeps `pool_size` connections and opens as many again under a
    burst, so a deployment needs workers × 2 × `pool_size` connections at most.
    Every statement is cancelled by PostgreSQL after `statement_timeout_ms` (0: no
    limit): a stuck query then fails one call instead of holding a pooled
    connection and its locks until the pool runs dry. A server that answers
    nothing at all (SECURITY F4) is bounded on this side: connecting and waiting
    for a pooled connection take at most `STALL_SECONDS`, and a statement half a
    second more than its timeout; each ends as `Unavailable` (`translate_errors`).
    """
    parsed = make_url(url)
    server_settings = {"statement_timeout": str(statement_timeout_ms)}
    schema = parsed.query.get("schema")
    if isinstance(schema, str) and schema:
        # `?schema=NAME` puts every table in that PostgreSQL schema (tests use one per test).
        parsed = parsed.difference_update_query(["schema"])
        server_settings["search_path"] = schema
    connect_args: dict[str, Any] = {"server_settings": server_settings, "timeout": STALL_SECONDS}
    if statement_timeout_ms:
        connect_args["command_timeout"] = statement_timeout_ms / 1000 + 0.5
    return create_async_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=STALL_SECONDS,
        pool_pre_ping=True,
        connect_args=connect_args,
        hide_parameters=True,  # bound values (names, login names) never reach an error text
    )


QUERY_CANCELED = "57014"
"""PostgreSQL's SQLSTATE for a statement cancelled, here by `statement_timeout`."""


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn lost-connection and timed-out database errors into `Unavailable`.

    Integrity errors pass through: the caller's use case decides what they mean. A
    statement PostgreSQL cancelled at the statement timeout is the store being slow,
    never the caller's mistake, so it is `Unavailable` too.
    """
    try:
        yield
    except OperationalError as exc:
        raise Unavailable("the database is temporarily unavailable") from exc
    except PoolTimeout as exc:  # every pooled connection busy past the bound: stalled or full
        raise Unavailable("the database is temporarily unavailable") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable("the database is temporarily unavailable") from exc
        if getattr(exc.orig, "sqlstate", None) == QUERY_CANCELED:
            raise Unavailable("the database did not answer in time") from exc
        raise
    except (sqlite3.OperationalError, OSError, ConnectionError) as exc:
        raise Unavailable("the database is temporarily unavailable") from exc


def _is_busy(exc: BaseException) -> bool:
    original = exc.orig if isinstance(exc, DBAPIError) else exc
    if not isinstance(original, sqlite3.OperationalError):
        return False
    text = str(original).lower()
    return "database is locked" in text or "database is busy" in text


async def _retry_busy(operation: Callable[[], T]) -> T:
    """Run a SQLite operation; while another process holds the lock, sleep and retry."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    delay = _FIRST_BACKOFF
    while True:
        try:
            return operation()
        except (OperationalError, sqlite3.OperationalError) as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, _MAX_BACKOFF)


@dataclass
class _Transaction:
    """The unit of work open in one task: its connection and what runs after the commit."""

    connection: SqlConnection
    task: asyncio.Task[Any] | None
    after_commit: list[AfterCommit] = field(default_factory=list)
    on_rollback: list[AfterCommit] = field(default_factory=list)
    open: bool = True


_current: ContextVar[_Transaction | None] = ContextVar("xiaohe_unit_of_work", default=None)


def _joinable() -> _Transaction | None:
    """The transaction this task has open, or None (a copied context's one is not ours)."""
    tx = _current.get()
    if tx is None or not tx.open or tx.task is not asyncio.current_task():
        return None
    return tx


class _InlineConnection:
    """A synchronous SQLite connection behind the awaited interface; statements run inline.

    The connection is shared by every coroutine of the process, and a result whose rows
    are not all read keeps its statement, and so an old snapshot, open for everyone.
    So the results of one `connect()` or `begin()` block are closed when it ends.
    """

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._results: list[Outcome] = []

    async def execute(self, statement: Executable, parameters: Parameters = None) -> Outcome:
        result = await _retry_busy(lambda: self._conn.execute(statement, parameters))
        if result.returns_rows:
            self._results.append(result)
        return result

    def close_results(self) -> None:
        """Close the results of this block (those already read are closed already)."""
        for result in self._results:
            result.close()
        self._results.clear()


class _AsyncConnection:
    """An asyncio SQLAlchemy connection (PostgreSQL) behind the same interface."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._conn = connection

    async def execute(self, statement: Executable, parameters: Parameters = None) -> Outcome:
        return await self._conn.execute(statement, parameters)


class Database:
    """The SQL store; `begin()` yields a connection inside one transaction, `connect()` reads."""

    def __init__(self, url: str, *, pool_size: int = 10, statement_timeout_ms: int = 2000) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        self._sqlite: Engine | None = None
        self._engine: AsyncEngine | None = None
        if is_sqlite(url):
            self._sqlite = sqlite_engine(url, autocheckpoint=False)
        else:
            self._engine = create_engine(
                url, pool_size=pool_size, statement_timeout_ms=statement_timeout_ms
            )
        # SQLite has one writer at a time: this process's writers queue here.
        self._write_lock = asyncio.Lock()
        self._writer: Connection | None = None
        self._reader: Connection | None = None

    @classmethod
    def from_url(
        cls, url: str, *, pool_size: int = 10, statement_timeout_ms: int = 2000
    ) -> Database:
        """A Database for a SQLAlchemy URL (`sqlite://` or `postgresql+asyncpg://`).

        `pool_size` and `statement_timeout_ms` apply to PostgreSQL (see `create_engine`).
        """
        return cls(url, pool_size=pool_size, statement_timeout_ms=statement_timeout_ms)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[SqlConnection]:
        """The unit of work: joins the transaction open in this task, or opens one.

        The outermost block commits on success (then runs the `after_commit`
        work) and rolls back on error; an inner block only shares the connection.
        """
        joined = _joinable()
        if joined is not None:
            yield joined.connection
            return
        tx: _Transaction | None = None
        token: Token[_Transaction | None] | None = None
        try:
            async with self._transaction() as conn:
                tx = _Transaction(conn, asyncio.current_task())
                token = _current.set(tx)
                yield conn
        except BaseException:
            if tx is not None and tx.on_rollback:
                tx.open = False
                # Shielded: a cancelled call still removes what it wrote; a failing undo
                # is not allowed to hide the error that caused the rollback.
                with contextlib.suppress(Exception):
                    await asyncio.shield(_run_after_commit(tx.on_rollback))
            raise
        finally:
            if tx is not None:
                tx.open = False
            if token is not None:
                _current.reset(token)
        assert tx is not None
        await _run_after_commit(tx.after_commit)

    def in_transaction(self) -> bool:
        """Whether this task has a unit of work open (writes would join it)."""
        return _joinable() is not None

    def on_rollback(self, work: AfterCommit) -> None:
        """Run `work` if the open unit of work rolls back (undo a write outside SQL).

        For a side effect that must happen *before* the commit (a file the row
        names): it is compensated when the transaction fails, cancellation
        included. Outside a unit of work there is nothing to roll back: a no-op.
        """
        tx = _joinable()
        if tx is not None:
            tx.on_rollback.append(work)

    async def after_commit(self, work: AfterCommit) -> None:
        """Run `work` once the open unit of work commits (never, if it rolls back), or now."""
        tx = _joinable()
        if tx is not None:
            tx.after_commit.append(work)
            return
        await _run_after_commit([work])

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[SqlConnection]:
        """A new write transaction; committed on success, rolled back on error."""
        with translate_errors():
            if self._engine is not None:
                async with self._engine.begin() as conn:
                    yield _AsyncConnection(conn)
                return
            async with self._write_lock, self._sqlite_transaction() as conn:
                yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[SqlConnection]:
        """A connection for reads: the open unit of work's (it sees its writes), or a new one."""
        joined = _joinable()
        if joined is not None:
            yield joined.connection
            return
        with translate_errors():
            if self._engine is not None:
                async with self._engine.connect() as conn:
                    yield _AsyncConnection(conn)
                return
            if self._reader is None:
                reader = await self._sqlite_connect()
                if self._reader is None:  # another coroutine may have opened one meanwhile
                    self._reader = reader
                else:
                    reader.close()
            inline = _InlineConnection(self._reader)
            try:
                yield inline
            finally:
                inline.close_results()

    async def checkpoint(self) -> None:
        """Copy the SQLite log into the database file without waiting for anyone (PASSIVE).

        Runs on a thread with a connection of its own: it reads and writes pages
        and syncs the file, which must not stall the event loop. No-op on PostgreSQL.
        """
        if self._sqlite is None:
            return
        path = self.url.database
        if not path or path == ":memory:":
            return
        with translate_errors():
            await asyncio.to_thread(_checkpoint, path)

    async def close(self) -> None:
        """Close the connections and dispose the engine."""
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
        self._writer = self._reader = None
        if self._sqlite is not None:
            self._sqlite.dispose()
        if self._engine is not None:
            await self._engine.dispose()

    async def _sqlite_connect(self) -> Connection:
        """A new connection; its set-up may meet another process's lock like any statement."""
        engine = self._sqlite
        assert engine is not None
        return await _retry_busy(engine.connect)

    @asynccontextmanager
    async def _sqlite_transaction(self) -> AsyncIterator[SqlConnection]:
        """BEGIN IMMEDIATE on the writer connection, waiting asynchronously for other processes."""
        if self._writer is None:
            self._writer = await self._sqlite_connect()
        conn = self._writer
        inline = _InlineConnection(conn)
        try:
            await _retry_busy(lambda: conn.exec_driver_sql("BEGIN IMMEDIATE"))
            yield inline
            inline.close_results()
            # COMMIT as a statement, so that SQLITE_BUSY can be retried and other errors
            # arrive wrapped like any statement's; then end SQLAlchemy's own view of the
            # transaction (the driver has nothing left to commit).
            await _retry_busy(lambda: conn.exec_driver_sql("COMMIT"))
            conn.commit()
        except BaseException:
            inline.close_results()
            self._roll_back(conn)
            raise

    def _roll_back(self, conn: Connection) -> None:
        """Undo the writer's transaction; a connection that cannot roll back is replaced."""
        try:
            conn.rollback()
        except Exception:
            self._writer = None
            conn.invalidate()
            conn.close()


async def _run_after_commit(work: list[AfterCommit]) -> None:
    """Run every piece of after-commit work in order; the first failure is raised at the end."""
    failure: BaseException | None = None
    for item in work:
        try:
            result = item()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


def _checkpoint(path: str) -> None:
    # mode=rw: a checkpoint must never create an empty database where none exists.
    conn = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=0)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        conn.close()


def utc(ts: float) -> datetime:
    """An aware UTC datetime from epoch seconds."""
    return datetime.fromtimestamp(ts, tz=UTC)


def epoch(dt: datetime) -> float:
    """Epoch seconds from a datetime (SQLite returns naive values, taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


__all__ = [
    "AfterCommit",
    "Database",
    "Outcome",
    "Parameters",
    "SqlConnection",
    "UnitOfWork",
    "create_engine",
    "epoch",
    "is_sqlite",
    "sa",
    "sqlite_engine",
    "translate_errors",
    "utc",
]
