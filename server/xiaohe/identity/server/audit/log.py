"""The audit log: append-only, hash-chained records of who did what to whom (SECURITY.md I7).

Each record holds the time (UTC), the acting client, the action, a *pseudonymous*
target, the outcome and the request id, plus the hash of the previous record and
its own hash: SHA-256 (hex) over a canonical JSON encoding (sorted keys, no
whitespace, ASCII) of `seq`, `at` (ISO 8601, UTC, microseconds), `actor_client`,
`action`, `target`, `outcome`, `request_id` and `prev_hash`. The first record's
`prev_hash` is 64 zeros. Changing, inserting or removing a row in the middle
breaks the chain at that row, which `verify_chain` reports.

Appending must stay linear while several worker processes write at once: the read
of the last (seq, hash) and the insert of seq + 1 happen in one write transaction
that excludes every other appender. On SQLite, `Database.begin()` is `BEGIN
IMMEDIATE`, which already takes the database's single write lock; on PostgreSQL
the transaction first takes a transaction-scoped advisory lock (a fixed key, so
all appenders of every process serialise on it, released at commit). The primary
key on `seq` is the last line of defence: a second writer with the same seq fails
instead of forking the chain.

What the chain cannot show on its own: rows removed from the *end* (the head is
simply shorter). Operators who need that should export the head hash
(`AuditRecord.hash` of the last record) to a separate store periodically.

Targets are pseudonymous ids the caller computes (an account id, a case id, a
blind index); raw personal data (phone, email, ID numbers, names) must never be
passed. `record` refuses targets that look like a phone number, an email address
or an 18-character resident ID as a guard against mistakes, without echoing them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType

import sqlalchemy as sa

from xiaohe.identity.server import context
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.storage.database import Database, SqlConnection, translate_errors, utc
from xiaohe.identity.server.storage.schema import audit_log

GENESIS_HASH = "0" * 64

# A fixed 64-bit key for pg_advisory_xact_lock: the first 8 bytes of SHA-256 of a name.
_PG_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"xiaohe.identity.audit_log").digest()[:8], "big", signed=True
)

# Built once: a hot path (every audited request) binds them without rebuilding.
_CHAIN_HEAD = sa.select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
_INSERT = audit_log.insert()

_VERIFY_BATCH = 500
_MAX_BATCH = 200
_MAX_QUERY_LIMIT = 1000

# Column limits of the `audit_log` table.
_LIMITS = MappingProxyType(
    {"actor_client": 64, "action": 100, "target": 100, "outcome": 50, "request_id": 64}
)

# Shapes of raw personal data that must never be an audit target. A shape counts only
# as a whole alphanumeric run, so digits inside a random hex or base32 id do not trip it.
_PHONE_SHAPE = re.compile(r"(?<![A-Za-z0-9])(?:\+?86)?1[3-9]\d{9}(?![A-Za-z0-9])")
_EMAIL_SHAPE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_ID_NUMBER_SHAPE = re.compile(r"(?<![A-Za-z0-9])\d{17}[\dXx](?![A-Za-z0-9])")


@dataclass(frozen=True)
class AuditRecord:
    """One audit record as stored; `at` is an aware UTC datetime."""

    seq: int
    at: datetime
    actor_client: str
    action: str
    target: str
    outcome: str
    request_id: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainReport:
    """Result of `verify_chain`; `first_broken_seq` is 0 when the chain is intact."""

    intact: bool
    records_checked: int
    first_broken_seq: int


def _as_utc(value: datetime) -> datetime:
    """An aware UTC datetime (SQLite hands back naive values, which are UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def record_hash(
    *,
    seq: int,
    at: datetime,
    actor_client: str,
    action: str,
    target: str,
    outcome: str,
    request_id: str,
    prev_hash: str,
) -> str:
    """The SHA-256 hex digest of a record's canonical encoding (see the module docstring)."""
    canonical = json.dumps(
        {
            "seq": seq,
            "at": _as_utc(at).isoformat(timespec="microseconds"),
            "actor_client": actor_client,
            "action": action,
            "target": target,
            "outcome": outcome,
            "request_id": request_id,
            "prev_hash": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _check_target(target: str) -> None:
    """Refuse targets shaped like raw personal data; the message never repeats the value."""
    if not target:
        raise ValueError("audit target must not be empty")
    if _PHONE_SHAPE.search(target):
        raise ValueError("audit target looks like a phone number; pass a pseudonymous id")
    if _EMAIL_SHAPE.search(target):
        raise ValueError("audit target looks like an email address; pass a pseudonymous id")
    if _ID_NUMBER_SHAPE.search(target):
        raise ValueError("audit target looks like an ID number; pass a pseudonymous id")


def _check_lengths(fields: dict[str, str]) -> None:
    for name, value in fields.items():
        if len(value) > _LIMITS[name]:
            raise ValueError(f"audit {name} is longer than {_LIMITS[name]} characters")
    if not fields["action"] or not fields["outcome"]:
        raise ValueError("audit action and outcome must not be empty")


@dataclass
class _Pending:
    fields: dict[str, str]
    at: datetime
    done: asyncio.Future[int]


def _fields(
    action: str, target: str, outcome: str, actor_client: str | None, request_id: str | None
) -> dict[str, str]:
    """The caller-given columns of one record, checked; actor and request id from the context."""
    ctx = context.current()
    fields = {
        "actor_client": ctx.client_id if actor_client is None else actor_client,
        "action": action,
        "target": target,
        "outcome": outcome,
        "request_id": ctx.request_id if request_id is None else request_id,
    }
    _check_target(target)
    _check_lengths(fields)
    return fields


def _row_to_record(row: sa.Row[tuple[object, ...]]) -> AuditRecord:
    m = row._mapping
    return AuditRecord(
        seq=int(m["seq"]),
        at=_as_utc(m["at"]),
        actor_client=str(m["actor_client"]),
        action=str(m["action"]),
        target=str(m["target"]),
        outcome=str(m["outcome"]),
        request_id=str(m["request_id"]),
        prev_hash=str(m["prev_hash"]),
        hash=str(m["hash"]),
    )


class AuditLog:
    """Appends to, reads and verifies the hash-chained audit log. There is no update or delete.

    `record` commits in groups: concurrent callers of one process are written
    together in one transaction (one lock, one read of the chain head, one insert
    of many rows) and each caller returns only after its record is committed.
    Under load that turns a serialised write per audited request into one per
    batch, without weakening durability.
    """

    def __init__(self, database: Database, clock: Clock) -> None:
        self._db = database
        self._clock = clock
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    async def record(
        self,
        action: str,
        target: str,
        outcome: str,
        *,
        actor_client: str | None = None,
        request_id: str | None = None,
    ) -> int:
        """Append one record (group-committed with concurrent ones); returns its seq.

        `target` must already be pseudonymous (see the module docstring); the actor
        and request id default to the current request context.
        """
        fields = _fields(action, target, outcome, actor_client, request_id)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(fields, utc(self._clock.now()), done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(done)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
            try:
                async with self._db.begin() as conn:
                    seqs = await self._append(conn, [(p.fields, p.at) for p in batch])
            except Exception as exc:
                for p in batch:
                    if not p.done.done():
                        p.done.set_exception(exc)
                continue
            for p, seq in zip(batch, seqs, strict=True):
                if not p.done.done():
                    p.done.set_result(seq)

    async def record_in(
        self,
        conn: SqlConnection,
        action: str,
        target: str,
        outcome: str,
        *,
        actor_client: str | None = None,
        request_id: str | None = None,
    ) -> int:
        """Append one record inside the caller's write transaction (from `Database.begin()`).

        Use it when the audited change and its record must commit together. On
        PostgreSQL this holds the audit lock until the caller's transaction ends,
        so keep that transaction short.
        """
        fields = _fields(action, target, outcome, actor_client, request_id)
        (seq,) = await self._append(conn, [(fields, utc(self._clock.now()))])
        return seq

    async def _append(
        self, conn: SqlConnection, entries: list[tuple[dict[str, str], datetime]]
    ) -> list[int]:
        """Chain and insert entries in order under the appenders' lock; returns their seqs."""
        with translate_errors():
            if self._db.dialect == "postgresql":
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY}
                )
            last = (await conn.execute(_CHAIN_HEAD)).first()
            seq = 0 if last is None else int(last.seq)
            prev_hash = GENESIS_HASH if last is None else str(last.hash)
            rows: list[dict[str, object]] = []
            seqs: list[int] = []
            for fields, at in entries:
                seq += 1
                digest = record_hash(seq=seq, at=at, prev_hash=prev_hash, **fields)
                rows.append(
                    {"seq": seq, "at": at, "prev_hash": prev_hash, "hash": digest, **fields}
                )
                seqs.append(seq)
                prev_hash = digest
            await conn.execute(_INSERT, rows)
        return seqs

    async def _batches(self) -> AsyncIterator[list[AuditRecord]]:
        """All records in seq order, a batch per short read (keyset pagination)."""
        after = 0
        while True:
            async with self._db.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.select(audit_log)
                        .where(audit_log.c.seq > after)
                        .order_by(audit_log.c.seq)
                        .limit(_VERIFY_BATCH)
                    )
                ).all()
            if not rows:
                return
            batch = [_row_to_record(r) for r in rows]
            yield batch
            after = batch[-1].seq

    async def verify_chain(self) -> ChainReport:
        """Recompute every hash and check every link and the seq continuity, in seq order.

        `first_broken_seq` is the lowest seq at which the chain stops verifying: a
        changed row's own seq, the seq that is missing where a row was removed, or
        the seq of a row whose `prev_hash` does not match its predecessor.
        `records_checked` counts the rows read, including the broken one.
        """
        expected_seq = 1
        prev_hash = GENESIS_HASH
        checked = 0
        async for batch in self._batches():
            for rec in batch:
                checked += 1
                if rec.seq != expected_seq:
                    return ChainReport(False, checked, expected_seq)
                recomputed = record_hash(
                    seq=rec.seq,
                    at=rec.at,
                    actor_client=rec.actor_client,
                    action=rec.action,
                    target=rec.target,
                    outcome=rec.outcome,
                    request_id=rec.request_id,
                    prev_hash=rec.prev_hash,
                )
                if rec.prev_hash != prev_hash or recomputed != rec.hash:
                    return ChainReport(False, checked, rec.seq)
                prev_hash = rec.hash
                expected_seq += 1
        return ChainReport(True, checked, 0)

    async def query(
        self, since: float | None = None, action: str | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        """Records at or after `since` (epoch seconds), optionally of one action, oldest first."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        stmt = sa.select(audit_log).order_by(audit_log.c.seq).limit(min(limit, _MAX_QUERY_LIMIT))
        if since is not None:
            stmt = stmt.where(audit_log.c.at >= utc(since))
        if action is not None:
            stmt = stmt.where(audit_log.c.action == action)
        async with self._db.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_row_to_record(r) for r in rows]


__all__ = ["GENESIS_HASH", "AuditLog", "AuditRecord", "ChainReport", "record_hash"]
