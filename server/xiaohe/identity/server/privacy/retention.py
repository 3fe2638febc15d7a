"""Retention of the disclosure log (a kind of the retention sweep, flows/retention.py).

Every release of identity fields to a business system is a row of the disclosure
log (privacy/disclosures.py). It is a processing record the person may list, and
a log in the sense of the Cybersecurity Law Art. 21, so it is kept at least six
months (the setting refuses less) and as long as the audit log, then deleted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from sqlalchemy.sql.elements import ColumnElement

from xiaohe.identity.server.storage.batches import count_due, delete_all_due
from xiaohe.identity.server.storage.database import Database, utc
from xiaohe.identity.server.storage.schema import disclosures

KIND: Final = "disclosures"


class ExpiredDisclosures:
    """Deletes disclosure rows older than `keep_seconds`."""

    name = KIND

    def __init__(self, database: Database, keep_seconds: float) -> None:
        self._db = database
        self._keep = keep_seconds

    def _due(self, now: float) -> ColumnElement[bool]:
        return disclosures.c.disclosed_at < utc(now - self._keep)

    async def count_due(self, now: float) -> int:
        """How many disclosure rows are due."""
        return await count_due(self._db, disclosures, self._due(now))

    def purge(self, now: float, batch: int) -> AsyncIterator[int]:
        """Delete due rows, `batch` per transaction; yields the rows each removed."""
        return delete_all_due(
            self._db,
            disclosures,
            disclosures.c.disclosure_id,
            self._due(now),
            disclosures.c.disclosed_at,
            batch,
        )
