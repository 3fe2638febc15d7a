"""The disclosure log: which client received which of a person's identity fields, why, when.

The privacy policy (三.(一).4) promises the person can see who received their
identity data (PIPL Art. 23). Every release through DirectoryService is one row
per account: the client, the field names released (and which of them masked),
the declared purpose, the time. Field values are never stored here.

`record` joins the caller's unit of work: the directory flow writes the log
before it answers, and a log that cannot be written means nothing is released.
Rows are append-only and kept as long as the audit log (`retention_log_days`,
at least 180); the retention sweep deletes older ones (privacy/retention.py),
and they go with their account (ON DELETE CASCADE).

`page` lists an account's disclosures newest first, keyset-paged by
(time, id) behind an opaque token.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.shared.page_tokens import (
    decode_page_token,
    encode_page_token,
    page_size_of,
)
from xiaohe.identity.server.storage.database import Database, epoch, translate_errors, utc
from xiaohe.identity.server.storage.schema import disclosures

_ID_PREFIX: Final = "dis_"
_ID_BYTES: Final = 12


@dataclass(frozen=True)
class NewDisclosure:
    """One release to record: an account's fields sent to a client for a purpose."""

    account_id: str
    client_id: str
    fields: tuple[str, ...]
    masked: tuple[str, ...]
    purpose: str


@dataclass(frozen=True)
class Disclosure:
    """A recorded release; `at` in epoch seconds."""

    disclosure_id: str
    account_id: str
    client_id: str
    fields: tuple[str, ...]
    masked: tuple[str, ...]
    purpose: str
    at: float


@dataclass(frozen=True)
class DisclosurePage:
    """One page of an account's disclosures, newest first, and the token of the next."""

    disclosures: tuple[Disclosure, ...]
    next_page_token: str


def _names(value: str) -> tuple[str, ...]:
    return tuple(n for n in value.split(",") if n)


class DisclosureLog:
    """Records releases (in the caller's unit of work) and pages an account's."""

    def __init__(
        self,
        database: Database,
        clock: Clock,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._db = database
        self._clock = clock
        self._token_bytes = token_bytes

    def __repr__(self) -> str:
        return "DisclosureLog()"

    async def record(self, releases: Sequence[NewDisclosure]) -> None:
        """Append one row per release, in one statement (joining the caller's transaction)."""
        if not releases:
            return
        at = utc(self._clock.now())
        rows = [
            {
                "disclosure_id": _ID_PREFIX + self._token_bytes(_ID_BYTES).hex(),
                "account_id": r.account_id,
                "client_id": r.client_id,
                "fields": ",".join(r.fields),
                "masked": ",".join(r.masked),
                "purpose": r.purpose,
                "disclosed_at": at,
            }
            for r in releases
        ]
        with translate_errors():
            async with self._db.begin() as conn:
                await conn.execute(disclosures.insert(), rows)

    async def page(self, account_id: str, *, page_size: int, page_token: str) -> DisclosurePage:
        """The account's disclosures newest first, after the cursor in `page_token`."""
        size = page_size_of(page_size)
        t = disclosures.c
        query = sa.select(disclosures).where(t.account_id == account_id)
        if page_token:
            after_at, after_id = decode_page_token(page_token, "ListDisclosures")
            at = utc(after_at)
            query = query.where(
                sa.or_(
                    t.disclosed_at < at,
                    sa.and_(t.disclosed_at == at, t.disclosure_id < after_id),
                )
            )
        query = query.order_by(t.disclosed_at.desc(), t.disclosure_id.desc()).limit(size + 1)
        with translate_errors():
            async with self._db.connect() as conn:
                rows = (await conn.execute(query)).all()
        found = tuple(_disclosure(row._mapping) for row in rows[:size])
        next_token = ""
        if len(rows) > size and found:
            next_token = encode_page_token(found[-1].at, found[-1].disclosure_id)
        return DisclosurePage(found, next_token)


def _disclosure(m: sa.RowMapping) -> Disclosure:
    return Disclosure(
        disclosure_id=str(m["disclosure_id"]),
        account_id=str(m["account_id"]),
        client_id=str(m["client_id"]),
        fields=_names(str(m["fields"])),
        masked=_names(str(m["masked"])),
        purpose=str(m["purpose"]),
        at=epoch(m["disclosed_at"]),
    )


__all__ = [
    "Disclosure",
    "DisclosureLog",
    "DisclosurePage",
    "NewDisclosure",
]
