"""Retention of decided review cases (a kind of the retention sweep, flows/retention.py).

A case holds the compared fields of a person (sealed under the case's own data
key), the reviewers' decisions and notes. Once it is decided (APPROVED or
REJECTED) it is kept `keep_seconds` after the decision, for complaints and
disputes (privacy policy 四.(五)), then deleted with its decisions and notes
(ON DELETE CASCADE). The documents it names are not deleted here: they belong to
the document store, whose retention (realname/retention.py) deletes a document
once no case and no real-name submission names it. Open cases are never due.

`referenced_documents` answers that store: which of some document ids a
remaining case still names.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection
from typing import Final

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from xiaohe.identity.server.review.models import CaseState
from xiaohe.identity.server.storage.batches import count_due, delete_all_due
from xiaohe.identity.server.storage.database import Database, utc
from xiaohe.identity.server.storage.schema import review_cases

KIND: Final = "review_cases"

_FINAL: Final = tuple(state.value for state in CaseState if state.final)


class DecidedCases:
    """Deletes cases decided more than `keep_seconds` ago, with their decisions and notes."""

    name = KIND

    def __init__(self, database: Database, keep_seconds: float) -> None:
        self._db = database
        self._keep = keep_seconds

    def _due(self, now: float) -> ColumnElement[bool]:
        return review_cases.c.state.in_(_FINAL) & (
            review_cases.c.decided_at < utc(now - self._keep)
        )

    async def count_due(self, now: float) -> int:
        """How many decided cases are due."""
        return await count_due(self._db, review_cases, self._due(now))

    def purge(self, now: float, batch: int) -> AsyncIterator[int]:
        """Delete due cases, `batch` per transaction; yields the cases each removed."""
        return delete_all_due(
            self._db,
            review_cases,
            review_cases.c.case_id,
            self._due(now),
            review_cases.c.opened_at,
            batch,
        )


async def referenced_documents(database: Database, document_ids: Collection[str]) -> set[str]:
    """Which of `document_ids` a stored case names (each case's list is JSON of ids)."""
    if not document_ids:
        return set()
    # A quoted id cannot match inside another id; the exact test is on the parsed list.
    named = sa.or_(
        *(review_cases.c.document_ids.contains(f'"{d}"', autoescape=True) for d in document_ids)
    )
    async with database.connect() as conn:
        lists = (await conn.execute(sa.select(review_cases.c.document_ids).where(named))).scalars()
        found = {d for text in lists for d in json.loads(text)}
    return found & set(document_ids)
