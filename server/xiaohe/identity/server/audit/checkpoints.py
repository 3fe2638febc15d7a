"""Signed checkpoints of the audit chain's head, and external anchors (see audit/log.py).

A checkpoint is the pair (seq, MAC) of the chain head at one moment, with the
time, signed with the ring's Ed25519 checkpoint key (crypto/audit_keys.py) over

    b"xiaohe-identity audit checkpoint v1\\n" + JSON{"at", "key_id", "mac", "seq"}

(sorted keys, no whitespace, ASCII; `at` ISO 8601 UTC with microseconds). The
signature, rather than another MAC, lets anyone holding only the public key check
a checkpoint. The table's primary key is `seq`: workers that sign the same head at
once collide there and all but one write nothing.

An *anchor* is a (seq, MAC) pair kept outside the database, normally copied from
the INFO line each checkpoint logs. The MAC is logged in groups of eight hex
digits (`anchor_text`): the log redaction masks long hex runs as secrets and
eleven-digit runs as phone numbers, and neither fits in a group.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument
from xiaohe.identity.server.storage.database import Database, SqlConnection
from xiaohe.identity.server.storage.schema import audit_checkpoints

_DOMAIN = b"xiaohe-identity audit checkpoint v1\n"
_MAC_SHAPE = re.compile(r"[0-9a-f]{64}")
_ANCHOR_SEPARATORS = re.compile(r"[\s:]")
_GROUP = 8

_NEWEST_SEQ = sa.select(sa.func.max(audit_checkpoints.c.seq))
_ALL = sa.select(audit_checkpoints).order_by(audit_checkpoints.c.seq)


@dataclass(frozen=True)
class Checkpoint:
    """One signed checkpoint: the chain held `mac` at `seq` at time `at` (aware UTC)."""

    seq: int
    mac: str
    at: datetime
    key_id: str
    signature: str


@dataclass(frozen=True)
class ChainAnchor:
    """A (seq, MAC) pair saved outside the database; `verify_chain` checks the chain holds it."""

    seq: int
    mac: str

    @classmethod
    def parse(cls, seq: int, mac: str) -> ChainAnchor:
        """An anchor from operator input (colons and spaces in the MAC ignored); InvalidArgument."""
        compact = _ANCHOR_SEPARATORS.sub("", mac).lower()
        violations = []
        if seq < 1:
            violations.append(FieldViolation("anchor.seq", "must be at least 1"))
        if not _MAC_SHAPE.fullmatch(compact):
            violations.append(FieldViolation("anchor.mac", "must be 64 hex digits"))
        if violations:
            raise InvalidArgument(violations)
        return cls(seq, compact)


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime (SQLite hands back naive values, which are UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_utc(at: datetime) -> str:
    """`at` in ISO 8601, UTC, with microseconds: how signed and chained bodies spell a time."""
    return as_utc(at).isoformat(timespec="microseconds")


def canonical_json(body: dict[str, object]) -> bytes:
    """The canonical encoding of a signed or chained body: sorted keys, no whitespace, ASCII."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def checkpoint_message(seq: int, mac: str, at: datetime, key_id: str) -> bytes:
    """The exact bytes a checkpoint signature covers (see the module docstring)."""
    return _DOMAIN + canonical_json({"seq": seq, "mac": mac, "at": iso_utc(at), "key_id": key_id})


def sign_checkpoint(keys: AuditKeys, seq: int, mac: str, at: datetime) -> Checkpoint:
    """A checkpoint of (seq, mac) at `at`, signed with the ring's checkpoint key."""
    signature = keys.sign(checkpoint_message(seq, mac, at, keys.key_id))
    return Checkpoint(seq, mac, at, keys.key_id, signature.hex())


def checkpoint_is_valid(keys: AuditKeys, checkpoint: Checkpoint) -> bool:
    """Whether the checkpoint's signature is this ring's, over exactly its stored fields."""
    try:
        signature = bytes.fromhex(checkpoint.signature)
    except ValueError:
        return False
    message = checkpoint_message(checkpoint.seq, checkpoint.mac, checkpoint.at, checkpoint.key_id)
    return keys.verify(checkpoint.key_id, signature, message)


def anchor_text(mac: str) -> str:
    """The MAC as logged: groups of eight hex digits joined by colons (survives log redaction)."""
    return ":".join(mac[i : i + _GROUP] for i in range(0, len(mac), _GROUP))


async def newest_checkpoint_seq(conn: SqlConnection) -> int:
    """The seq of the newest stored checkpoint, 0 when there is none."""
    value = (await conn.execute(_NEWEST_SEQ)).scalar()
    return 0 if value is None else int(value)


async def insert_checkpoint(database: Database, checkpoint: Checkpoint) -> bool:
    """Store a checkpoint; False (nothing written) when one for that seq exists already."""
    insert = postgresql.insert if database.dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(audit_checkpoints)
        .values(
            seq=checkpoint.seq,
            mac=checkpoint.mac,
            at=checkpoint.at,
            key_id=checkpoint.key_id,
            signature=checkpoint.signature,
        )
        .on_conflict_do_nothing(index_elements=["seq"])
    )
    async with database.begin() as conn:
        inserted = (await conn.execute(stmt)).rowcount == 1
    return inserted


async def load_checkpoints(database: Database) -> list[Checkpoint]:
    """Every stored checkpoint, oldest first (one per checkpointed head: a small table)."""
    async with database.connect() as conn:
        rows = (await conn.execute(_ALL)).all()
    return [
        Checkpoint(
            seq=int(r.seq),
            mac=str(r.mac),
            at=as_utc(r.at),
            key_id=str(r.key_id),
            signature=str(r.signature),
        )
        for r in rows
    ]
