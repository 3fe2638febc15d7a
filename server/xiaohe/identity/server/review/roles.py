"""Operator roles held by accounts (`review`), granted and revoked by an operator's CLI.

A role is a row in `operator_roles`; an account that is deleted loses its
roles with it (foreign key, cascade). Grants and revocations are audited by
the caller (the CLI), in the same unit of work when it opens one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument, NotFound
from xiaohe.identity.server.review.models import OPERATOR_ROLES
from xiaohe.identity.server.storage.database import (
    Database,
    SqlConnection,
    epoch,
    translate_errors,
    utc,
)
from xiaohe.identity.server.storage.schema import operator_roles

# Built once: every review call and every sign-in with a short password ask.
_GRANTED_AT = sa.select(operator_roles.c.granted_at).where(
    operator_roles.c.account_id == sa.bindparam("account_id"),
    operator_roles.c.role == sa.bindparam("role"),
)
_ANY_ROLE = (
    sa.select(operator_roles.c.role)
    .where(operator_roles.c.account_id == sa.bindparam("account_id"))
    .limit(1)
)


@dataclass(frozen=True)
class RoleHolder:
    """An account holding an operator role, since when."""

    account_id: str
    role: str
    granted_at: float


def check_role(role: str) -> str:
    """The role if it is a known operator role, else InvalidArgument on `role`."""
    if role not in OPERATOR_ROLES:
        raise InvalidArgument(
            FieldViolation("role", f"unknown operator role; known: {sorted(OPERATOR_ROLES)}")
        )
    return role


class OperatorRoles:
    """Who holds which operator role."""

    def __init__(self, database: Database, clock: Clock) -> None:
        self._db = database
        self._clock = clock

    def __repr__(self) -> str:
        return "OperatorRoles()"

    async def grant(self, account_id: str, role: str) -> bool:
        """Give `role` to the account; False if it held it already. NotFound: no account."""
        check_role(role)
        with translate_errors():
            async with self._db.begin() as conn:
                if await self._holds(conn, account_id, role):
                    return False
                try:
                    await conn.execute(
                        operator_roles.insert().values(
                            account_id=account_id, role=role, granted_at=utc(self._clock.now())
                        )
                    )
                except IntegrityError:
                    raise NotFound("no such account") from None
        return True

    async def revoke(self, account_id: str, role: str) -> bool:
        """Take `role` from the account; False if it did not hold it."""
        check_role(role)
        with translate_errors():
            async with self._db.begin() as conn:
                result = await conn.execute(
                    operator_roles.delete().where(
                        operator_roles.c.account_id == account_id, operator_roles.c.role == role
                    )
                )
        return result.rowcount > 0

    async def holders(self, role: str) -> list[RoleHolder]:
        """Every account holding `role`, oldest grant first."""
        check_role(role)
        with translate_errors():
            async with self._db.connect() as conn:
                rows = (
                    await conn.execute(
                        operator_roles.select()
                        .where(operator_roles.c.role == role)
                        .order_by(operator_roles.c.granted_at, operator_roles.c.account_id)
                    )
                ).all()
        return [
            RoleHolder(
                r._mapping["account_id"], r._mapping["role"], epoch(r._mapping["granted_at"])
            )
            for r in rows
        ]

    async def holds(self, account_id: str, role: str) -> bool:
        """Whether the account holds `role` now."""
        return await self.granted_at(account_id, role) is not None

    async def granted_at(self, account_id: str, role: str) -> float | None:
        """When the account was given `role` (epoch seconds), or None if it does not hold it."""
        with translate_errors():
            async with self._db.connect() as conn:
                granted = await self._granted_at(conn, account_id, role)
        return None if granted is None else epoch(granted)

    async def holds_any(self, account_id: str) -> bool:
        """Whether the account holds any operator role now (SECURITY P5's password rule)."""
        with translate_errors():
            async with self._db.connect() as conn:
                row = (await conn.execute(_ANY_ROLE, {"account_id": account_id})).first()
        return row is not None

    # -- issue 14: deactivation --

    async def forget_account(self, account_id: str) -> int:
        """Revoke every role of the account (a completed deactivation); in the caller's unit
        of work. Returns how many."""
        with translate_errors():
            async with self._db.begin() as conn:
                result = await conn.execute(
                    operator_roles.delete().where(operator_roles.c.account_id == account_id)
                )
        return int(result.rowcount)

    # -- end deactivation --

    @staticmethod
    async def _holds(conn: SqlConnection, account_id: str, role: str) -> bool:
        return await OperatorRoles._granted_at(conn, account_id, role) is not None

    @staticmethod
    async def _granted_at(conn: SqlConnection, account_id: str, role: str) -> datetime | None:
        """The stored grant time of the account's `role`, or None."""
        found = await conn.execute(_GRANTED_AT, {"account_id": account_id, "role": role})
        return found.scalar_one_or_none()


__all__ = ["OperatorRoles", "RoleHolder", "check_role"]
