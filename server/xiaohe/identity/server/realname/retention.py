"""Retention of identity documents and their files (kinds of the retention sweep).

- `UnreferencedDocuments`: a document is kept while a real-name submission or a
  review case names it (the submission lives as long as its account; a case is
  kept a while after its decision, review/retention.py). A document that nothing
  names any more, and that was uploaded more than `keep_seconds` ago, is
  deleted: its row in the unit of work, its encrypted blob after the commit (a
  blob whose removal fails then is an orphan file, below). The grace period
  covers an upload whose submission or case is still being filed.
- `OrphanDocumentFiles`: a blob or temporary file in the document store without
  a row (a crash between writing the blob and committing the row, or a failed
  removal) is deleted once older than `grace_seconds`; a younger one may belong
  to an upload still in its transaction.
- `HolderConsents`: the consents of phone holders without an account (given
  with a document upload) are kept as evidence while the holder has a document,
  and `keep_seconds` after they were given, then deleted.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Final, Protocol

import sqlalchemy as sa

from xiaohe.identity.server.storage.batches import count_due, delete_all_due
from xiaohe.identity.server.storage.database import Database, translate_errors, utc
from xiaohe.identity.server.storage.schema import documents, holder_consents, real_name_submissions

DOCUMENTS_KIND: Final = "documents"
ORPHAN_FILES_KIND: Final = "document_files"
HOLDER_CONSENTS_KIND: Final = "holder_consents"

DocumentReferences = Callable[[Collection[str]], Awaitable[set[str]]]
"""Which of some document ids something still names (e.g. a review case)."""


class BlobStore(Protocol):
    """The document store as the sweep uses it (realname/documents.FileDocumentStore)."""

    async def stale_files(self, older_than: float) -> list[str]:
        """Names of blobs and temporary files last written before `older_than`."""
        ...

    async def discard(self, name: str) -> None:
        """Remove a blob or temporary file; nothing if gone."""
        ...


async def submitted_documents(database: Database, document_ids: Collection[str]) -> set[str]:
    """Which of `document_ids` a real-name submission names."""
    if not document_ids:
        return set()
    column = real_name_submissions.c.document_ids
    named = sa.or_(*(column.contains(f'"{d}"', autoescape=True) for d in document_ids))
    async with database.connect() as conn:
        lists = (await conn.execute(sa.select(column).where(named))).scalars()
        found = {d for text in lists for d in json.loads(text)}
    return found & set(document_ids)


class UnreferencedDocuments:
    """Deletes documents older than `keep_seconds` that no submission or case names."""

    name = DOCUMENTS_KIND

    def __init__(
        self,
        database: Database,
        store: BlobStore,
        keep_seconds: float,
        references: Sequence[DocumentReferences] = (),
    ) -> None:
        self._db = database
        self._store = store
        self._keep = keep_seconds
        self._references = references

    async def _named(self, ids: Collection[str]) -> set[str]:
        named = await submitted_documents(self._db, ids)
        for reference in self._references:
            named |= await reference(ids)
        return named

    async def _candidates(
        self, now: float, after: tuple[object, str] | None, limit: int
    ) -> list[tuple[object, str, str]]:
        """Old documents in (created_at, id) order after the cursor: (created_at, id, key)."""
        stmt = sa.select(documents.c.created_at, documents.c.document_id, documents.c.storage_key)
        stmt = stmt.where(documents.c.created_at < utc(now - self._keep))
        if after is not None:
            stmt = stmt.where(
                sa.tuple_(documents.c.created_at, documents.c.document_id) > sa.tuple_(*after)
            )
        stmt = stmt.order_by(documents.c.created_at, documents.c.document_id).limit(limit)
        async with self._db.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(r.created_at, str(r.document_id), str(r.storage_key)) for r in rows]

    async def count_due(self, now: float) -> int:
        """How many documents are due (reads every old document's references)."""
        due = 0
        after = None
        while rows := await self._candidates(now, after, 500):
            named = await self._named([r[1] for r in rows])
            due += sum(1 for r in rows if r[1] not in named)
            after = (rows[-1][0], rows[-1][1])
        return due

    async def purge(self, now: float, batch: int) -> AsyncIterator[int]:
        """Delete due documents, `batch` candidates per transaction; yields the rows removed."""
        after = None
        while rows := await self._candidates(now, after, batch):
            after = (rows[-1][0], rows[-1][1])
            removed = 0
            async with self._db.begin() as conn:
                # Checked again inside the unit of work: a case filed since the read keeps it.
                named = await self._named([r[1] for r in rows])
                gone = [(doc_id, key) for _, doc_id, key in rows if doc_id not in named]
                if gone:
                    with translate_errors():
                        result = await conn.execute(
                            sa.delete(documents).where(
                                documents.c.document_id.in_([doc_id for doc_id, _ in gone])
                            )
                        )
                    removed = int(result.rowcount)
                    for _, key in gone:
                        await self._db.after_commit(_discarder(self._store, key))
            if removed:
                yield removed
            if len(rows) < batch:
                return


def _discarder(store: BlobStore, key: str) -> Callable[[], Awaitable[None]]:
    async def discard() -> None:
        await store.discard(key)

    return discard


class OrphanDocumentFiles:
    """Deletes blobs and temporary files without a document row, older than `grace_seconds`."""

    name = ORPHAN_FILES_KIND

    def __init__(self, database: Database, store: BlobStore, grace_seconds: float) -> None:
        self._db = database
        self._store = store
        self._grace = grace_seconds

    async def _orphans(self, now: float) -> list[str]:
        names = await self._store.stale_files(now - self._grace)
        orphans: list[str] = []
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            async with self._db.connect() as conn:
                known = set(
                    (
                        await conn.execute(
                            sa.select(documents.c.storage_key).where(
                                documents.c.storage_key.in_(chunk)
                            )
                        )
                    ).scalars()
                )
            orphans.extend(n for n in chunk if n not in known)
        return orphans

    async def count_due(self, now: float) -> int:
        """How many orphan files are due."""
        return len(await self._orphans(now))

    async def purge(self, now: float, batch: int) -> AsyncIterator[int]:
        """Delete orphan files, `batch` at a time; yields the files each batch removed."""
        orphans = await self._orphans(now)
        for start in range(0, len(orphans), batch):
            chunk = orphans[start : start + batch]
            for name in chunk:
                await self._store.discard(name)
            yield len(chunk)


class HolderConsents:
    """Deletes phone holders' consents older than `keep_seconds` whose holder has no document."""

    name = HOLDER_CONSENTS_KIND

    def __init__(self, database: Database, keep_seconds: float) -> None:
        self._db = database
        self._keep = keep_seconds

    def _due(self, now: float) -> sa.ColumnElement[bool]:
        has_document = sa.exists().where(documents.c.owner == holder_consents.c.holder)
        return (holder_consents.c.accepted_at < utc(now - self._keep)) & ~has_document

    async def count_due(self, now: float) -> int:
        """How many holder consents are due."""
        return await count_due(self._db, holder_consents, self._due(now))

    def purge(self, now: float, batch: int) -> AsyncIterator[int]:
        """Delete due consents, `batch` per transaction; yields the rows each removed."""
        return delete_all_due(
            self._db,
            holder_consents,
            holder_consents.c.consent_id,
            self._due(now),
            holder_consents.c.accepted_at,
            batch,
        )
