"""Account storage: the Protocol the account service needs and its SQL implementation.

The repository moves opaque values only. It never sees a phone number, an ID
number or a name in the clear: the service hands it ciphertexts (`*_enc`,
AES-256-GCM under the account's data key) and blind indexes (HMAC-SHA256 of the
normalised identifier), and gets the same back.

Uniqueness of identifiers is enforced by the database, not by the lookups that
precede an insert: the `identifiers` primary key (kind, blind_index) and the
unique `accounts.login_name`. Identifier rows are inserted one statement each,
so when two registrations race for the same identifier the loser's failing
statement tells which kind it was (`IdentifierTaken`), and its whole
transaction (account, identifiers, consent) is rolled back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from xiaohe.identity.server.accounts.models import IdentifierKey, IdentifierTaken
from xiaohe.identity.server.storage.database import (
    Database,
    epoch,
    translate_errors,
    utc,
)
from xiaohe.identity.server.storage.schema import accounts, identifiers


@dataclass(frozen=True)
class NewAccountRecord:
    """A row of `accounts` to insert; personal data only as ciphertexts."""

    account_id: str
    subject_type: str
    login_name: str
    password_hash: str = field(repr=False)
    status: str
    accepted_policy_version: int
    real_name_level: int
    master_key_id: str
    data_key_wrapped: bytes = field(repr=False)
    phone_enc: bytes | None = field(repr=False)
    email_enc: bytes | None = field(repr=False)
    profile_enc: bytes | None = field(repr=False)
    created_at: float


@dataclass(frozen=True)
class AccountRecord:
    """A stored row of `accounts`; times in epoch seconds; `data_key_wrapped` None if shredded."""

    account_id: str
    subject_type: str
    login_name: str
    password_hash: str = field(repr=False)
    status: str
    accepted_policy_version: int
    real_name_level: int
    master_key_id: str
    data_key_wrapped: bytes | None = field(repr=False)
    phone_enc: bytes | None = field(repr=False)
    email_enc: bytes | None = field(repr=False)
    profile_enc: bytes | None = field(repr=False)
    created_at: float
    updated_at: float
    phone_changed_at: float | None = None
    email_changed_at: float | None = None
    phone_stale_at: float | None = None


@dataclass(frozen=True)
class StoredDataKey:
    """An account's wrapped data key as stored (for master-key rotation)."""

    account_id: str
    data_key_wrapped: bytes = field(repr=False)


@dataclass(frozen=True)
class DataKeyUpdate:
    """Replace `old` by `new` (wrapped under `master_key_id`) if the row still holds `old`."""

    account_id: str
    old: bytes = field(repr=False)
    new: bytes = field(repr=False)
    master_key_id: str


class AccountRepository(Protocol):
    """Storage the account service needs."""

    async def taken_kinds(self, keys: Sequence[IdentifierKey]) -> set[str]:
        """The kinds among `keys` whose blind index already belongs to some account."""
        ...

    async def insert(self, account: NewAccountRecord, keys: Sequence[IdentifierKey]) -> None:
        """Insert the account and its identifiers (in the unit of work); IdentifierTaken on a
        duplicate."""
        ...

    async def get(self, account_id: str) -> AccountRecord | None:
        """The account, or None."""
        ...

    async def find_by_identifier(self, key: IdentifierKey) -> AccountRecord | None:
        """The account holding this identifier, or None."""
        ...

    async def set_password_hash(
        self,
        account_id: str,
        password_hash: str,
        now: float,
        *,
        expected_old_hash: str | None = None,
    ) -> bool:
        """Replace the hash (only while it is `expected_old_hash`, if given); False if not."""
        ...

    async def get_for_update(self, account_id: str) -> AccountRecord | None:
        """The account, locked until the unit of work ends (PostgreSQL); None if none."""
        ...

    async def set_contact(
        self, account_id: str, column: str, blob: bytes | None, now: float
    ) -> None:
        """Store a new ciphertext (or None) in `phone_enc` or `email_enc`, and the time of the
        change (`phone_changed_at` or `email_changed_at`)."""
        ...

    async def replace_identifier(
        self, account_id: str, old: IdentifierKey | None, new: IdentifierKey | None, now: float
    ) -> None:
        """Drop the account's `old` identifier row and add `new`; IdentifierTaken if it is held."""
        ...

    async def mark_phone_stale(self, account_id: str, now: float) -> None:
        """Record that the bound phone was reported recycled (`phone_stale_at`)."""
        ...

    async def raise_policy_version(self, account_id: str, version: int, now: float) -> None:
        """Record that the account accepted `version` (never lowers it)."""
        ...

    async def set_real_name_level(self, account_id: str, level: int, now: float) -> bool:
        """Set the account's real-name level; False if there is no such account."""
        ...

    async def stale_data_keys(
        self, active_master_key_id: str, after_account_id: str, limit: int
    ) -> list[StoredDataKey]:
        """Up to `limit` data keys not wrapped under the active master key, by account id."""
        ...

    async def replace_data_keys(self, updates: Sequence[DataKeyUpdate]) -> int:
        """Apply the updates whose row still holds `old`, in one transaction; return how many."""
        ...

    # -- issue 14: deactivation --

    async def set_state(
        self,
        account_id: str,
        *,
        expected_status: str,
        status: str,
        data_key_wrapped: bytes | None,
        master_key_id: str,
        now: float,
    ) -> bool:
        """Move the account from `expected_status` to `status` with this data key wrap (or
        none); False if it is not in `expected_status`."""
        ...

    async def erase(
        self, account_id: str, *, expected_status: str, status: str, login_name: str, now: float
    ) -> bool:
        """Clear the account's personal data, credentials and data key, give it `login_name`
        and `status`, and delete its identifier rows; False if not in `expected_status`."""
        ...

    # -- end deactivation --

    # -- issue 14: export --
    async def identifiers_of(self, account_id: str) -> list[tuple[str, float]]:
        """The account's identifier kinds and when each was bound (epoch seconds), by kind."""
        ...

    # -- end export --


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    """`translate_errors` for an async block (lost connections become Unavailable)."""
    with translate_errors():
        yield


def _optional_bytes(value: object) -> bytes | None:
    """A binary column value as bytes (drivers return bytes or memoryview), or None."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError("expected a binary column value")


def _row_to_record(row: sa.Row[tuple[object, ...]]) -> AccountRecord:
    m = row._mapping
    return AccountRecord(
        account_id=str(m["account_id"]),
        subject_type=str(m["subject_type"]),
        login_name=str(m["login_name"]),
        password_hash=str(m["password_hash"]),
        status=str(m["status"]),
        accepted_policy_version=int(m["accepted_policy_version"]),
        real_name_level=int(m["real_name_level"]),
        master_key_id=str(m["master_key_id"]),
        data_key_wrapped=_optional_bytes(m["data_key_wrapped"]),
        phone_enc=_optional_bytes(m["phone_enc"]),
        email_enc=_optional_bytes(m["email_enc"]),
        profile_enc=_optional_bytes(m["profile_enc"]),
        created_at=epoch(m["created_at"]),
        updated_at=epoch(m["updated_at"]),
        phone_changed_at=None if m["phone_changed_at"] is None else epoch(m["phone_changed_at"]),
        email_changed_at=None if m["email_changed_at"] is None else epoch(m["email_changed_at"]),
        phone_stale_at=None if m["phone_stale_at"] is None else epoch(m["phone_stale_at"]),
    )


_CHANGED_AT = {"phone_enc": "phone_changed_at", "email_enc": "email_changed_at"}
"""The column that records when each contact column last changed (the cooling-off windows)."""

# Built once: the login path reads the account, then again locked, on every sign-in.
_GET_ACCOUNT = sa.select(accounts).where(accounts.c.account_id == sa.bindparam("account_id"))
_LOCK_ACCOUNT = _GET_ACCOUNT.with_for_update()

# Built once: the login path runs this lookup on every attempt.
_FIND_BY_IDENTIFIER = (
    sa.select(accounts)
    .select_from(identifiers.join(accounts, identifiers.c.account_id == accounts.c.account_id))
    .where(
        identifiers.c.kind == sa.bindparam("kind"),
        identifiers.c.blind_index == sa.bindparam("blind_index"),
    )
)


class SqlAccountRepository:
    """AccountRepository on SQLite or PostgreSQL (SQLAlchemy Core)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def taken_kinds(self, keys: Sequence[IdentifierKey]) -> set[str]:
        """The kinds among `keys` whose blind index already belongs to some account."""
        if not keys:
            return set()
        wanted = sa.or_(
            *(
                sa.and_(identifiers.c.kind == k.kind, identifiers.c.blind_index == k.blind_index)
                for k in keys
            )
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(sa.select(identifiers.c.kind).where(wanted))).all()
        return {str(r.kind) for r in rows}

    async def insert(self, account: NewAccountRecord, keys: Sequence[IdentifierKey]) -> None:
        """Insert the account and its identifiers; raise IdentifierTaken on a duplicate.

        It joins the caller's unit of work, which is unusable after IdentifierTaken
        (PostgreSQL aborts it): let the exception leave the `begin()` block.
        """
        at = utc(account.created_at)
        async with self._db.begin() as conn:
            with translate_errors():
                try:
                    await conn.execute(
                        accounts.insert().values(
                            account_id=account.account_id,
                            subject_type=account.subject_type,
                            login_name=account.login_name,
                            password_hash=account.password_hash,
                            status=account.status,
                            accepted_policy_version=account.accepted_policy_version,
                            real_name_level=account.real_name_level,
                            master_key_id=account.master_key_id,
                            data_key_wrapped=account.data_key_wrapped,
                            phone_enc=account.phone_enc,
                            email_enc=account.email_enc,
                            profile_enc=account.profile_enc,
                            created_at=at,
                            updated_at=at,
                        )
                    )
                except IntegrityError:
                    # The only unique column a caller controls is the login name (the id is random).
                    raise IdentifierTaken("login_name") from None
                for key in keys:
                    try:
                        await conn.execute(
                            identifiers.insert().values(
                                kind=key.kind,
                                blind_index=key.blind_index,
                                account_id=account.account_id,
                                created_at=at,
                            )
                        )
                    except IntegrityError:
                        raise IdentifierTaken(key.kind) from None

    async def get(self, account_id: str) -> AccountRecord | None:
        """The account, or None."""
        async with self._db.connect() as conn:
            row = (await conn.execute(_GET_ACCOUNT, {"account_id": account_id})).first()
        return None if row is None else _row_to_record(row)

    async def find_by_identifier(self, key: IdentifierKey) -> AccountRecord | None:
        """The account holding this identifier, or None."""
        async with self._db.connect() as conn:
            row = (
                await conn.execute(
                    _FIND_BY_IDENTIFIER, {"kind": key.kind, "blind_index": key.blind_index}
                )
            ).first()
        return None if row is None else _row_to_record(row)

    async def set_password_hash(
        self,
        account_id: str,
        password_hash: str,
        now: float,
        *,
        expected_old_hash: str | None = None,
    ) -> bool:
        """Replace the hash (only while it is `expected_old_hash`, if given); False if not.

        The condition sits in the UPDATE itself (compare-and-set), so a rehash
        computed from an old password cannot overwrite a hash that a concurrent
        password change or reset has stored in the meantime.
        """
        condition = accounts.c.account_id == account_id
        if expected_old_hash is not None:
            condition = sa.and_(condition, accounts.c.password_hash == expected_old_hash)
        async with self._db.begin() as conn:
            result = await conn.execute(
                accounts.update()
                .where(condition)
                .values(password_hash=password_hash, updated_at=utc(now))
            )
        return bool(result.rowcount)

    async def get_for_update(self, account_id: str) -> AccountRecord | None:
        """The account, locked until the unit of work ends; None if none.

        On PostgreSQL the row lock (`FOR UPDATE`) makes a second unit of work that
        changes the same account wait for the first, then read what it committed; on
        SQLite the unit of work already holds the database's write lock.
        """
        query = _LOCK_ACCOUNT if self._db.dialect == "postgresql" else _GET_ACCOUNT
        async with self._db.begin() as conn, _translated():
            row = (await conn.execute(query, {"account_id": account_id})).first()
        return None if row is None else _row_to_record(row)

    async def set_contact(
        self, account_id: str, column: str, blob: bytes | None, now: float
    ) -> None:
        """Store a new ciphertext (or None) in `phone_enc` or `email_enc`, and the time of the
        change (`phone_changed_at` or `email_changed_at`).

        A new phone value ends a stale binding: whatever is stored now was just
        proven (or removed), so `phone_stale_at` is cleared with it.
        """
        if column not in _CHANGED_AT:
            raise ValueError("a contact column is phone_enc or email_enc")
        values: dict[str, object] = {
            column: blob,
            _CHANGED_AT[column]: utc(now),
            "updated_at": utc(now),
        }
        if column == "phone_enc":
            values["phone_stale_at"] = None
        async with self._db.begin() as conn, _translated():
            await conn.execute(
                accounts.update().where(accounts.c.account_id == account_id).values(**values)
            )

    async def replace_identifier(
        self, account_id: str, old: IdentifierKey | None, new: IdentifierKey | None, now: float
    ) -> None:
        """Drop the account's `old` identifier row and add `new`; IdentifierTaken if it is held.

        Like `insert`, a duplicate leaves the unit of work unusable: let the error end it.
        """
        async with self._db.begin() as conn, _translated():
            if old is not None:
                await conn.execute(
                    identifiers.delete().where(
                        identifiers.c.kind == old.kind,
                        identifiers.c.blind_index == old.blind_index,
                        identifiers.c.account_id == account_id,
                    )
                )
            if new is not None:
                try:
                    await conn.execute(
                        identifiers.insert().values(
                            kind=new.kind,
                            blind_index=new.blind_index,
                            account_id=account_id,
                            created_at=utc(now),
                        )
                    )
                except IntegrityError:
                    raise IdentifierTaken(new.kind) from None

    async def mark_phone_stale(self, account_id: str, now: float) -> None:
        """Record that the bound phone was reported recycled (`phone_stale_at`)."""
        async with self._db.begin() as conn, _translated():
            await conn.execute(
                accounts.update()
                .where(accounts.c.account_id == account_id)
                .values(phone_stale_at=utc(now), updated_at=utc(now))
            )

    async def raise_policy_version(self, account_id: str, version: int, now: float) -> None:
        """Record that the account accepted `version` (never lowers it)."""
        async with self._db.begin() as conn, _translated():
            await conn.execute(
                accounts.update()
                .where(
                    accounts.c.account_id == account_id,
                    accounts.c.accepted_policy_version < version,
                )
                .values(accepted_policy_version=version, updated_at=utc(now))
            )

    async def set_real_name_level(self, account_id: str, level: int, now: float) -> bool:
        """Set the account's real-name level; False if there is no such account."""
        async with self._db.begin() as conn, _translated():
            result = await conn.execute(
                accounts.update()
                .where(accounts.c.account_id == account_id)
                .values(real_name_level=level, updated_at=utc(now))
            )
        return result.rowcount > 0

    async def stale_data_keys(
        self, active_master_key_id: str, after_account_id: str, limit: int
    ) -> list[StoredDataKey]:
        """Up to `limit` data keys not wrapped under the active master key, by account id."""
        stmt = (
            sa.select(accounts.c.account_id, accounts.c.data_key_wrapped)
            .where(
                accounts.c.master_key_id != active_master_key_id,
                accounts.c.data_key_wrapped.is_not(None),
                accounts.c.account_id > after_account_id,
            )
            .order_by(accounts.c.account_id)
            .limit(limit)
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            StoredDataKey(account_id=str(r.account_id), data_key_wrapped=bytes(r.data_key_wrapped))
            for r in rows
        ]

    async def replace_data_keys(self, updates: Sequence[DataKeyUpdate]) -> int:
        """Apply the updates whose row still holds `old`, in one transaction; return how many.

        The condition on the old value means a key destroyed or replaced in the
        meantime (crypto-shredding, a concurrent rotation) is never overwritten.
        Only `data_key_wrapped` and `master_key_id` change: the encrypted data
        columns and `updated_at` stay as they are.
        """
        if not updates:
            return 0
        changed = 0
        async with self._db.begin() as conn:
            for update in updates:
                result = await conn.execute(
                    accounts.update()
                    .where(
                        accounts.c.account_id == update.account_id,
                        accounts.c.data_key_wrapped == update.old,
                    )
                    .values(data_key_wrapped=update.new, master_key_id=update.master_key_id)
                )
                changed += result.rowcount
        return changed

    # -- issue 14: deactivation --

    async def set_state(
        self,
        account_id: str,
        *,
        expected_status: str,
        status: str,
        data_key_wrapped: bytes | None,
        master_key_id: str,
        now: float,
    ) -> bool:
        """Move the account from `expected_status` to `status` with this data key wrap (or
        none); False if it is not in `expected_status` (compare-and-set in the UPDATE)."""
        async with self._db.begin() as conn, _translated():
            result = await conn.execute(
                accounts.update()
                .where(accounts.c.account_id == account_id, accounts.c.status == expected_status)
                .values(
                    status=status,
                    data_key_wrapped=data_key_wrapped,
                    master_key_id=master_key_id,
                    updated_at=utc(now),
                )
            )
        return result.rowcount > 0

    async def erase(
        self, account_id: str, *, expected_status: str, status: str, login_name: str, now: float
    ) -> bool:
        """Clear the account's personal data, credentials and data key, give it `login_name`
        and `status`, and delete its identifier rows; False if not in `expected_status`.

        The row itself stays (a tombstone): audit records, consents and disclosures
        name the account id, which is random and links to nothing once this is done.
        """
        async with self._db.begin() as conn, _translated():
            result = await conn.execute(
                accounts.update()
                .where(accounts.c.account_id == account_id, accounts.c.status == expected_status)
                .values(
                    status=status,
                    login_name=login_name,
                    password_hash="",
                    data_key_wrapped=None,
                    phone_enc=None,
                    email_enc=None,
                    profile_enc=None,
                    phone_stale_at=None,
                    real_name_level=0,
                    updated_at=utc(now),
                )
            )
            if not result.rowcount:
                return False
            await conn.execute(identifiers.delete().where(identifiers.c.account_id == account_id))
        return True

    # -- end deactivation --

    # -- issue 14: export --
    async def identifiers_of(self, account_id: str) -> list[tuple[str, float]]:
        """The account's identifier kinds and when each was bound (epoch seconds), by kind."""
        stmt = (
            sa.select(identifiers.c.kind, identifiers.c.created_at)
            .where(identifiers.c.account_id == account_id)
            .order_by(identifiers.c.kind)
        )
        async with _translated(), self._db.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(str(r.kind), epoch(r.created_at)) for r in rows]

    # -- end export --


__all__ = [
    "AccountRecord",
    "AccountRepository",
    "DataKeyUpdate",
    "IdentifierKey",
    "IdentifierTaken",
    "NewAccountRecord",
    "SqlAccountRepository",
    "StoredDataKey",
]
