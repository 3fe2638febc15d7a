"""Retention of ended sessions (a kind of the retention sweep, flows/retention.py).

A session has ended when it was revoked or when its idle or absolute lifetime
ran out, whichever came first. Its row (client, masked IP, user agent, times)
is the person's sign-in history (export, security events) and a network log in
the sense of the Cybersecurity Law Art. 21, so it is kept `keep_seconds` after
it ended and then deleted with its refresh tokens (ON DELETE CASCADE).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from xiaohe.identity.server.storage.batches import count_due, delete_all_due
from xiaohe.identity.server.storage.database import Database, utc
from xiaohe.identity.server.storage.schema import sessions

KIND: Final = "sessions"


class EndedSessions:
    """Deletes sessions that ended more than `keep_seconds` ago, with their refresh tokens."""

    name = KIND

    def __init__(self, database: Database, keep_seconds: float) -> None:
        self._db = database
        self._keep = keep_seconds

    def _due(self, now: float) -> ColumnElement[bool]:
        cutoff = utc(now - self._keep)
        return sa.or_(
            sessions.c.revoked_at < cutoff,
            sessions.c.idle_expires_at < cutoff,
            sessions.c.absolute_expires_at < cutoff,
        )

    async def count_due(self, now: float) -> int:
        """How many sessions are due."""
        return await count_due(self._db, sessions, self._due(now))

    def purge(self, now: float, batch: int) -> AsyncIterator[int]:
        """Delete due sessions, `batch` per transaction; yields the rows each removed."""
        return delete_all_due(
            self._db,
            sessions,
            sessions.c.session_id,
            self._due(now),
            sessions.c.created_at,
            batch,
        )
