"""API clients: creation, authentication by id + secret, grants, revocation.

Two live clients never share a name (a partial unique index, migration 0006);
a revoked client's name may be given again.

Secrets are 256 random bits, shown once and stored only as SHA-256: with that
much entropy a slow hash adds nothing, and every RPC authenticates, so the
check must be cheap. Authenticated clients are cached per process for half a
second (`CACHE_SECONDS`, on the monotonic clock): a revocation or a change of
grants takes effect on every worker within that time, without any message
between workers that could be lost (issue 13 asks for one second).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from xiaohe.identity.server.callers.grants import KNOWN_GRANTS, is_known_grant
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import (
    AlreadyExists,
    ClientUnauthenticated,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from xiaohe.identity.server.storage.database import Database, epoch, utc
from xiaohe.identity.server.storage.schema import clients


@dataclass(frozen=True)
class Client:
    """An API client of Xiaohe Identity."""

    client_id: str
    name: str
    grants: frozenset[str]
    created_at: float
    revoked: bool


def hash_secret(secret: str) -> str:
    """The stored form of a client secret."""
    return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()


MAX_NAME_CHARS = 200
MAX_GRANTS = 64
_SHOWN_UNKNOWN = 3
_SHOWN_CHARS = 40


def _shown(value: str) -> str:
    """A caller-given value as an error may quote it: printable, bounded."""
    printable = "".join(ch if ch.isprintable() else "?" for ch in value[:_SHOWN_CHARS])
    return printable + ("…" if len(value) > _SHOWN_CHARS else "")


def _validate_name(name: str) -> str:
    """A client's display name: NFKC, 1-200 characters, one line, no control or bidi characters.

    Names appear in operator listings, logs and audit exports; a line break or a
    right-to-left override there forges or hides what an operator reads.
    """
    name = unicodedata.normalize("NFKC", name).strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(FieldViolation("name", f"must be 1 to {MAX_NAME_CHARS} characters"))
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Co", "Cs") for ch in name):
        raise InvalidArgument(
            FieldViolation("name", "must be one line without control or direction characters")
        )
    return name


def _validate_grants(grants: list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    if len(grants) > MAX_GRANTS:
        raise InvalidArgument(FieldViolation("grants", f"at most {MAX_GRANTS} grants"))
    unknown = sorted(g for g in set(grants) if not is_known_grant(g))
    if unknown:
        shown = ", ".join(repr(_shown(g)) for g in unknown[:_SHOWN_UNKNOWN])
        more = f" and {len(unknown) - _SHOWN_UNKNOWN} more" if len(unknown) > _SHOWN_UNKNOWN else ""
        raise InvalidArgument(
            FieldViolation(
                "grants",
                f"unknown grant(s) {shown}{more}; known: {sorted(KNOWN_GRANTS)},"
                " audience:NAME, field:NAME, field:NAME:full and purpose:NAME",
            )
        )
    return frozenset(grants)


def _name_taken(name: str, holder: str) -> AlreadyExists:
    """The refusal of a name a live client holds; it names that client when known."""
    which = f" ({holder})" if holder else ""
    return AlreadyExists(
        "name",
        f"a live client is already named {_shown(name)!r}{which}: choose another name,"
        " or revoke that client first",
    )


class ClientRegistry:
    """Stores clients in SQL and authenticates callers."""

    CACHE_SECONDS = 0.5

    def __init__(
        self,
        database: Database,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = database
        self._clock = clock
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, str, Client]] = {}

    async def create(self, name: str, grants: list[str] | tuple[str, ...]) -> tuple[Client, str]:
        """Create a client; returns it with its secret (shown only now).

        A name no live client holds, or AlreadyExists: names are how operators tell
        clients apart in listings and audit exports. A revoked client's name is free.
        """
        name = _validate_name(name)
        checked = _validate_grants(grants)
        client_id = "xhc_" + secrets.token_hex(12)
        secret = "xhs_" + secrets.token_urlsafe(32)
        now = self._clock.now()
        try:
            async with self._db.begin() as conn:
                holder = (
                    await conn.execute(
                        sa.select(clients.c.client_id).where(
                            clients.c.name == name, clients.c.revoked_at.is_(None)
                        )
                    )
                ).scalar()
                if holder is not None:
                    raise _name_taken(name, str(holder))
                await conn.execute(
                    clients.insert().values(
                        client_id=client_id,
                        name=name,
                        secret_hash=hash_secret(secret),
                        grants=json.dumps(sorted(checked)),
                        created_at=utc(now),
                        revoked_at=None,
                    )
                )
        except IntegrityError:
            # A concurrent create took the name between the check and the insert: the
            # unique index on live names (migration 0006) is what makes this atomic.
            raise _name_taken(name, "") from None
        return Client(client_id, name, checked, now, False), secret

    async def list_all(self) -> list[Client]:
        """Every client, newest first."""
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(clients.select().order_by(clients.c.created_at.desc()))
            ).all()
        return [self._from_row(r) for r in rows]

    async def get(self, client_id: str) -> Client:
        """One client by id."""
        row = await self._row(client_id)
        if row is None:
            raise NotFound("no such client")
        return self._from_row(row)

    async def names(self, client_ids: Iterable[str]) -> dict[str, str]:
        """The names of these clients (revoked ones too); ids never seen are left out."""
        wanted = sorted(set(client_ids))
        if not wanted:
            return {}
        query = sa.select(clients.c.client_id, clients.c.name).where(
            clients.c.client_id.in_(wanted)
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {str(r.client_id): str(r.name) for r in rows}

    async def revoke(self, client_id: str) -> Client:
        """Revoke a client: its secret stops working."""
        async with self._db.begin() as conn:
            await conn.execute(
                clients.update()
                .where(clients.c.client_id == client_id, clients.c.revoked_at.is_(None))
                .values(revoked_at=utc(self._clock.now()))
            )
        self._cache.pop(client_id, None)
        # Revoked now or before: either way the stored client; NotFound if it never existed.
        return await self.get(client_id)

    async def set_grants(self, client_id: str, grants: list[str]) -> Client:
        """Replace a client's grants."""
        checked = _validate_grants(grants)
        async with self._db.begin() as conn:
            result = await conn.execute(
                clients.update()
                .where(clients.c.client_id == client_id)
                .values(grants=json.dumps(sorted(checked)))
            )
        if result.rowcount == 0:
            raise NotFound("no such client")
        self._cache.pop(client_id, None)
        return await self.get(client_id)

    async def authenticate(self, client_id: str, secret: str) -> Client:
        """The client for these credentials, or ClientUnauthenticated."""
        if not client_id or not secret:
            raise ClientUnauthenticated("client credentials are required")
        now = self._monotonic()
        cached = self._cache.get(client_id)
        if cached is not None and cached[0] > now:
            _, stored_hash, client = cached
        else:
            row = await self._row(client_id)
            if row is None:
                hmac.compare_digest(hash_secret(secret), hash_secret(""))
                raise ClientUnauthenticated("invalid client credentials")
            client, stored_hash = self._from_row(row), row.secret_hash
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[client_id] = (now + self.CACHE_SECONDS, stored_hash, client)
        if not hmac.compare_digest(hash_secret(secret), stored_hash) or client.revoked:
            raise ClientUnauthenticated("invalid client credentials")
        return client

    async def _row(self, client_id: str) -> sa.Row[tuple[object, ...]] | None:
        async with self._db.connect() as conn:
            return (
                await conn.execute(clients.select().where(clients.c.client_id == client_id))
            ).first()

    @staticmethod
    def _from_row(row: sa.Row[tuple[object, ...]]) -> Client:
        m = row._mapping
        created = m["created_at"]
        assert isinstance(created, datetime)
        return Client(
            client_id=str(m["client_id"]),
            name=str(m["name"]),
            grants=frozenset(json.loads(str(m["grants"]))),
            created_at=epoch(created),
            revoked=m["revoked_at"] is not None,
        )
