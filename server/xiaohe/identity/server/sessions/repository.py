"""The SQL side of sessions: `sessions` and `refresh_tokens`, with exactly-once rotation.

Refresh tokens are stored only as SHA-256 (hex) of the token string. Rotation
(SECURITY T2, RFC 9700 §4.14.2) is one write transaction whose first statement
is the claim

    UPDATE refresh_tokens SET used_at = :now
     WHERE token_hash = :hash AND used_at IS NULL

Exactly one transaction can see rowcount 1 for a given hash: on SQLite the write
transaction holds the database's single write lock from `BEGIN IMMEDIATE`; on
PostgreSQL a concurrent UPDATE of the same row waits for the first to commit and
then re-checks `used_at IS NULL`, which no longer holds. The winner checks the
session (not revoked, inside its idle and absolute lifetime, same client),
refreshes its idle deadline and inserts the next token in the same transaction.
A loser finds the hash already used: that is a replay, so the whole session (the
token family) is revoked, committed, and reported as `REPLAYED`. Note what this
means for a client that sends one token twice at once: one call succeeds and the
session is revoked by the other, the strict reading of RFC 9700 (no grace
window). A winner that finds the session dead rolls back, so the token stays
unused and an unknown, revoked or expired session all look the same to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

import sqlalchemy as sa

from xiaohe.identity.server.sessions.models import RevokeReason, SessionRecord
from xiaohe.identity.server.storage.database import (
    Database,
    SqlConnection,
    epoch,
    utc,
)
from xiaohe.identity.server.storage.schema import refresh_tokens, sessions

AMR_SEPARATOR = " "


_INSERT_SESSION = sessions.insert()
_INSERT_REFRESH_TOKEN = refresh_tokens.insert()


class RotationStatus(StrEnum):
    """Outcome of presenting a refresh token for rotation (a short code, fit for logs)."""

    ROTATED = "rotated"
    UNKNOWN = "unknown_token"
    REPLAYED = "replayed"
    REVOKED = "session_revoked"
    EXPIRED = "session_expired"
    CLIENT_MISMATCH = "client_mismatch"


@dataclass(frozen=True)
class Rotation:
    """The outcome of `rotate`, with the session as it stands afterwards (None if unknown)."""

    status: RotationStatus
    session: SessionRecord | None = None


@dataclass(frozen=True)
class RevokedSession:
    """A session a bulk revocation just ended, with when it last issued an access token."""

    session_id: str
    last_used_at: float


class SessionRepository(Protocol):
    """What the session service needs from storage."""

    async def create(self, session: SessionRecord, refresh_token_hash: str) -> None:
        """Store a new session and its first refresh token (in the unit of work, if one is open)."""
        ...

    async def rotate(
        self,
        token_hash: str,
        next_token_hash: str,
        *,
        now: float,
        idle: float,
        client_id: str | None = None,
    ) -> Rotation:
        """Consume a refresh token exactly once and store its successor (module docstring)."""
        ...

    async def get(self, session_id: str) -> SessionRecord | None:
        """A session by id, revoked or not."""
        ...

    async def find_by_token(self, token_hash: str) -> SessionRecord | None:
        """The session a refresh token (used or not) belongs to."""
        ...

    async def list_active(self, account_id: str, now: float) -> list[SessionRecord]:
        """The account's sessions that are neither revoked nor expired, most recent first."""
        ...

    async def revoke(
        self, session_id: str, *, now: float, reason: str, account_id: str | None = None
    ) -> bool:
        """Mark a session revoked (kept if already revoked); False if none matches."""
        ...

    async def revoke_all(
        self, account_id: str, *, now: float, reason: str, keep: str = ""
    ) -> list[RevokedSession]:
        """Revoke every not-yet-revoked session of the account but `keep`; returns those."""
        ...

    async def delete_ended(self, before: float) -> int:
        """Delete sessions (and their tokens) that ended before `before`; returns how many."""
        ...

    async def list_all(self, account_id: str) -> list[SessionRecord]:
        """Every stored session of the account, live or ended, newest first (issue 14)."""
        ...


class _Abort(Exception):
    """Rolls a rotation back when the winner finds the session unusable."""

    def __init__(self, status: RotationStatus, session: SessionRecord | None) -> None:
        super().__init__(status.value)
        self.status = status
        self.session = session


def _record(row: sa.Row[Any]) -> SessionRecord:
    m = row._mapping
    revoked_at = m["revoked_at"]
    return SessionRecord(
        session_id=str(m["session_id"]),
        account_id=str(m["account_id"]),
        audience=str(m["audience"]),
        amr=tuple(str(m["amr"]).split()),
        client_id=str(m["client_id"]),
        ip_masked=str(m["ip_masked"]),
        user_agent=str(m["user_agent"]),
        created_at=epoch(m["created_at"]),
        last_used_at=epoch(m["last_used_at"]),
        idle_expires_at=epoch(m["idle_expires_at"]),
        absolute_expires_at=epoch(m["absolute_expires_at"]),
        revoked_at=None if revoked_at is None else epoch(revoked_at),
        revoke_reason=None if m["revoke_reason"] is None else str(m["revoke_reason"]),
    )


async def _load(conn: SqlConnection, session_id: str) -> SessionRecord | None:
    row = (
        await conn.execute(sa.select(sessions).where(sessions.c.session_id == session_id))
    ).first()
    return None if row is None else _record(row)


async def _revoke_in(conn: SqlConnection, session_id: str, now: float, reason: str) -> None:
    await conn.execute(
        sa.update(sessions)
        .where(sessions.c.session_id == session_id, sessions.c.revoked_at.is_(None))
        .values(revoked_at=utc(now), revoke_reason=str(reason))
    )


def _usable(session: SessionRecord, now: float, client_id: str | None) -> RotationStatus:
    if session.revoked_at is not None:
        return RotationStatus.REVOKED
    if not session.is_active(now):
        return RotationStatus.EXPIRED
    if client_id is not None and client_id != session.client_id:
        return RotationStatus.CLIENT_MISMATCH
    return RotationStatus.ROTATED


class SqlSessionRepository:
    """SessionRepository on the SQL database (SQLite or PostgreSQL)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(self, session: SessionRecord, refresh_token_hash: str) -> None:
        """Store a new session and its first refresh token (in the unit of work, if one is open)."""
        # Static statements with parameters: compiled once, then only bound (a hot path).
        async with self._db.begin() as conn:
            await conn.execute(
                _INSERT_SESSION,
                {
                    "session_id": session.session_id,
                    "account_id": session.account_id,
                    "audience": session.audience,
                    "amr": AMR_SEPARATOR.join(session.amr),
                    "client_id": session.client_id,
                    "ip_masked": session.ip_masked,
                    "user_agent": session.user_agent,
                    "created_at": utc(session.created_at),
                    "last_used_at": utc(session.last_used_at),
                    "idle_expires_at": utc(session.idle_expires_at),
                    "absolute_expires_at": utc(session.absolute_expires_at),
                    "revoked_at": None,
                    "revoke_reason": None,
                },
            )
            await conn.execute(
                _INSERT_REFRESH_TOKEN,
                {
                    "token_hash": refresh_token_hash,
                    "session_id": session.session_id,
                    "issued_at": utc(session.created_at),
                    "used_at": None,
                },
            )

    async def rotate(
        self,
        token_hash: str,
        next_token_hash: str,
        *,
        now: float,
        idle: float,
        client_id: str | None = None,
    ) -> Rotation:
        """Consume a refresh token exactly once and store its successor (module docstring).

        `client_id`, when given, must be the client the session was issued to
        (refresh tokens are bound to their client, RFC 9700 §4.14.2).
        """
        try:
            async with self._db.begin() as conn:
                claimed = await conn.execute(
                    sa.update(refresh_tokens)
                    .where(
                        refresh_tokens.c.token_hash == token_hash,
                        refresh_tokens.c.used_at.is_(None),
                    )
                    .values(used_at=utc(now))
                )
                session_id = (
                    await conn.execute(
                        sa.select(refresh_tokens.c.session_id).where(
                            refresh_tokens.c.token_hash == token_hash
                        )
                    )
                ).scalar_one_or_none()
                if session_id is None:
                    return Rotation(RotationStatus.UNKNOWN)
                if claimed.rowcount != 1:
                    await _revoke_in(conn, str(session_id), now, RevokeReason.REFRESH_REPLAY)
                    return Rotation(RotationStatus.REPLAYED, await _load(conn, str(session_id)))
                session = await _load(conn, str(session_id))
                if session is None:  # the foreign key makes this unreachable
                    raise _Abort(RotationStatus.UNKNOWN, None)
                status = _usable(session, now, client_id)
                if status is not RotationStatus.ROTATED:
                    raise _Abort(status, session)
                idle_expires_at = now + idle
                await conn.execute(
                    sa.update(sessions)
                    .where(sessions.c.session_id == session.session_id)
                    .values(last_used_at=utc(now), idle_expires_at=utc(idle_expires_at))
                )
                await conn.execute(
                    _INSERT_REFRESH_TOKEN,
                    {
                        "token_hash": next_token_hash,
                        "session_id": session.session_id,
                        "issued_at": utc(now),
                        "used_at": None,
                    },
                )
                return Rotation(
                    RotationStatus.ROTATED,
                    replace(session, last_used_at=now, idle_expires_at=idle_expires_at),
                )
        except _Abort as abort:
            return Rotation(abort.status, abort.session)

    async def get(self, session_id: str) -> SessionRecord | None:
        """A session by id, revoked or not."""
        async with self._db.connect() as conn:
            return await _load(conn, session_id)

    async def find_by_token(self, token_hash: str) -> SessionRecord | None:
        """The session a refresh token (used or not) belongs to."""
        query = sa.select(sessions).join(
            refresh_tokens, refresh_tokens.c.session_id == sessions.c.session_id
        )
        async with self._db.connect() as conn:
            row = (
                await conn.execute(query.where(refresh_tokens.c.token_hash == token_hash))
            ).first()
        return None if row is None else _record(row)

    async def list_all(self, account_id: str) -> list[SessionRecord]:
        """Every stored session of the account, live or ended, newest first (issue 14)."""
        query = (
            sa.select(sessions)
            .where(sessions.c.account_id == account_id)
            .order_by(sessions.c.created_at.desc(), sessions.c.session_id)
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(r) for r in rows]

    async def list_active(self, account_id: str, now: float) -> list[SessionRecord]:
        """The account's sessions that are neither revoked nor expired, most recent first."""
        query = (
            sa.select(sessions)
            .where(
                sessions.c.account_id == account_id,
                sessions.c.revoked_at.is_(None),
                sessions.c.idle_expires_at > utc(now),
                sessions.c.absolute_expires_at > utc(now),
            )
            .order_by(sessions.c.last_used_at.desc(), sessions.c.session_id)
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).all()
        # Filter again in Python: the SQL comparison is only a pre-filter on SQLite's text dates.
        return [r for r in map(_record, rows) if r.is_active(now)]

    async def revoke(
        self, session_id: str, *, now: float, reason: str, account_id: str | None = None
    ) -> bool:
        """Mark a session revoked (kept if already revoked); False if none matches.

        With `account_id`, only a session of that account matches, so a user
        cannot revoke someone else's session by guessing its id (SECURITY T5).
        """
        async with self._db.begin() as conn:
            query = sa.select(sessions.c.account_id).where(sessions.c.session_id == session_id)
            owner = (await conn.execute(query)).scalar_one_or_none()
            if owner is None or (account_id is not None and owner != account_id):
                return False
            await _revoke_in(conn, session_id, now, reason)
            return True

    async def revoke_all(
        self, account_id: str, *, now: float, reason: str, keep: str = ""
    ) -> list[RevokedSession]:
        """Revoke every not-yet-revoked session of the account but `keep`; returns those.

        Expired sessions are included: an access token issued just before the
        end of a session outlives it by up to the access-token lifetime.
        """
        condition = sa.and_(sessions.c.account_id == account_id, sessions.c.revoked_at.is_(None))
        if keep:
            condition = sa.and_(condition, sessions.c.session_id != keep)
        async with self._db.begin() as conn:
            result = await conn.execute(
                sa.update(sessions)
                .where(condition)
                .values(revoked_at=utc(now), revoke_reason=str(reason))
                .returning(sessions.c.session_id, sessions.c.last_used_at)
            )
            return [
                RevokedSession(session_id=str(sid), last_used_at=epoch(last_used))
                for sid, last_used in result.all()
            ]

    async def delete_ended(self, before: float) -> int:
        """Delete sessions (and their tokens) that ended before `before`; returns how many.

        Used tokens must be kept while their session lives (that is how a replay is
        recognised); once the session has ended they only take space.
        """
        cutoff = utc(before)
        ended = sa.or_(
            sessions.c.revoked_at < cutoff,
            sessions.c.idle_expires_at < cutoff,
            sessions.c.absolute_expires_at < cutoff,
        )
        async with self._db.begin() as conn:
            ids = (await conn.execute(sa.select(sessions.c.session_id).where(ended))).scalars()
            doomed = [str(i) for i in ids]
            for start in range(0, len(doomed), 500):
                chunk = doomed[start : start + 500]
                await conn.execute(
                    sa.delete(refresh_tokens).where(refresh_tokens.c.session_id.in_(chunk))
                )
                await conn.execute(sa.delete(sessions).where(sessions.c.session_id.in_(chunk)))
            return len(doomed)


__all__ = [
    "AMR_SEPARATOR",
    "RevokedSession",
    "Rotation",
    "RotationStatus",
    "SessionRepository",
    "SqlSessionRepository",
]
