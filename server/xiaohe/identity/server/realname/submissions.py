"""Real-name submissions and verified claims: their storage and their states (SECURITY.md I1).

A submission holds what the person claimed (names, ID numbers, address) only
encrypted, as one JSON document under the account's data key, bound to the
submission by its associated data. Its state moves once:

    IN_REVIEW -> VERIFIED | REJECTED        (a reviewer decides: `decide`)
    VERIFIED | REJECTED                     (decided when submitted)

with a reason, the level it earned and who decided. The flow computes the
verdict before it records anything, so no submission waits in PENDING here.

A verified claim is kept in `real_name_claims` under a blind index: the ID
document (type and number) of a natural person, the organisation code of an
organisation (characters 9-17 of its USCC, so a USCC and the 9-character code
of the same organisation are one claim). Its primary key lets at most one
account hold a claim, under any concurrency: `claim` inserts with ON CONFLICT
DO NOTHING and reports whether the claim is the caller's.
"""

from __future__ import annotations

import enum
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.crypto.envelope import DataKeyCipher, field_aad
from xiaohe.identity.server.realname.documents import AccountDataKeys, DocumentDatabase
from xiaohe.identity.server.shared.identifiers import IdType
from xiaohe.identity.server.storage.database import epoch, translate_errors, utc
from xiaohe.identity.server.storage.schema import real_name_claims, real_name_submissions

_ID_PREFIX: Final = "rns_"
_ID_BYTES: Final = 12
_DETAILS_FIELD: Final = "real_name_details"
_REASON_FIELD: Final = "real_name_reason"
_MAX_REASON: Final = 200


class State(enum.Enum):
    """Where a submission stands (the proto's RealNameState without NONE)."""

    PENDING = "pending"
    IN_REVIEW = "in_review"
    VERIFIED = "verified"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Submission:
    """A stored submission, without its details (see `SubmissionStore.details`)."""

    submission_id: str
    account_id: str
    subject_type: str
    state: State
    reason: str
    level: int
    verifier: str
    claim: str
    document_ids: tuple[str, ...]
    submitted_at: float
    decided_at: float | None
    decided_by: str | None


class SubmissionStore:
    """Stores submissions and verified claims (joining the caller's unit of work)."""

    def __init__(
        self,
        *,
        database: DocumentDatabase,
        cipher: DataKeyCipher,
        account_keys: AccountDataKeys,
        blind_index: BlindIndex,
        clock: Clock,
        dialect: str,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._db = database
        self._cipher = cipher
        self._keys = account_keys
        self._blind = blind_index
        self._clock = clock
        self._dialect = dialect
        self._token_bytes = token_bytes

    def __repr__(self) -> str:
        return "SubmissionStore()"

    # -- claims -------------------------------------------------------------------------

    def natural_claim(self, id_type: IdType, id_number: str) -> str:
        """The claim of a natural person's identity document (type and number)."""
        return "p:" + self._blind.compute("real_name_person", f"{id_type.name}:{id_number}")

    def legal_claim(self, uscc_or_org_code: str) -> str:
        """The claim of an organisation: its organisation code (inside its USCC)."""
        code = uscc_or_org_code[8:17] if len(uscc_or_org_code) == 18 else uscc_or_org_code
        return "o:" + self._blind.compute("real_name_org", code)

    async def claim(self, claim: str, account_id: str, submission_id: str) -> bool:
        """Make `claim` the account's; False if another account holds it (nothing changes)."""
        values = {
            "claim": claim,
            "account_id": account_id,
            "submission_id": submission_id,
            "verified_at": utc(self._clock.now()),
        }
        insert_of = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        stmt = insert_of(real_name_claims).values(**values).on_conflict_do_nothing()
        async with self._db.begin() as conn:
            with translate_errors():
                await conn.execute(stmt)
                holder = (
                    await conn.execute(
                        sa.select(real_name_claims.c.account_id).where(
                            real_name_claims.c.claim == claim
                        )
                    )
                ).scalar_one()
        return str(holder) == account_id

    async def claimed_by_other(self, claim: str, account_id: str) -> bool:
        """Whether another account holds `claim` already."""
        query = sa.select(real_name_claims.c.account_id).where(real_name_claims.c.claim == claim)
        async with self._db.connect() as conn:
            with translate_errors():
                holder = (await conn.execute(query)).scalar_one_or_none()
        return holder is not None and str(holder) != account_id

    # -- issue 14: deactivation --

    async def pending_count(self, account_id: str) -> int:
        """How many of the account's submissions still wait for a decision (an obligation)."""
        query = (
            sa.select(sa.func.count())
            .select_from(real_name_submissions)
            .where(
                real_name_submissions.c.account_id == account_id,
                real_name_submissions.c.decided_at.is_(None),
            )
        )
        async with self._db.connect() as conn:
            with translate_errors():
                return int((await conn.execute(query)).scalar_one())

    async def forget_account(self, account_id: str) -> int:
        """Delete the account's verified claims (so its name + ID number or USCC may be
        verified again by a new account) and its submissions (their details were under the
        account's data key); in the caller's unit of work. Returns the rows deleted."""
        async with self._db.begin() as conn:
            with translate_errors():
                claims = await conn.execute(
                    real_name_claims.delete().where(real_name_claims.c.account_id == account_id)
                )
                submissions = await conn.execute(
                    real_name_submissions.delete().where(
                        real_name_submissions.c.account_id == account_id
                    )
                )
        return int(claims.rowcount) + int(submissions.rowcount)

    # -- end deactivation --

    # -- submissions ----------------------------------------------------------------------

    async def create(
        self,
        *,
        submission_id: str,
        account_id: str,
        subject_type: str,
        details: Mapping[str, str],
        document_ids: Sequence[str],
        claim: str,
        verifier: str,
        state: State,
        reason: str,
        level: int,
    ) -> Submission:
        """Record a submission with its verdict; details are encrypted. Joins the unit of work."""
        key = await self._keys.data_key(account_id)
        blob = self._cipher.encrypt_bytes(
            key,
            json.dumps(dict(details), ensure_ascii=False, sort_keys=True).encode("utf-8"),
            field_aad(submission_id, _DETAILS_FIELD),
        )
        now = self._clock.now()
        decided = state in (State.VERIFIED, State.REJECTED)
        reason = reason[:_MAX_REASON]
        decided_by = verifier if decided else None
        row = {
            "submission_id": submission_id,
            "account_id": account_id,
            "subject_type": subject_type,
            "state": state.value,
            "reason_enc": self._seal_reason(key, submission_id, reason),
            "level": level,
            "verifier": verifier,
            "claim": claim,
            "details_enc": blob,
            "document_ids": json.dumps(list(document_ids)),
            "submitted_at": utc(now),
            "decided_at": utc(now) if decided else None,
            "decided_by": decided_by,
        }
        async with self._db.begin() as conn:
            with translate_errors():
                await conn.execute(real_name_submissions.insert().values(**row))
        return Submission(
            submission_id=submission_id,
            account_id=account_id,
            subject_type=subject_type,
            state=state,
            reason=reason,
            level=level,
            verifier=verifier,
            claim=claim,
            document_ids=tuple(document_ids),
            submitted_at=now,
            decided_at=now if decided else None,
            decided_by=decided_by,
        )

    async def decide(
        self,
        submission: Submission,
        *,
        state: State,
        reason: str,
        level: int,
        decided_by: str,
    ) -> bool:
        """Move an IN_REVIEW submission to `state`; False if it is not (or no longer) in review."""
        submission_id = submission.submission_id
        key = await self._keys.data_key(submission.account_id)
        stmt = (
            real_name_submissions.update()
            .where(
                real_name_submissions.c.submission_id == submission_id,
                real_name_submissions.c.state == State.IN_REVIEW.value,
            )
            .values(
                state=state.value,
                reason_enc=self._seal_reason(key, submission_id, reason[:_MAX_REASON]),
                level=level,
                decided_at=utc(self._clock.now()),
                decided_by=decided_by,
            )
        )
        async with self._db.begin() as conn:
            with translate_errors():
                result = await conn.execute(stmt)
        return result.rowcount == 1

    async def get(self, submission_id: str) -> Submission | None:
        """The submission, or None."""
        if not submission_id.startswith(_ID_PREFIX) or len(submission_id) > 40:
            return None
        query = sa.select(real_name_submissions).where(
            real_name_submissions.c.submission_id == submission_id
        )
        async with self._db.connect() as conn:
            with translate_errors():
                row = (await conn.execute(query)).first()
        return None if row is None else await self._submission(row)

    async def latest(self, account_id: str) -> Submission | None:
        """The account's newest submission, or None."""
        query = (
            sa.select(real_name_submissions)
            .where(real_name_submissions.c.account_id == account_id)
            .order_by(
                real_name_submissions.c.submitted_at.desc(),
                real_name_submissions.c.submission_id.desc(),
            )
            .limit(1)
        )
        async with self._db.connect() as conn:
            with translate_errors():
                row = (await conn.execute(query)).first()
        return None if row is None else await self._submission(row)

    async def of_account(self, account_id: str) -> list[Submission]:
        """The account's submissions, oldest first (issue 14: export)."""
        query = (
            sa.select(real_name_submissions)
            .where(real_name_submissions.c.account_id == account_id)
            .order_by(real_name_submissions.c.submitted_at, real_name_submissions.c.submission_id)
        )
        async with self._db.connect() as conn:
            with translate_errors():
                rows = (await conn.execute(query)).all()
        return [await self._submission(row) for row in rows]

    async def details(self, submission: Submission) -> dict[str, str]:
        """The decrypted details of a submission."""
        query = sa.select(real_name_submissions.c.details_enc).where(
            real_name_submissions.c.submission_id == submission.submission_id
        )
        async with self._db.connect() as conn:
            with translate_errors():
                blob = (await conn.execute(query)).scalar_one()
        key = await self._keys.data_key(submission.account_id)
        plain = self._cipher.decrypt_bytes(
            key, bytes(blob), field_aad(submission.submission_id, _DETAILS_FIELD)
        )
        loaded = json.loads(plain.decode("utf-8"))
        return {str(k): str(v) for k, v in loaded.items()}

    def _seal_reason(self, key: bytes, submission_id: str, reason: str) -> bytes:
        """The reason encrypted: a reviewer's words may quote the person's data (I1)."""
        return self._cipher.encrypt_bytes(
            key, reason.encode("utf-8"), field_aad(submission_id, _REASON_FIELD)
        )

    async def _submission(self, row: sa.Row[tuple[object, ...]]) -> Submission:
        m = row._mapping
        key = await self._keys.data_key(str(m["account_id"]))
        reason = self._cipher.decrypt_bytes(
            key, bytes(m["reason_enc"]), field_aad(str(m["submission_id"]), _REASON_FIELD)
        )
        return _row_to_submission(row, reason.decode("utf-8"))

    def new_id(self) -> str:
        """A fresh submission id (`rns_` + 24 hex digits)."""
        raw = self._token_bytes(_ID_BYTES)
        if len(raw) != _ID_BYTES:
            raise ValueError("the randomness source returned the wrong number of bytes")
        return _ID_PREFIX + raw.hex()


def _row_to_submission(row: sa.Row[tuple[object, ...]], reason: str) -> Submission:
    m = row._mapping
    decided_at = m["decided_at"]
    return Submission(
        submission_id=str(m["submission_id"]),
        account_id=str(m["account_id"]),
        subject_type=str(m["subject_type"]),
        state=State(str(m["state"])),
        reason=reason,
        level=int(m["level"]),
        verifier=str(m["verifier"]),
        claim=str(m["claim"]),
        document_ids=tuple(json.loads(str(m["document_ids"]))),
        submitted_at=epoch(m["submitted_at"]),
        decided_at=None if decided_at is None else epoch(decided_at),
        decided_by=None if m["decided_by"] is None else str(m["decided_by"]),
    )
