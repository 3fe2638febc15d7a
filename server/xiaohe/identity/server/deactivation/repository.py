"""The `deactivations` table: accounts in their cooling-off period (joining the unit of work)."""

from __future__ import annotations

import sqlalchemy as sa

from xiaohe.identity.server.deactivation.models import PendingDeactivation
from xiaohe.identity.server.storage.database import Database, epoch, translate_errors, utc
from xiaohe.identity.server.storage.schema import deactivations


class SqlDeactivations:
    """Pending deactivations on SQLite or PostgreSQL (SQLAlchemy Core)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def __repr__(self) -> str:
        return "SqlDeactivations()"

    async def insert(self, pending: PendingDeactivation) -> None:
        """Record a deactivation asked for (in the caller's unit of work)."""
        with translate_errors():
            async with self._db.begin() as conn:
                await conn.execute(
                    deactivations.insert().values(
                        account_id=pending.account_id,
                        requested_at=utc(pending.requested_at),
                        due_at=utc(pending.due_at),
                        data_key_pending=pending.data_key_pending,
                        case_keys_pending=pending.case_keys_pending,
                    )
                )

    async def get(self, account_id: str) -> PendingDeactivation | None:
        """The account's pending deactivation, or None."""
        query = sa.select(deactivations).where(deactivations.c.account_id == account_id)
        with translate_errors():
            async with self._db.begin() as conn:
                row = (await conn.execute(query)).first()
        if row is None:
            return None
        return PendingDeactivation(
            account_id=str(row.account_id),
            requested_at=epoch(row.requested_at),
            due_at=epoch(row.due_at),
            data_key_pending=bytes(row.data_key_pending),
            case_keys_pending=None
            if row.case_keys_pending is None
            else bytes(row.case_keys_pending),
        )

    async def delete(self, account_id: str) -> bool:
        """Forget the account's pending deactivation (in the caller's unit of work)."""
        with translate_errors():
            async with self._db.begin() as conn:
                result = await conn.execute(
                    deactivations.delete().where(deactivations.c.account_id == account_id)
                )
        return result.rowcount > 0

    async def due(self, now: float, limit: int) -> list[str]:
        """Up to `limit` accounts whose cooling-off period has ended by `now`, oldest first."""
        query = (
            sa.select(deactivations.c.account_id)
            .where(deactivations.c.due_at <= utc(now))
            .order_by(deactivations.c.due_at, deactivations.c.account_id)
            .limit(limit)
        )
        with translate_errors():
            async with self._db.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [str(r.account_id) for r in rows]


__all__ = ["PendingDeactivation", "SqlDeactivations"]
