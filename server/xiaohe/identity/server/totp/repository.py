"""The SQL side of the TOTP factor: `totp_factors` and `totp_recovery_codes`.

Every acceptance is one conditional statement, so under any concurrency (two
requests, two worker processes) exactly one presentation of a code wins:

- a TOTP code: `UPDATE totp_factors SET last_used_step = :step WHERE account_id
  = :a AND status = 'active' AND (last_used_step IS NULL OR last_used_step <
  :step)`; on SQLite the write lock serialises the two statements, on
  PostgreSQL the second waits for the first's row lock and re-checks the WHERE;
- a recovery code: `UPDATE totp_recovery_codes SET used_at = :now WHERE
  account_id = :a AND code_hash = :h AND used_at IS NULL`;
- activation: conditional on the factor still being pending *with the secret the
  code was checked against* (a second EnrollTotp in between replaced it).

Each method opens `database.begin()` (or `connect()`) and so joins the caller's
unit of work when one is open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa

from xiaohe.identity.server.storage.database import Database, epoch, utc
from xiaohe.identity.server.storage.schema import totp_factors, totp_recovery_codes


class FactorStatus(StrEnum):
    """A factor waits for its first code (`pending`) or guards sign-in (`active`)."""

    PENDING = "pending"
    ACTIVE = "active"


@dataclass(frozen=True)
class StoredFactor:
    """One account's factor row; `secret_enc` is sealed (never the secret itself)."""

    account_id: str
    secret_enc: bytes
    status: FactorStatus
    created_at: float
    last_used_step: int | None


# Built once: every password or SMS sign-in asks for the status.
_STATUS = sa.select(totp_factors.c.status).where(
    totp_factors.c.account_id == sa.bindparam("account_id")
)


class SqlTotpRepository:
    """`totp_factors` and `totp_recovery_codes` on the shared database."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def get(self, account_id: str) -> StoredFactor | None:
        """The account's factor, pending or active, or None."""
        async with self._db.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(totp_factors).where(totp_factors.c.account_id == account_id)
                )
            ).first()
        if row is None:
            return None
        return StoredFactor(
            account_id=row.account_id,
            secret_enc=bytes(row.secret_enc),
            status=FactorStatus(row.status),
            created_at=epoch(row.created_at),
            last_used_step=row.last_used_step,
        )

    async def status(self, account_id: str) -> FactorStatus | None:
        """The status of the account's factor, or None if it has none."""
        async with self._db.connect() as conn:
            status = (await conn.execute(_STATUS, {"account_id": account_id})).scalar_one_or_none()
        return None if status is None else FactorStatus(status)

    async def put_pending(self, account_id: str, secret_enc: bytes, now: float) -> bool:
        """Store (or replace) a pending factor; False if an active one exists (left alone)."""
        async with self._db.begin() as conn:
            replaced = await conn.execute(
                totp_factors.update()
                .where(
                    totp_factors.c.account_id == account_id,
                    totp_factors.c.status == FactorStatus.PENDING.value,
                )
                .values(secret_enc=secret_enc, created_at=utc(now), last_used_step=None)
            )
            if replaced.rowcount == 1:
                return True
            exists = (
                await conn.execute(
                    sa.select(totp_factors.c.status).where(totp_factors.c.account_id == account_id)
                )
            ).first()
            if exists is not None:
                return False
            await conn.execute(
                totp_factors.insert().values(
                    account_id=account_id,
                    secret_enc=secret_enc,
                    status=FactorStatus.PENDING.value,
                    created_at=utc(now),
                    activated_at=None,
                    last_used_step=None,
                )
            )
        return True

    async def activate(
        self, account_id: str, secret_enc: bytes, step: int, code_hashes: Sequence[str], now: float
    ) -> bool:
        """Make the pending factor sealed as `secret_enc` active, with `step` used and these
        recovery codes (any older ones removed); False if it is no longer that pending factor."""
        async with self._db.begin() as conn:
            done = await conn.execute(
                totp_factors.update()
                .where(
                    totp_factors.c.account_id == account_id,
                    totp_factors.c.status == FactorStatus.PENDING.value,
                    totp_factors.c.secret_enc == secret_enc,
                )
                .values(
                    status=FactorStatus.ACTIVE.value, activated_at=utc(now), last_used_step=step
                )
            )
            if done.rowcount != 1:
                return False
            await conn.execute(
                totp_recovery_codes.delete().where(totp_recovery_codes.c.account_id == account_id)
            )
            await conn.execute(
                totp_recovery_codes.insert(),
                [
                    {"account_id": account_id, "code_hash": h, "created_at": utc(now)}
                    for h in code_hashes
                ],
            )
        return True

    async def use_step(self, account_id: str, step: int) -> bool:
        """Accept time step `step` for the active factor once; False if used (or older)."""
        async with self._db.begin() as conn:
            done = await conn.execute(
                totp_factors.update()
                .where(
                    totp_factors.c.account_id == account_id,
                    totp_factors.c.status == FactorStatus.ACTIVE.value,
                    sa.or_(
                        totp_factors.c.last_used_step.is_(None),
                        totp_factors.c.last_used_step < step,
                    ),
                )
                .values(last_used_step=step)
            )
        return done.rowcount == 1

    async def use_recovery_code(self, account_id: str, code_hash: str, now: float) -> bool:
        """Spend one unused recovery code of the account; False if unknown or used."""
        async with self._db.begin() as conn:
            done = await conn.execute(
                totp_recovery_codes.update()
                .where(
                    totp_recovery_codes.c.account_id == account_id,
                    totp_recovery_codes.c.code_hash == code_hash,
                    totp_recovery_codes.c.used_at.is_(None),
                )
                .values(used_at=utc(now))
            )
        return done.rowcount == 1

    async def unused_recovery_codes(self, account_id: str) -> int:
        """How many recovery codes the account has left."""
        async with self._db.connect() as conn:
            count = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(totp_recovery_codes)
                    .where(
                        totp_recovery_codes.c.account_id == account_id,
                        totp_recovery_codes.c.used_at.is_(None),
                    )
                )
            ).scalar_one()
        return int(count)

    async def delete(self, account_id: str) -> bool:
        """Remove the factor and its recovery codes; False if there was no factor."""
        async with self._db.begin() as conn:
            await conn.execute(
                totp_recovery_codes.delete().where(totp_recovery_codes.c.account_id == account_id)
            )
            done = await conn.execute(
                totp_factors.delete().where(totp_factors.c.account_id == account_id)
            )
        return done.rowcount == 1


__all__ = ["FactorStatus", "SqlTotpRepository", "StoredFactor"]
