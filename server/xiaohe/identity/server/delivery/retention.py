"""Retention of finished outbox rows and their delivery receipts (flows/retention.py).

A message that was sent, failed or withheld holds no payload any more (the
outbox wipes it); what is left is the message's lifecycle: purpose, provider,
the provider's message id, the receipt (state, carrier code, times) and the
number prefix. Operators read it for support (`xiaohe-identity delivery show`,
delivery figures), so it is kept `keep_seconds` after the message was created,
then deleted; the receipt is columns of the same row and goes with it. Pending
and sending rows are never touched here: the dispatcher owns them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from sqlalchemy.sql.elements import ColumnElement

from xiaohe.identity.server.delivery.outbox import STATUS_FAILED, STATUS_SENT, STATUS_WITHHELD
from xiaohe.identity.server.storage.batches import count_due, delete_all_due
from xiaohe.identity.server.storage.database import Database, utc
from xiaohe.identity.server.storage.schema import outbox

KIND: Final = "outbox"

_FINISHED: Final = (STATUS_SENT, STATUS_FAILED, STATUS_WITHHELD)


class FinishedMessages:
    """Deletes finished outbox rows (and so their receipts) older than `keep_seconds`."""

    name = KIND

    def __init__(self, database: Database, keep_seconds: float) -> None:
        self._db = database
        self._keep = keep_seconds

    def _due(self, now: float) -> ColumnElement[bool]:
        return outbox.c.status.in_(_FINISHED) & (outbox.c.created_at < utc(now - self._keep))

    async def count_due(self, now: float) -> int:
        """How many finished messages are due."""
        return await count_due(self._db, outbox, self._due(now))

    def purge(self, now: float, batch: int) -> AsyncIterator[int]:
        """Delete due messages, `batch` per transaction; yields the rows each removed."""
        return delete_all_due(
            self._db, outbox, outbox.c.message_id, self._due(now), outbox.c.created_at, batch
        )
