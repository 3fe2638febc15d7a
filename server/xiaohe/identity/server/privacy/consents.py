"""The consent ledger: who accepted which policy version for what, when, how (SECURITY.md I3).

Append-only: a consent is never changed or deleted here (withdrawing one is a
new record, issue 14). Each record holds the account, the policy version, the
purpose (`privacy_policy` for the policy as a whole), the time, the client that
relayed it, the channel (`registration`, `login`, ...) and the end user's masked
IP. `record` joins the flow's unit of work, so an account never exists, and an
acceptance never counts, without its consent record.

Separate consents (PIPL Art. 29, SECURITY.md I2) are records with their own
purpose, `identity_documents` for uploading identity documents. Someone who
cannot sign in (a lost phone) may upload documents with a phone ticket; having
no account, that phone's holder gives the consent as `phone:<blind index>` in
`holder_consents`, a table of the same shape (`record_for_holder`).

Withdrawal (issue 14, PIPL Art. 15): a separate consent is withdrawn by a
record with action `withdraw` (`withdraw`); the consent is *in force*
(`has_consent`) while the account's newest record for the purpose is a grant
given after every withdrawal (a grant and a withdrawal at the same instant
count as withdrawn, the cautious reading). The main policy is not withdrawn
here: that is deactivation.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.storage.database import Database, epoch, translate_errors, utc
from xiaohe.identity.server.storage.schema import consents, holder_consents

PRIVACY_POLICY_PURPOSE: Final = "privacy_policy"
"""The consent purpose of accepting the privacy policy as a whole."""

IDENTITY_DOCUMENTS_PURPOSE: Final = "identity_documents"
"""The separate consent to processing identity documents (ID scans, licences; PIPL Art. 29)."""

GRANT_ACTION: Final = "grant"
"""`consents.action` of a consent given."""

WITHDRAW_ACTION: Final = "withdraw"
"""`consents.action` of a consent withdrawn."""

NOTIFIED_ACTION: Final = "notified"
"""`consents.action` of a person told of a policy version that changed no purpose: a
record of the notice (PIPL Art. 17), not a consent; `has_consent` ignores it."""

WITHDRAWABLE_PURPOSES: Final = frozenset({IDENTITY_DOCUMENTS_PURPOSE})
"""Separate consents a person may withdraw without leaving the service."""

_ID_PREFIX: Final = "con_"
_ID_BYTES: Final = 12


def _width(column: str) -> int:
    """The declared width of a string column of the `consents` table."""
    kind = consents.c[column].type
    if not isinstance(kind, sa.String) or kind.length is None:
        raise TypeError(f"consents.{column} is not a string column of fixed width")
    return kind.length


# Column widths of the `consents` table.
_LIMITS: Final = {name: _width(name) for name in ("client_id", "channel", "purpose", "ip_masked")}


@dataclass(frozen=True)
class Consent:
    """One consent record; `accepted_at` in epoch seconds."""

    consent_id: str
    account_id: str
    policy_version: int
    purpose: str
    accepted_at: float
    client_id: str
    channel: str
    ip_masked: str
    action: str = GRANT_ACTION


class ConsentLedger:
    """Records consents (in the caller's unit of work) and lists an account's."""

    def __init__(
        self,
        database: Database,
        clock: Clock,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._db = database
        self._clock = clock
        self._token_bytes = token_bytes

    async def record(
        self,
        account_id: str,
        version: int,
        *,
        client_id: str,
        channel: str,
        purpose: str = PRIVACY_POLICY_PURPOSE,
        ip_masked: str = "",
        action: str = GRANT_ACTION,
    ) -> str:
        """Record that the account accepted `version` for `purpose`; returns the consent id.

        With `action=WITHDRAW_ACTION` it records a withdrawal instead (`withdraw`).

        The caller is responsible for `version` being one it has checked (usually
        the current one) and `ip_masked` being masked already.
        """
        if not purpose:
            raise ValueError("consent purpose must not be empty")
        if action not in (GRANT_ACTION, WITHDRAW_ACTION, NOTIFIED_ACTION):
            raise ValueError("consent action must be grant, withdraw or notified")
        return await self._insert(
            consents.insert().values(account_id=account_id, action=action),
            version,
            client_id=client_id,
            channel=channel,
            purpose=purpose,
            ip_masked=ip_masked,
        )

    async def record_for_holder(
        self,
        holder: str,
        version: int,
        *,
        client_id: str,
        channel: str,
        purpose: str,
        ip_masked: str = "",
    ) -> str:
        """Record a consent of a phone holder without an account (`phone:<blind index>`)."""
        if not purpose or not holder:
            raise ValueError("consent holder and purpose must not be empty")
        return await self._insert(
            holder_consents.insert().values(holder=holder),
            version,
            client_id=client_id,
            channel=channel,
            purpose=purpose,
            ip_masked=ip_masked,
        )

    async def _insert(self, insert: sa.Insert, version: int, **values: str) -> str:
        """Insert one consent row (a ledger's `insert()` with its subject) with the common
        columns; values over their column's length are refused."""
        for name, value in values.items():
            if len(value) > _LIMITS[name]:
                raise ValueError(f"consent {name} is longer than {_LIMITS[name]}")
        consent_id = _ID_PREFIX + self._token_bytes(_ID_BYTES).hex()
        async with self._db.begin() as conn:
            with translate_errors():
                await conn.execute(
                    insert.values(
                        consent_id=consent_id,
                        policy_version=version,
                        accepted_at=utc(self._clock.now()),
                        **values,
                    )
                )
        return consent_id

    async def withdraw(
        self,
        account_id: str,
        version: int,
        *,
        client_id: str,
        channel: str,
        purpose: str,
        ip_masked: str = "",
    ) -> str:
        """Record the withdrawal of the account's consent for `purpose`; returns its id."""
        return await self.record(
            account_id,
            version,
            client_id=client_id,
            channel=channel,
            purpose=purpose,
            ip_masked=ip_masked,
            action=WITHDRAW_ACTION,
        )

    async def has_consent(self, account_id: str, purpose: str) -> bool:
        """Whether the account's consent for `purpose` is in force (see the module docstring)."""
        newest = {
            action: sa.select(sa.func.max(consents.c.accepted_at))
            .where(
                consents.c.account_id == account_id,
                consents.c.purpose == purpose,
                consents.c.action == action,
            )
            .scalar_subquery()
            for action in (GRANT_ACTION, WITHDRAW_ACTION)
        }
        query = sa.select(newest[GRANT_ACTION], newest[WITHDRAW_ACTION])
        async with self._db.connect() as conn:
            with translate_errors():
                granted, withdrawn = (await conn.execute(query)).one()
        if granted is None:
            return False
        return withdrawn is None or epoch(granted) > epoch(withdrawn)

    async def was_notified(self, account_id: str, version: int) -> bool:
        """Whether the account was told of policy `version` (a `notified` record)."""
        query = (
            sa.select(consents.c.consent_id)
            .where(
                consents.c.account_id == account_id,
                consents.c.policy_version == version,
                consents.c.action == NOTIFIED_ACTION,
            )
            .limit(1)
        )
        async with self._db.connect() as conn:
            with translate_errors():
                return (await conn.execute(query)).first() is not None

    async def holder_has_consent(self, holder: str, purpose: str) -> bool:
        """Whether the phone holder has ever given a consent for `purpose`."""
        query = (
            sa.select(holder_consents.c.consent_id)
            .where(holder_consents.c.holder == holder, holder_consents.c.purpose == purpose)
            .limit(1)
        )
        async with self._db.connect() as conn:
            with translate_errors():
                return (await conn.execute(query)).first() is not None

    async def of_account(self, account_id: str) -> list[Consent]:
        """The account's consents, oldest first."""
        query = (
            sa.select(consents)
            .where(consents.c.account_id == account_id)
            .order_by(consents.c.accepted_at, consents.c.consent_id)
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Consent(
                consent_id=str(r.consent_id),
                account_id=str(r.account_id),
                policy_version=int(r.policy_version),
                purpose=str(r.purpose),
                accepted_at=epoch(r.accepted_at),
                client_id=str(r.client_id),
                channel=str(r.channel),
                ip_masked=str(r.ip_masked),
                action=str(r.action),
            )
            for r in rows
        ]


__all__ = [
    "GRANT_ACTION",
    "IDENTITY_DOCUMENTS_PURPOSE",
    "NOTIFIED_ACTION",
    "PRIVACY_POLICY_PURPOSE",
    "WITHDRAWABLE_PURPOSES",
    "WITHDRAW_ACTION",
    "Consent",
    "ConsentLedger",
]
