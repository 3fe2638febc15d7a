"""The audit log: append-only, MAC-chained records of who did what to whom (SECURITY.md I7).

Each record holds the time (UTC), the acting client and end-user account (`""`
when no user is signed in), the action, a *pseudonymous* target, the outcome and
the request id, plus the chain value of the previous record (`prev_hash`) and its
own (`hash`): HMAC-SHA256 (hex) under the chain MAC key, which is derived from
the key ring (crypto/audit_keys.py), over a canonical JSON encoding (sorted keys,
no whitespace, ASCII) of `seq`, `at` (ISO 8601, UTC, microseconds),
`actor_client`, `actor_account`, `action`, `target`, `outcome`, `request_id` and
`prev_hash`. The first record's `prev_hash` is 64 zeros; `alg` is `hmac-sha256`.

The threat is someone who can write to the database but does not hold the key
ring: a leaked database credential, an administrator covering tracks, an
injection elsewhere, an edited backup. Against a plain hash chain such a writer
changes a row and recomputes every hash after it, and the chain still verifies.
Without the MAC key no changed, inserted or reordered row can be given a valid
value, so `verify_chain` names the first row touched, whatever was recomputed.

A MAC chain cannot show that rows were cut from its *end*: what is left is a
valid prefix. So the head is anchored. Every `audit_checkpoint_seconds` each
worker signs the head (seq, MAC, time) with the ring's Ed25519 checkpoint key and
stores it in `audit_checkpoints` (audit/checkpoints.py), only when the head moved
since the newest checkpoint; workers racing for one head collide on its primary
key and the losers write nothing. Each checkpoint is also logged at INFO with its
seq and MAC, so a log store outside the database holds the anchor as well.
`verify_chain` checks every checkpoint's signature and that the chain holds that
MAC at that seq; a chain shorter than the newest checkpoint is *truncated*. A
writer who also deletes the newest checkpoints leaves an older, consistent state
that the database alone cannot tell from the truth: against that, verify with an
anchor saved from the log (`verify_chain(anchor)`, the `VerifyAuditChain` RPC,
`xiaohe-identity audit verify --anchor-seq N --anchor-mac MAC`). None of this
stands against a holder of the key ring, who can re-key the whole chain; an
anchor kept elsewhere still shows that the history before it was rewritten.

Records are kept at least six months (Cybersecurity Law Art. 21) and then pruned
from the front by the retention sweep (audit/pruning.py), never from the end. A
pruned chain starts after its *base*: a seq at which a checkpoint, signed in the
pruning transaction if none was there, holds the MAC the first kept row names as
`prev_hash`; and the kept chain holds a `audit.pruned` record, written by the
same transaction, naming that base (`through:<seq>`). A writer without the key
ring who deletes a prefix can neither sign the checkpoint nor write that record,
so `verify_chain` still names seq 1 as missing.

Rows written before migration 0002 are *legacy*: `alg = 'sha256'`, the plain
SHA-256 of the encoding above without `actor_account` (which they hold as "").
They verify only as a prefix before the first keyed row, whose MAC covers the
last legacy hash, so the prefix cannot change without breaking that row.
Rewriting the *whole* chain as legacy rows (a downgrade) is caught by any
checkpoint or anchor taken after the upgrade, and shows as a growing
`legacy_records` count, which after the upgrade must never grow.

Appending must stay linear while several worker processes write at once: the read
of the last (seq, hash) and the insert of seq + 1 happen in one write transaction
that excludes every other appender. On SQLite, `Database.begin()` is `BEGIN
IMMEDIATE`, which already takes the database's single write lock; on PostgreSQL
the transaction first takes a transaction-scoped advisory lock (a fixed key, so
all appenders of every process serialise on it, released at commit). The primary
key on `seq` is the last line of defence: a second writer with the same seq fails
instead of forking the chain.

Targets are pseudonymous ids the caller computes (an account id, a case id, a
blind index); raw personal data (phone, email, ID numbers, names) must never be
passed. `record` refuses targets (and acting accounts) that look like a phone
number, an email address or an 18-character resident ID as a guard against
mistakes, without echoing them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

import sqlalchemy as sa

from xiaohe.identity.server import context
from xiaohe.identity.server.audit.checkpoints import (
    ChainAnchor,
    Checkpoint,
    anchor_text,
    as_utc,
    canonical_json,
    checkpoint_is_valid,
    insert_checkpoint,
    iso_utc,
    load_checkpoints,
    newest_checkpoint_seq,
    sign_checkpoint,
)
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.shared.batches import Coalescer
from xiaohe.identity.server.storage.database import Database, SqlConnection, translate_errors, utc
from xiaohe.identity.server.storage.schema import audit_log

log = logging.getLogger("xiaohe.identity.audit")

GENESIS_HASH = "0" * 64
ALG_KEYED = "hmac-sha256"
ALG_LEGACY = "sha256"

# A fixed 64-bit key for pg_advisory_xact_lock: the first 8 bytes of SHA-256 of a name.
_PG_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"xiaohe.identity.audit_log").digest()[:8], "big", signed=True
)

# Built once: a hot path (every audited request) binds them without rebuilding.
_CHAIN_HEAD = sa.select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
_INSERT = audit_log.insert()

PRUNE_ACTION = "audit.pruned"
"""The action of the record a pruning batch writes; its outcome is `prune_outcome(base)`."""

_VERIFY_BATCH = 500
_MAX_BATCH = 200
_MAX_QUERY_LIMIT = 1000


def prune_outcome(base: int) -> str:
    """The outcome of the `audit.pruned` record that vouches for a chain pruned through `base`."""
    return f"through:{base}"


async def lock_appenders(conn: SqlConnection, dialect: str) -> None:
    """Exclude every other appender until this transaction ends (see the module docstring)."""
    if dialect == "postgresql":
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def _column_length(name: str) -> int:
    """The declared length of an `audit_log` string column."""
    column_type = audit_log.c[name].type
    if not isinstance(column_type, sa.String) or column_type.length is None:
        raise TypeError(f"audit_log.{name} is not a string column of bounded length")
    return column_type.length


# Column limits of the `audit_log` table, for the columns a caller gives.
_LIMITS = MappingProxyType(
    {
        name: _column_length(name)
        for name in ("actor_client", "actor_account", "action", "target", "outcome", "request_id")
    }
)

# Shapes of raw personal data that must never be an audit target. A shape counts only
# as a whole alphanumeric run, so digits inside a random hex or base32 id do not trip it.
_PHONE_SHAPE = re.compile(r"(?<![A-Za-z0-9])(?:\+?86)?1[3-9]\d{9}(?![A-Za-z0-9])")
_EMAIL_SHAPE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_ID_NUMBER_SHAPE = re.compile(r"(?<![A-Za-z0-9])\d{17}[\dXx](?![A-Za-z0-9])")


@dataclass(frozen=True)
class AuditRecord:
    """One audit record as stored; `at` is an aware UTC datetime, `hash` its chain value."""

    seq: int
    at: datetime
    actor_client: str
    action: str
    target: str
    outcome: str
    request_id: str
    prev_hash: str
    hash: str
    actor_account: str = ""
    alg: str = ALG_KEYED


@dataclass(frozen=True)
class ChainReport:
    """Result of `verify_chain`; `first_broken_seq` is 0 when every record verifies.

    `truncated`: the chain ends before the newest valid checkpoint (or the anchor),
    and `first_broken_seq` is then the first missing seq. `first_bad_checkpoint_seq`
    names the first checkpoint whose signature does not verify (forged or altered).
    `legacy_records` counts plain SHA-256 rows from before keyed MACs.
    `pruned_through` is the base of a pruned chain (0: it starts at seq 1).
    """

    intact: bool
    records_checked: int
    first_broken_seq: int
    checkpoints_checked: int = 0
    last_checkpoint_seq: int = 0
    truncated: bool = False
    first_bad_checkpoint_seq: int = 0
    legacy_records: int = 0
    pruned_through: int = 0


def _chain_body(
    *,
    seq: int,
    at: datetime,
    actor_client: str,
    actor_account: str | None,
    action: str,
    target: str,
    outcome: str,
    request_id: str,
    prev_hash: str,
) -> bytes:
    """The canonical encoding a chain value covers (see the module docstring).

    A legacy body (`actor_account` None) has no `actor_account` key at all.
    """
    body: dict[str, object] = {
        "seq": seq,
        "at": iso_utc(at),
        "actor_client": actor_client,
        "action": action,
        "target": target,
        "outcome": outcome,
        "request_id": request_id,
        "prev_hash": prev_hash,
    }
    if actor_account is not None:
        body["actor_account"] = actor_account
    return canonical_json(body)


def _record_body(rec: AuditRecord, actor_account: str | None) -> bytes:
    """The chain body of a stored record, with the given acting account (None: legacy)."""
    return _chain_body(
        seq=rec.seq,
        at=rec.at,
        actor_client=rec.actor_client,
        actor_account=actor_account,
        action=rec.action,
        target=rec.target,
        outcome=rec.outcome,
        request_id=rec.request_id,
        prev_hash=rec.prev_hash,
    )


def record_mac(
    keys: AuditKeys,
    *,
    seq: int,
    at: datetime,
    actor_client: str,
    actor_account: str,
    action: str,
    target: str,
    outcome: str,
    request_id: str,
    prev_hash: str,
) -> str:
    """The hex HMAC-SHA256 chain value of a record (see the module docstring)."""
    return keys.mac(
        _chain_body(
            seq=seq,
            at=at,
            actor_client=actor_client,
            actor_account=actor_account,
            action=action,
            target=target,
            outcome=outcome,
            request_id=request_id,
            prev_hash=prev_hash,
        )
    )


def legacy_record_hash(
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
    """The plain SHA-256 chain value of a legacy row (written before migration 0002)."""
    body = _chain_body(
        seq=seq,
        at=at,
        actor_client=actor_client,
        actor_account=None,
        action=action,
        target=target,
        outcome=outcome,
        request_id=request_id,
        prev_hash=prev_hash,
    )
    return hashlib.sha256(body).hexdigest()


def _check_personal(what: str, value: str) -> None:
    """Refuse values shaped like raw personal data; the message never repeats the value."""
    if _PHONE_SHAPE.search(value):
        raise ValueError(f"audit {what} looks like a phone number; pass a pseudonymous id")
    if _EMAIL_SHAPE.search(value):
        raise ValueError(f"audit {what} looks like an email address; pass a pseudonymous id")
    if _ID_NUMBER_SHAPE.search(value):
        raise ValueError(f"audit {what} looks like an ID number; pass a pseudonymous id")


def _check_target(target: str) -> None:
    """Refuse empty targets and targets shaped like raw personal data."""
    if not target:
        raise ValueError("audit target must not be empty")
    _check_personal("target", target)


def _check_lengths(fields: dict[str, str]) -> None:
    for name, value in fields.items():
        if len(value) > _LIMITS[name]:
            raise ValueError(f"audit {name} is longer than {_LIMITS[name]} characters")
    if not fields["action"] or not fields["outcome"]:
        raise ValueError("audit action and outcome must not be empty")


_Entry = tuple[dict[str, str], datetime]
"""A record's checked columns and its time, waiting to be chained."""


def _fields(
    action: str,
    target: str,
    outcome: str,
    actor_client: str | None,
    actor_account: str | None,
    request_id: str | None,
) -> dict[str, str]:
    """The caller-given columns of one record, checked; actors and request id from the context."""
    ctx = context.current()
    fields = {
        "actor_client": ctx.client_id if actor_client is None else actor_client,
        "actor_account": ctx.account_id if actor_account is None else actor_account,
        "action": action,
        "target": target,
        "outcome": outcome,
        "request_id": ctx.request_id if request_id is None else request_id,
    }
    _check_target(target)
    _check_personal("actor account", fields["actor_account"])
    _check_lengths(fields)
    return fields


def _row_to_record(row: sa.Row[tuple[object, ...]]) -> AuditRecord:
    m = row._mapping
    return AuditRecord(
        seq=int(m["seq"]),
        at=as_utc(m["at"]),
        actor_client=str(m["actor_client"]),
        action=str(m["action"]),
        target=str(m["target"]),
        outcome=str(m["outcome"]),
        request_id=str(m["request_id"]),
        prev_hash=str(m["prev_hash"]),
        hash=str(m["hash"]),
        actor_account=str(m["actor_account"]),
        alg=str(m["alg"]),
    )


class AuditLog:
    """Appends to, reads, checkpoints and verifies the MAC-chained audit log; no update or delete.

    `record` commits in groups: concurrent callers of one process are written
    together in one transaction (one lock, one read of the chain head, one insert
    of many rows) and each caller returns only after its record is committed.
    Under load that turns a serialised write per audited request into one per
    batch, without weakening durability.
    """

    def __init__(self, database: Database, clock: Clock, keys: AuditKeys) -> None:
        self._db = database
        self._clock = clock
        self._keys = keys
        self._appends: Coalescer[_Entry, int] = Coalescer(self._append_batch, _MAX_BATCH)

    async def record(
        self,
        action: str,
        target: str,
        outcome: str,
        *,
        actor_client: str | None = None,
        actor_account: str | None = None,
        request_id: str | None = None,
    ) -> int:
        """Append one record; returns its seq.

        Inside a unit of work (`Database.begin()` open in this task) the record is
        part of that transaction: it commits with the change it describes, or not
        at all. Otherwise it is group-committed with concurrent records of this
        process. `target` must already be pseudonymous (see the module docstring);
        the actors and request id default to the current request context.
        """
        entry = (
            _fields(action, target, outcome, actor_client, actor_account, request_id),
            utc(self._clock.now()),
        )
        if self._db.in_transaction():
            async with self._db.begin() as conn:
                (seq,) = await self._append(conn, [entry])
            return seq
        return await self._appends.submit(entry)

    async def _append_batch(self, entries: list[_Entry]) -> list[int]:
        """Append a batch of concurrent records in one transaction of its own, all or none.

        Not in the process's group commit: on PostgreSQL the appenders' lock would
        then be held while that transaction's other writes run, and a failed
        transaction there is retried write by write, which could append a batch
        whose COMMIT had gone through a second time.
        """
        async with self._db.begin() as conn:
            return await self._append(conn, entries)

    async def _append(self, conn: SqlConnection, entries: list[_Entry]) -> list[int]:
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
                mac = record_mac(self._keys, seq=seq, at=at, prev_hash=prev_hash, **fields)
                rows.append(
                    {
                        "seq": seq,
                        "at": at,
                        "prev_hash": prev_hash,
                        "hash": mac,
                        "alg": ALG_KEYED,
                        **fields,
                    }
                )
                seqs.append(seq)
                prev_hash = mac
            await conn.execute(_INSERT, rows)
        return seqs

    async def checkpoint(self) -> Checkpoint | None:
        """Sign and store the chain head if it moved since the newest checkpoint, else None.

        Every worker runs this periodically. Two workers that read the same head
        race to insert the same seq; the primary key keeps one and the other gets
        None. A head at or below the newest checkpoint is never signed, so a chain
        cut short stays reported as truncated. A stored checkpoint is logged at INFO
        (seq and MAC, both pseudonymous) so that a log store outside the database
        holds an anchor.
        """
        async with self._db.connect() as conn:
            head = (await conn.execute(_CHAIN_HEAD)).first()
            newest = await newest_checkpoint_seq(conn)
        if head is None or int(head.seq) <= newest:
            return None
        signed = sign_checkpoint(self._keys, int(head.seq), str(head.hash), utc(self._clock.now()))
        if not await insert_checkpoint(self._db, signed):
            return None
        log.info(
            "audit checkpoint seq=%d mac=%s",
            signed.seq,
            anchor_text(signed.mac),
            extra={"audit_checkpoint": {"seq": signed.seq, "key_id": signed.key_id}},
        )
        return signed

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

    def _chain_value(self, rec: AuditRecord, keyed_seen: bool) -> str | None:
        """What `rec.hash` must be, or None when the row may not be of its `alg` here."""
        if rec.alg == ALG_KEYED:
            return self._keys.mac(_record_body(rec, rec.actor_account))
        # A legacy row is accepted only before the first keyed one, and its hash does
        # not cover an acting account, so it must not claim one.
        if rec.alg == ALG_LEGACY and not keyed_seen and not rec.actor_account:
            return hashlib.sha256(_record_body(rec, None)).hexdigest()
        return None

    async def verify_chain(self, anchor: ChainAnchor | None = None) -> ChainReport:
        """Check every record, every link, every checkpoint and, if given, an external anchor.

        Records are read in seq order; each must follow its predecessor's seq and
        chain value and carry the MAC of its own fields (legacy SHA-256 rows only
        before the first keyed row). Each checkpoint must carry this ring's valid
        signature, and the chain must hold the checkpoint's MAC at its seq; so must
        it hold the anchor's. `first_broken_seq` is the lowest seq at which that
        fails (a changed row's own seq, the seq missing where a row was removed, a
        row whose `prev_hash` does not match, or a checkpointed or anchored seq whose
        MAC differs); `records_checked` counts the rows read, including the broken
        one. A chain that verifies but ends before the newest valid checkpoint or
        the anchor is `truncated`, and its first missing seq is `first_broken_seq`.
        """
        checkpoints = await load_checkpoints(self._db)
        signed: dict[int, str] = {}
        first_bad = 0
        for cp in checkpoints:
            if checkpoint_is_valid(self._keys, cp):
                signed[cp.seq] = cp.mac
            elif first_bad == 0:
                first_bad = cp.seq
        last_signed = max(signed, default=0)

        base = 0
        pruned_records: set[str] = set()

        def report(records: int, broken: int, legacy: int, truncated: bool = False) -> ChainReport:
            return ChainReport(
                pruned_through=base,
                intact=broken == 0 and first_bad == 0,
                records_checked=records,
                first_broken_seq=broken,
                checkpoints_checked=len(checkpoints),
                last_checkpoint_seq=last_signed,
                truncated=truncated,
                first_bad_checkpoint_seq=first_bad,
                legacy_records=legacy,
            )

        anchored = {} if anchor is None else {anchor.seq: anchor.mac}
        expected_seq = 1
        prev_hash = GENESIS_HASH
        checked = legacy = 0
        keyed_seen = False
        async for batch in self._batches():
            for rec in batch:
                checked += 1
                if checked == 1 and rec.seq > 1 and (rec.seq - 1) in signed:
                    # A pruned chain: it starts after a signed base (checked for its
                    # `audit.pruned` record once the whole chain was read).
                    base = expected_seq = rec.seq - 1
                    prev_hash = signed[base]
                    expected_seq += 1
                if rec.seq != expected_seq:
                    return report(checked, expected_seq, legacy)
                if rec.action == PRUNE_ACTION:
                    pruned_records.add(rec.outcome)
                value = self._chain_value(rec, keyed_seen)
                verifies = (
                    value is not None
                    and _same(value, rec.hash)
                    and _same(prev_hash, rec.prev_hash)
                    and _same(signed.get(rec.seq, rec.hash), rec.hash)
                    and _same(anchored.get(rec.seq, rec.hash), rec.hash)
                )
                if not verifies:
                    return report(checked, rec.seq, legacy)
                if rec.alg == ALG_LEGACY:
                    legacy += 1
                else:
                    keyed_seen = True
                prev_hash = rec.hash
                expected_seq += 1
        if base and prune_outcome(base) not in pruned_records:
            # No record the key holder wrote vouches for the cut: rows 1.. are missing.
            return report(checked, 1, legacy)
        if (
            base
            and anchor is not None
            and anchor.seq == base
            and not _same(signed[base], anchor.mac)
        ):
            # An anchor older than the base was pruned with its rows; one at the base is checked.
            return report(checked, base, legacy)
        head = expected_seq - 1
        needed = max(last_signed, anchor.seq if anchor is not None else 0)
        if needed > head:
            return report(checked, head + 1, legacy, truncated=True)
        return report(checked, 0, legacy)

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

    # -- issue 14: export --
    async def concerning(
        self, account_id: str, targets: Sequence[str] = (), limit: int = 10_000
    ) -> list[AuditRecord]:
        """Records the account acted in, or whose target is the account or one of `targets`
        (its sessions, documents ...), oldest first, at most `limit` (the newest ones)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        wanted = {account_id, *targets}
        stmt = (
            sa.select(audit_log)
            .where(
                sa.or_(
                    audit_log.c.actor_account == account_id,
                    audit_log.c.target.in_(sorted(wanted)),
                )
            )
            .order_by(audit_log.c.seq.desc())
            .limit(limit)
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_row_to_record(r) for r in reversed(rows)]

    # -- end export --


def _same(expected: str, stored: str) -> bool:
    """Constant-time equality of two chain values (stored ones may hold anything)."""
    return hmac.compare_digest(expected.encode(), stored.encode())


__all__ = [
    "ALG_KEYED",
    "ALG_LEGACY",
    "GENESIS_HASH",
    "PRUNE_ACTION",
    "AuditLog",
    "AuditRecord",
    "ChainAnchor",
    "ChainReport",
    "legacy_record_hash",
    "lock_appenders",
    "prune_outcome",
    "record_mac",
]
