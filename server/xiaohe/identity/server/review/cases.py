"""Review cases in SQL: open, list (oldest first), read, decide, annotate.

Personal data in a case (the fields a reviewer compares, decision reasons,
notes) is sealed with AES-256-GCM under the case's own data key, wrapped by
the master key like an account's (`crypto/envelope.py`); the associated data
binds each blob to its case and its place, so a blob copied to another case or
column does not open. A case about an account keeps its own key rather than
the account's: a recovery case may match no account at all, and a case must
stay readable to its reviewers whatever happens to the account meanwhile.

Every write joins the caller's unit of work (`Database.begin()`): a case opens
with the flow step that asks for it, and a decision commits with the change it
approves, or neither does. Deciding is a conditional UPDATE on the state the
decider read, so of two reviewers deciding one case at once exactly one wins;
the other gets Conflict.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.crypto.envelope import DataKeyCipher, WrappedDataKey, field_aad
from xiaohe.identity.server.errors import (
    Conflict,
    FailedPrecondition,
    NotFound,
)
from xiaohe.identity.server.review.models import (
    SUBJECT_TYPES,
    CaseDecision,
    CaseKind,
    CaseNote,
    CasePage,
    CaseState,
    CaseSummary,
    ReviewCase,
    Verdict,
)
from xiaohe.identity.server.shared.page_tokens import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
)
from xiaohe.identity.server.storage.database import (
    Database,
    SqlConnection,
    epoch,
    translate_errors,
    utc,
)
from xiaohe.identity.server.storage.schema import review_cases, review_decisions, review_notes

CASE_ID_PREFIX: Final = "case_"
MAX_TEXT_CHARS: Final = 2000
"""Longest reason or note."""
_ID_BYTES: Final = 12
HELD_FOR_DEACTIVATION: Final = b"held-for-deactivation"
"""`data_key_wrapped` of a case whose account is in its deactivation cooling-off period: the
key is then kept only under the account's pending key (issue 14, `hand_over_keys`)."""


def _aad(case_id: str, place: str) -> bytes:
    """Associated data of one sealed blob of a case."""
    return field_aad(case_id, place)


class ReviewCases:
    """The cases store (steps and reasons in the module docstring)."""

    def __init__(
        self,
        database: Database,
        cipher: DataKeyCipher,
        clock: Clock,
        token_hex: Callable[[int], str] = secrets.token_hex,
    ) -> None:
        self._db = database
        self._cipher = cipher
        self._clock = clock
        self._token_hex = token_hex

    def __repr__(self) -> str:
        return "ReviewCases()"

    async def open(
        self,
        *,
        kind: CaseKind,
        account_id: str | None,
        subject_type: str,
        fields: Mapping[str, str],
        document_ids: Sequence[str],
        reference: str,
    ) -> str:
        """Open a case (joins the caller's unit of work); returns its id."""
        if subject_type not in SUBJECT_TYPES:
            raise ValueError("subject_type must be natural_person or legal_person")
        if len(reference) > review_cases.c.reference.type.length:  # type: ignore[attr-defined]
            raise ValueError("reference too long")
        case_id = CASE_ID_PREFIX + self._token_hex(_ID_BYTES)
        key = self._cipher.new_data_key()
        sealed = self._cipher.encrypt_field(
            key.key, json.dumps(dict(fields), ensure_ascii=False), _aad(case_id, "fields")
        )
        with translate_errors():
            async with self._db.begin() as conn:
                await conn.execute(
                    review_cases.insert().values(
                        case_id=case_id,
                        kind=CaseKind(kind).value,
                        state=CaseState.OPEN.value,
                        account_id=account_id or None,
                        subject_type=subject_type,
                        reference=reference,
                        document_ids=json.dumps(list(document_ids)),
                        data_key_wrapped=key.wrapped.to_bytes(),
                        fields_enc=sealed,
                        opened_at=utc(self._clock.now()),
                    )
                )
        return case_id

    async def page(
        self,
        *,
        kind: CaseKind | None,
        state: CaseState | None,
        page_size: int,
        page_token: str,
    ) -> CasePage:
        """Cases oldest first, filtered by kind and state, after the cursor in `page_token`."""
        size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        query = sa.select(
            review_cases.c.case_id,
            review_cases.c.kind,
            review_cases.c.state,
            review_cases.c.subject_type,
            review_cases.c.opened_at,
            review_cases.c.decided_at,
        )
        if kind is not None:
            query = query.where(review_cases.c.kind == kind.value)
        if state is not None:
            query = query.where(review_cases.c.state == state.value)
        if page_token:
            after_at, after_id = decode_page_token(page_token, "ListCases")
            at = utc(after_at)
            query = query.where(
                sa.or_(
                    review_cases.c.opened_at > at,
                    sa.and_(review_cases.c.opened_at == at, review_cases.c.case_id > after_id),
                )
            )
        query = query.order_by(review_cases.c.opened_at, review_cases.c.case_id).limit(size + 1)
        with translate_errors():
            async with self._db.connect() as conn:
                rows = (await conn.execute(query)).all()
        summaries = tuple(_summary(row._mapping) for row in rows[:size])
        next_token = ""
        if len(rows) > size and summaries:
            last = summaries[-1]
            next_token = encode_page_token(last.opened_at, last.case_id)
        return CasePage(summaries, next_token)

    async def get(self, case_id: str) -> ReviewCase:
        """The whole case, decrypted; NotFound if there is none."""
        with translate_errors():
            async with self._db.connect() as conn:
                row = (
                    await conn.execute(
                        review_cases.select().where(review_cases.c.case_id == case_id)
                    )
                ).first()
                if row is None:
                    raise NotFound("no such case")
                decisions = (
                    await conn.execute(
                        review_decisions.select()
                        .where(review_decisions.c.case_id == case_id)
                        .order_by(review_decisions.c.seq)
                    )
                ).all()
                notes = (
                    await conn.execute(
                        review_notes.select()
                        .where(review_notes.c.case_id == case_id)
                        .order_by(review_notes.c.at, review_notes.c.note_id)
                    )
                ).all()
                m = row._mapping
                key = self._unwrap(m["data_key_wrapped"])
                fields = json.loads(
                    self._cipher.decrypt_field(key, m["fields_enc"], _aad(case_id, "fields"))
                )
                return ReviewCase(
                    summary=_summary(m),
                    account_id=m["account_id"],
                    reference=m["reference"],
                    fields={str(k): str(v) for k, v in fields.items()},
                    document_ids=tuple(json.loads(m["document_ids"])),
                    first_approver=m["first_approver"],
                    decisions=tuple(
                        CaseDecision(
                            reviewer_account_id=d._mapping["reviewer_account_id"],
                            verdict=Verdict(d._mapping["decision"]),
                            reason=self._open(key, case_id, d._mapping, "decision"),
                            at=epoch(d._mapping["at"]),
                        )
                        for d in decisions
                    ),
                    notes=tuple(
                        CaseNote(
                            author_account_id=n._mapping["author_account_id"],
                            text=self._open(key, case_id, n._mapping, "note"),
                            at=epoch(n._mapping["at"]),
                        )
                        for n in notes
                    ),
                )

    async def decide(
        self,
        case: ReviewCase,
        *,
        reviewer_account_id: str,
        verdict: Verdict,
        reason: str,
        new_state: CaseState,
    ) -> None:
        """Move `case` from the state it was read in to `new_state` and record the decision.

        Joins the caller's unit of work. Conflict if the case moved meanwhile
        (another reviewer decided first): nothing is written.
        """
        now = self._clock.now()
        values: dict[str, Any] = {"state": new_state.value}
        if new_state is CaseState.AWAITING_SECOND_APPROVAL:
            values["first_approver"] = reviewer_account_id
        if new_state.final:
            values["decided_at"] = utc(now)
        with translate_errors():
            async with self._db.begin() as conn:
                moved = await conn.execute(
                    review_cases.update()
                    .where(
                        review_cases.c.case_id == case.case_id,
                        review_cases.c.state == case.state.value,
                    )
                    .values(**values)
                )
                if moved.rowcount != 1:
                    raise Conflict("the case was decided meanwhile; read it again")
                decision_id = "dec_" + self._token_hex(_ID_BYTES)
                key = await self._key(conn, case.case_id)
                # The case row is locked by the UPDATE above: nobody else counts meanwhile.
                seq = (
                    await conn.execute(
                        sa.select(sa.func.count()).where(review_decisions.c.case_id == case.case_id)
                    )
                ).scalar_one() + 1
                await conn.execute(
                    review_decisions.insert().values(
                        decision_id=decision_id,
                        case_id=case.case_id,
                        seq=seq,
                        reviewer_account_id=reviewer_account_id,
                        decision=verdict.value,
                        reason_enc=self._cipher.encrypt_field(
                            key, reason, _aad(case.case_id, f"decision:{decision_id}")
                        ),
                        at=utc(now),
                    )
                )

    async def add_note(self, case_id: str, *, author_account_id: str, text: str) -> None:
        """Append a note (joins the caller's unit of work); NotFound if there is no case."""
        note_id = "note_" + self._token_hex(_ID_BYTES)
        with translate_errors():
            async with self._db.begin() as conn:
                key = await self._key(conn, case_id)
                await conn.execute(
                    review_notes.insert().values(
                        note_id=note_id,
                        case_id=case_id,
                        author_account_id=author_account_id,
                        text_enc=self._cipher.encrypt_field(
                            key, text, _aad(case_id, f"note:{note_id}")
                        ),
                        at=utc(self._clock.now()),
                    )
                )

    # -- issue 14: deactivation --

    async def about(self, account_id: str) -> list[ReviewCase]:
        """Every case about the account, oldest first, fields decrypted (its export)."""
        query = (
            sa.select(review_cases.c.case_id)
            .where(review_cases.c.account_id == account_id)
            .order_by(review_cases.c.opened_at, review_cases.c.case_id)
        )
        with translate_errors():
            async with self._db.connect() as conn:
                case_ids = [str(r.case_id) for r in (await conn.execute(query)).all()]
        return [await self.get(case_id) for case_id in case_ids]

    async def open_count(self, account_id: str) -> int:
        """How many cases about the account are not decided yet (an obligation)."""
        query = (
            sa.select(sa.func.count())
            .select_from(review_cases)
            .where(
                review_cases.c.account_id == account_id,
                review_cases.c.state.not_in([CaseState.APPROVED.value, CaseState.REJECTED.value]),
            )
        )
        with translate_errors():
            async with self._db.connect() as conn:
                return int((await conn.execute(query)).scalar_one())

    async def hand_over_keys(self, account_id: str) -> dict[str, bytes]:
        """Take the data keys of the cases about the account off their rows (a deactivation
        request; in its unit of work) and return them by case id: the caller keeps them
        under the account's pending key, so no copy of the database opens these cases once
        that key is destroyed. Until `take_back_keys`, reading such a case is
        FailedPrecondition."""
        query = sa.select(review_cases.c.case_id, review_cases.c.data_key_wrapped).where(
            review_cases.c.account_id == account_id
        )
        keys: dict[str, bytes] = {}
        with translate_errors():
            async with self._db.begin() as conn:
                for row in (await conn.execute(query)).all():
                    wrapped = bytes(row.data_key_wrapped)
                    if wrapped == HELD_FOR_DEACTIVATION:
                        continue
                    keys[str(row.case_id)] = self._cipher.unwrap(WrappedDataKey.from_bytes(wrapped))
                    await conn.execute(
                        review_cases.update()
                        .where(review_cases.c.case_id == row.case_id)
                        .values(data_key_wrapped=HELD_FOR_DEACTIVATION)
                    )
        return keys

    async def take_back_keys(self, keys: Mapping[str, bytes]) -> None:
        """Wrap the keys `hand_over_keys` returned under the master key again (a cancelled
        deactivation; in its unit of work)."""
        with translate_errors():
            async with self._db.begin() as conn:
                for case_id, key in keys.items():
                    await conn.execute(
                        review_cases.update()
                        .where(
                            review_cases.c.case_id == case_id,
                            review_cases.c.data_key_wrapped == HELD_FOR_DEACTIVATION,
                        )
                        .values(data_key_wrapped=self._cipher.wrap(key).to_bytes())
                    )

    async def documents_about(self, account_id: str) -> list[str]:
        """The ids of the documents the cases about the account name (no key needed)."""
        query = sa.select(review_cases.c.document_ids).where(
            review_cases.c.account_id == account_id
        )
        with translate_errors():
            async with self._db.connect() as conn:
                lists = (await conn.execute(query)).scalars().all()
        return sorted({d for text in lists for d in json.loads(text)})

    async def forget_account(self, account_id: str) -> int:
        """Delete the cases about the account, with their decisions and notes (each case's
        data key goes with its row); in the caller's unit of work. Returns how many."""
        with translate_errors():
            async with self._db.begin() as conn:
                result = await conn.execute(
                    review_cases.delete().where(review_cases.c.account_id == account_id)
                )
        return int(result.rowcount)

    # -- end deactivation --

    async def _key(self, conn: SqlConnection, case_id: str) -> bytes:
        """The case's data key, unwrapped; NotFound if there is no case."""
        wrapped = (
            await conn.execute(
                sa.select(review_cases.c.data_key_wrapped).where(review_cases.c.case_id == case_id)
            )
        ).scalar()
        if wrapped is None:
            raise NotFound("no such case")
        return self._unwrap(wrapped)

    def _unwrap(self, wrapped: bytes) -> bytes:
        """A case's data key; FailedPrecondition while its account's deactivation holds it."""
        if bytes(wrapped) == HELD_FOR_DEACTIVATION:
            raise FailedPrecondition("the case's account is being deactivated")
        return self._cipher.unwrap(WrappedDataKey.from_bytes(bytes(wrapped)))

    def _open(self, key: bytes, case_id: str, m: RowMapping, place: str) -> str:
        """A decision's reason or a note's text, decrypted."""
        if place == "decision":
            return self._cipher.decrypt_field(
                key, m["reason_enc"], _aad(case_id, f"decision:{m['decision_id']}")
            )
        return self._cipher.decrypt_field(key, m["text_enc"], _aad(case_id, f"note:{m['note_id']}"))


def _summary(m: RowMapping) -> CaseSummary:
    """A queue row as a summary."""
    return CaseSummary(
        case_id=m["case_id"],
        kind=CaseKind(m["kind"]),
        state=CaseState(m["state"]),
        subject_type=m["subject_type"],
        opened_at=epoch(m["opened_at"]),
        decided_at=None if m["decided_at"] is None else epoch(m["decided_at"]),
    )


__all__ = [
    "CASE_ID_PREFIX",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MAX_TEXT_CHARS",
    "ReviewCases",
]
