"""Pruning the audit log's front after its retention period, with the chain's anchor kept.

The audit log is kept at least six months (Cybersecurity Law Art. 21; the
setting refuses less) and then pruned by the retention sweep. Pruning cuts a
prefix, never the end, one batch per transaction, and leaves a chain that
`AuditLog.verify_chain` still verifies (see audit/log.py):

1. take the appenders' lock, so no record is appended meanwhile;
2. pick the base: the newest of the first `batch` records that is older than
   the cut-off (records are read in seq order and the first younger one stops
   the batch, so a record is never pruned before an older one);
3. append the `audit.pruned` record naming the base (`through:<seq>`); it is
   the new head, so the head is never pruned and the next append still links;
4. sign a checkpoint of the base (seq, MAC) unless one is stored already;
5. delete the records up to the base and the checkpoints below it.

All five commit together or not at all. The first kept record names the base's
MAC as `prev_hash`, and the base's checkpoint carries the key ring's signature
of that MAC, so the kept chain is anchored in what only the key holder could
write. Checkpoints below the base go with their records: an anchor saved from an
older log line can no longer be checked, which is what pruning means.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import sqlalchemy as sa

from xiaohe.identity.server.audit.checkpoints import insert_checkpoint, sign_checkpoint
from xiaohe.identity.server.audit.log import (
    PRUNE_ACTION,
    AuditLog,
    lock_appenders,
    prune_outcome,
)
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.storage.database import Database, epoch, translate_errors, utc
from xiaohe.identity.server.storage.schema import audit_checkpoints, audit_log

KIND: Final = "audit_log"
PRUNE_TARGET: Final = "audit_log"


class AuditPruning:
    """Prunes audit records older than `keep_seconds` from the front of the chain."""

    name = KIND

    def __init__(
        self, database: Database, audit: AuditLog, keys: AuditKeys, keep_seconds: float
    ) -> None:
        self._db = database
        self._audit = audit
        self._keys = keys
        self._keep = keep_seconds

    async def count_due(self, now: float) -> int:
        """How many records are older than the cut-off (the head is never pruned)."""
        head = sa.select(sa.func.max(audit_log.c.seq)).scalar_subquery()
        stmt = sa.select(sa.func.count()).where(
            audit_log.c.at < utc(now - self._keep), audit_log.c.seq < head
        )
        async with self._db.connect() as conn:
            return int((await conn.execute(stmt)).scalar() or 0)

    async def purge(self, now: float, batch: int) -> AsyncIterator[int]:
        """Prune due records, `batch` per transaction; yields the records each removed."""
        while True:
            removed = await self._prune_batch(now, batch)
            if removed:
                yield removed
            if removed < batch:
                return

    async def _prune_batch(self, now: float, batch: int) -> int:
        """One transaction: steps 1-5 of the module docstring; how many records it removed."""
        cutoff = now - self._keep
        async with self._db.begin() as conn:
            with translate_errors():
                await lock_appenders(conn, self._db.dialect)
                rows = (
                    await conn.execute(
                        sa.select(audit_log.c.seq, audit_log.c.at, audit_log.c.hash)
                        .order_by(audit_log.c.seq)
                        .limit(batch)
                    )
                ).all()
            old = []
            for row in rows:
                if epoch(row.at) >= cutoff:
                    break
                old.append(row)
            if not old:
                return 0
            base = int(old[-1].seq)
            # Appended first: the head is this record, never one about to be deleted.
            await self._audit.record(
                PRUNE_ACTION, PRUNE_TARGET, prune_outcome(base), actor_account=""
            )
            await insert_checkpoint(
                self._db, sign_checkpoint(self._keys, base, str(old[-1].hash), utc(now))
            )
            with translate_errors():
                result = await conn.execute(sa.delete(audit_log).where(audit_log.c.seq <= base))
                await conn.execute(
                    sa.delete(audit_checkpoints).where(audit_checkpoints.c.seq < base)
                )
        return int(result.rowcount)
