"""Rights requests in SQL: a person's requests under PIPL Art. 44-50 and their answers.

A request has a kind (access, copy, correction, deletion, withdrawal of consent,
complaint), the person's free text, the client that relayed it, when it was
filed and when the reply is due (`privacy/calendar.py`). Its state moves once:

    OPEN -> RESOLVED (outcome FULFILLED | PARTLY_FULFILLED | REFUSED, a note, who, when)

The free text and the operator's note are personal data (they may quote names,
numbers, addresses): both are sealed with AES-256-GCM under the *account's* data
key, with associated data naming the request and the place, so a blob copied to
another request or column does not open. Using the account's key (not one of
the request's own, as review cases do) means that crypto-shredding the account
(deactivation, issue 14) makes its requests' texts unreadable with the rest of
its data; the rows stay, with kind, dates and outcome, as the record that the
request was answered in time. A text that can no longer be opened reads as ""
with `erased` set.

Every write joins the caller's unit of work (`Database.begin()`), so a request
exists only with its audit record. Resolving is a conditional UPDATE on the
OPEN state: of two operators resolving one request at once exactly one wins.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final, Protocol

import sqlalchemy as sa

from xiaohe.identity.server.crypto.envelope import DataKeyCipher, field_aad
from xiaohe.identity.server.errors import (
    FailedPrecondition,
    NotFound,
)
from xiaohe.identity.server.shared.page_tokens import (
    decode_page_token,
    encode_page_token,
    page_size_of,
)
from xiaohe.identity.server.storage.database import Database, epoch, translate_errors, utc
from xiaohe.identity.server.storage.schema import rights_requests

REQUEST_ID_PREFIX: Final = "rrq_"
REQUEST_ID_SHAPE: Final = re.compile(r"rrq_[0-9a-f]{24}")
"""A request id as `new_id` makes it; anything else never names a request."""
_ID_BYTES: Final = 12
_DETAIL_PLACE: Final = "rights_request_detail"
_NOTE_PLACE: Final = "rights_request_note"


class RequestKind(enum.StrEnum):
    """What the person asks for (privacy policy 五)."""

    ACCESS = "access"
    COPY = "copy"
    CORRECTION = "correction"
    DELETION = "deletion"
    WITHDRAWAL = "withdrawal"
    COMPLAINT = "complaint"


class RequestState(enum.StrEnum):
    """Open until an operator resolves it."""

    OPEN = "open"
    RESOLVED = "resolved"


class Outcome(enum.StrEnum):
    """How a request was answered."""

    FULFILLED = "fulfilled"
    PARTLY_FULFILLED = "partly_fulfilled"
    REFUSED = "refused"


class AccountDataKeys(Protocol):
    """The account's data key (`AccountService.data_key`); NotFound once it is destroyed."""

    async def data_key(self, account_id: str) -> bytes:
        """The unwrapped data key of the account."""
        ...


@dataclass(frozen=True)
class NewRightsRequest:
    """A request to store; `due_at` and `filed_at` in epoch seconds."""

    request_id: str
    account_id: str
    kind: RequestKind
    detail: str
    client_id: str
    filed_at: float
    due_on: date
    due_at: float


@dataclass(frozen=True)
class RightsRequest:
    """A stored request, its texts opened; `erased` when the account's key is gone."""

    request_id: str
    account_id: str
    kind: RequestKind
    state: RequestState
    detail: str
    client_id: str
    filed_at: float
    due_on: date
    due_at: float
    outcome: Outcome | None
    note: str
    resolved_by: str
    resolved_at: float | None
    erased: bool

    def overdue_at(self, now: float) -> bool:
        """Whether the request is open and past its due date at `now`."""
        return self.state is RequestState.OPEN and now >= self.due_at


@dataclass(frozen=True)
class RequestPage:
    """One page of requests and the token of the next ("" at the end)."""

    requests: tuple[RightsRequest, ...]
    next_page_token: str


_FILING_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")


def _filing_lock_key(account_id: str) -> int:
    """The advisory lock key of an account's filings: 8 bytes of SHA-256, signed."""
    digest = hashlib.sha256(b"xiaohe.identity.rights_requests:" + account_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _count_open(account_id: str) -> sa.Select[int]:
    t = rights_requests.c
    return sa.select(sa.func.count()).where(
        t.account_id == account_id, t.state == RequestState.OPEN.value
    )


class RightsRequests:
    """The requests store (states and sealing in the module docstring)."""

    def __init__(
        self,
        database: Database,
        cipher: DataKeyCipher,
        keys: AccountDataKeys,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._db = database
        self._cipher = cipher
        self._keys = keys
        self._token_bytes = token_bytes

    def __repr__(self) -> str:
        return "RightsRequests()"

    def new_id(self) -> str:
        """A fresh request id (`rrq_` + 24 hex digits)."""
        raw = self._token_bytes(_ID_BYTES)
        if len(raw) != _ID_BYTES:
            raise ValueError("the randomness source returned the wrong number of bytes")
        return REQUEST_ID_PREFIX + raw.hex()

    async def add(self, new: NewRightsRequest) -> None:
        """Store a request, its text sealed under the account's key (caller's unit of work)."""
        detail_enc = None
        if new.detail:
            key = await self._keys.data_key(new.account_id)
            detail_enc = self._cipher.encrypt_field(
                key, new.detail, field_aad(new.request_id, _DETAIL_PLACE)
            )
        with translate_errors():
            async with self._db.begin() as conn:
                await conn.execute(
                    rights_requests.insert().values(
                        request_id=new.request_id,
                        account_id=new.account_id,
                        kind=new.kind.value,
                        state=RequestState.OPEN.value,
                        detail_enc=detail_enc,
                        client_id=new.client_id,
                        filed_at=utc(new.filed_at),
                        due_on=new.due_on.isoformat(),
                        due_at=utc(new.due_at),
                    )
                )

    async def count_open_for_filing(self, account_id: str) -> int:
        """How many of the account's requests are open, counted in the caller's unit of work
        with the account's filings serialised until it ends.

        SQLite's write transaction already holds the one write lock. On PostgreSQL a
        transaction-scoped advisory lock per account does it: row locks cannot, since
        the rival filing inserts a row the count has not seen.
        """
        with translate_errors():
            async with self._db.begin() as conn:
                if self._db.dialect == "postgresql":
                    await conn.execute(_FILING_LOCK, {"key": _filing_lock_key(account_id)})
                return int((await conn.execute(_count_open(account_id))).scalar_one())

    async def get(self, request_id: str) -> RightsRequest:
        """One request, its texts opened; NotFound if there is none."""
        query = rights_requests.select().where(rights_requests.c.request_id == request_id)
        with translate_errors():
            async with self._db.connect() as conn:
                row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound("no such request")
        return await self._open(row._mapping)

    async def of_account(self, account_id: str, *, page_size: int, page_token: str) -> RequestPage:
        """The account's requests, newest first, after the cursor in `page_token`."""
        size = page_size_of(page_size)
        t = rights_requests.c
        query = sa.select(rights_requests).where(t.account_id == account_id)
        if page_token:
            after_at, after_id = decode_page_token(page_token, "ListRequests")
            at = utc(after_at)
            query = query.where(
                sa.or_(t.filed_at < at, sa.and_(t.filed_at == at, t.request_id < after_id))
            )
        query = query.order_by(t.filed_at.desc(), t.request_id.desc()).limit(size + 1)
        rows = await self._rows(query)
        found = await self._open_page(rows[:size])
        token = ""
        if len(rows) > size and found:
            token = encode_page_token(found[-1].filed_at, found[-1].request_id)
        return RequestPage(found, token)

    async def queue(
        self,
        *,
        state: RequestState | None,
        late_at: float | None,
        page_size: int,
        page_token: str,
    ) -> RequestPage:
        """Requests by due date, soonest first: of one state (or any), and only those late at
        `late_at` (open and due by then) when it is given."""
        size = page_size_of(page_size)
        t = rights_requests.c
        query = sa.select(rights_requests)
        if late_at is not None:
            query = query.where(t.state == RequestState.OPEN.value, t.due_at <= utc(late_at))
        elif state is not None:
            query = query.where(t.state == state.value)
        if page_token:
            after_at, after_id = decode_page_token(page_token, "ListRightsRequests")
            at = utc(after_at)
            query = query.where(
                sa.or_(t.due_at > at, sa.and_(t.due_at == at, t.request_id > after_id))
            )
        query = query.order_by(t.due_at, t.request_id).limit(size + 1)
        rows = await self._rows(query)
        found = await self._open_page(rows[:size])
        token = ""
        if len(rows) > size and found:
            token = encode_page_token(found[-1].due_at, found[-1].request_id)
        return RequestPage(found, token)

    async def count_late(self, now: float) -> int:
        """How many requests are open and past their due date at `now`."""
        t = rights_requests.c
        query = sa.select(sa.func.count()).where(
            t.state == RequestState.OPEN.value, t.due_at <= utc(now)
        )
        with translate_errors():
            async with self._db.connect() as conn:
                return int((await conn.execute(query)).scalar_one())

    async def resolve(
        self,
        request: RightsRequest,
        *,
        outcome: Outcome,
        note: str,
        resolved_by: str,
        at: float,
    ) -> bool:
        """Mark an open request resolved (caller's unit of work); False when it is no longer
        open (another operator won). The note of an account whose key was destroyed is not
        kept: no key may protect it, and nobody is left to read it. While a deactivation
        cools off the key is only held aside: FailedPrecondition, resolve it later (a
        sign-in brings the account back; completion makes its texts go)."""
        note_enc = None
        if note:
            try:
                key = await self._keys.data_key(request.account_id)
            except NotFound:
                key = None
            if key is not None:
                note_enc = self._cipher.encrypt_field(
                    key, note, field_aad(request.request_id, _NOTE_PLACE)
                )
        t = rights_requests.c
        update = (
            rights_requests.update()
            .where(t.request_id == request.request_id, t.state == RequestState.OPEN.value)
            .values(
                state=RequestState.RESOLVED.value,
                outcome=outcome.value,
                note_enc=note_enc,
                resolved_by=resolved_by,
                resolved_at=utc(at),
            )
        )
        with translate_errors():
            async with self._db.begin() as conn:
                result = await conn.execute(update)
        return bool(result.rowcount == 1)

    async def _rows(self, query: sa.Select[tuple[object, ...]]) -> list[sa.RowMapping]:
        with translate_errors():
            async with self._db.connect() as conn:
                return [row._mapping for row in (await conn.execute(query)).all()]

    async def _open_page(self, rows: Sequence[sa.RowMapping]) -> tuple[RightsRequest, ...]:
        """The requests of rows, each account's key looked up once for the page."""
        keys: dict[str, bytes | NotFound | FailedPrecondition] = {}

        async def key_of(account_id: str) -> bytes:
            if account_id not in keys:
                try:
                    keys[account_id] = await self._keys.data_key(account_id)
                except (NotFound, FailedPrecondition) as exc:
                    keys[account_id] = exc
            key = keys[account_id]
            if isinstance(key, bytes):
                return key
            raise key

        return tuple([await self._open(row, key_of) for row in rows])

    async def _open(
        self, m: sa.RowMapping, key_of: Callable[[str], Awaitable[bytes]] | None = None
    ) -> RightsRequest:
        """The request of a row, its sealed texts opened with the account's key (looked up by
        `key_of`, by default the account's key store)."""
        request_id, account_id = str(m["request_id"]), str(m["account_id"])
        detail_enc, note_enc = m["detail_enc"], m["note_enc"]
        detail = note = ""
        erased = False
        if detail_enc is not None or note_enc is not None:
            try:
                key = await (key_of or self._keys.data_key)(account_id)
                if detail_enc is not None:
                    detail = self._cipher.decrypt_field(
                        key, bytes(detail_enc), field_aad(request_id, _DETAIL_PLACE)
                    )
                if note_enc is not None:
                    note = self._cipher.decrypt_field(
                        key, bytes(note_enc), field_aad(request_id, _NOTE_PLACE)
                    )
            # The account's key was destroyed (crypto-shredded), or is held aside while a
            # deactivation cools off: either way the texts cannot be read now.
            except (NotFound, FailedPrecondition):
                detail = note = ""
                erased = True
        outcome = m["outcome"]
        resolved_at = m["resolved_at"]
        return RightsRequest(
            request_id=request_id,
            account_id=account_id,
            kind=RequestKind(m["kind"]),
            state=RequestState(m["state"]),
            detail=detail,
            client_id=str(m["client_id"]),
            filed_at=epoch(m["filed_at"]),
            due_on=date.fromisoformat(str(m["due_on"])),
            due_at=epoch(m["due_at"]),
            outcome=None if outcome is None else Outcome(outcome),
            note=note,
            resolved_by=str(m["resolved_by"] or ""),
            resolved_at=None if resolved_at is None else epoch(resolved_at),
            erased=erased,
        )


__all__ = [
    "REQUEST_ID_PREFIX",
    "REQUEST_ID_SHAPE",
    "AccountDataKeys",
    "NewRightsRequest",
    "Outcome",
    "RequestKind",
    "RequestPage",
    "RequestState",
    "RightsRequest",
    "RightsRequests",
]
