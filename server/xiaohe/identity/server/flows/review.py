"""Manual review (人工核验, `ReviewService`; SECURITY.md D1, D2, P5).

Who may review. Every call comes from a console whose client holds the grant
`review` (the interceptor checks it) and carries the reviewer's own access
token. The token must be valid, come from a sign-in with password and TOTP
(`pwd` and `otp` in amr: operators follow the stricter rule set, P5; an SMS code
and TOTP do not do, since the password's length is checked at that sign-in), and its account
must hold the operator role `review` (granted by the CLI) since before the
session began: a sign-in after the grant is one that passed the operators'
password length (`credentials.operators`). Each refusal is PERMISSION_DENIED
saying which of these is missing.

What a reviewer sees. The queue lists cases oldest first, with how long each
has waited against the SLA (`review_sla_seconds`, 48 h by default: the policy's
two working days without a holiday calendar). A case's fields (names, ID
numbers, phones, ...) come masked; a reviewer names the fields they need in
`reveal_fields`, and each revealed field is audited. A document is streamed only
if the case references it, through the document service, which audits the read
before the first byte; a `DocumentTransform` (a watermark, later) may rewrite
the chunks on the way.

Deciding. Every decision carries a reason. A reviewer cannot decide, reveal the
fields of, or read the documents of a case about their own account. With
`review_second_approval` on, an approval needs two different reviewers: the
first moves the case to AWAITING_SECOND_APPROVAL, the second approves it; a
rejection by anyone ends it. The final decision is applied by the case's
kind (`CaseApplier`: the phone change, the recovery, the real-name submission)
in ONE unit of work with the case's new state, its decision record and the
audit record: a fault anywhere leaves the case open and the account as it was.
An applier may turn an approval into a rejection when the world changed since
the case opened (the new phone taken meanwhile): the case then ends REJECTED
with that reason.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from xiaohe.identity.server.audit.sink import AuditSink
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from xiaohe.identity.server.review.cases import MAX_TEXT_CHARS, ReviewCases
from xiaohe.identity.server.review.models import (
    REVIEW_ROLE,
    SUBJECT_TYPES,
    CaseKind,
    CasePage,
    CaseState,
    CaseSummary,
    ReviewCase,
    Verdict,
)
from xiaohe.identity.server.review.roles import OperatorRoles
from xiaohe.identity.server.shared.identifiers import (
    mask_email,
    mask_id_number,
    mask_login_name,
    mask_phone,
)
from xiaohe.identity.server.shared.validation import Violations
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

DEFAULT_SLA_SECONDS: Final = 48 * 3600
DECIDE_ACTION: Final = "review.case.decide"
REVEAL_ACTION: Final = "review.case.reveal"
NOTE_ACTION: Final = "review.case.note"
OPEN_ACTION: Final = "review.case.open"
NO_MATCHING_ACCOUNT: Final = "no matching account"
ACCOUNT_FIELD: Final = "account"
"""The field GetCase adds: the account the case is about, or NO_MATCHING_ACCOUNT."""

_HIDDEN: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs"})
"""Unicode categories refused in reasons and notes: controls, direction marks, private use."""
_PHONES: Final = frozenset({"phone", "new_phone", "old_phone"})
_ID_NUMBERS: Final = frozenset({"id_number", "representative_id_number"})
_NAMES: Final = frozenset({"name", "representative_name"})
_PLAIN: Final = frozenset(
    {
        ACCOUNT_FIELD,
        "id_type",
        "representative_id_type",
        "organization_name",
        "organization_type",
        "representative_type",
        "uscc",
        "subject_type",
    }
)
"""Fields shown as they are: types, and what a business licence makes public."""


def mask_field(name: str, value: str) -> str:
    """A case field as a reviewer sees it before revealing it; unknown fields fully masked."""
    if name in _PLAIN:
        return value
    if name in _PHONES:
        return mask_phone(value)
    if name in _ID_NUMBERS:
        return mask_id_number(value)
    if name in _NAMES:
        return value[:1] + "*" * max(1, len(value) - 1) if value else ""
    if name == "email":
        return mask_email(value)
    if name == "login_name":
        return mask_login_name(value)
    return "****"


class DocumentFacts(Protocol):
    """What review needs of a stored document (`realname.documents.DocumentInfo`)."""

    @property
    def document_id(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def file_name(self) -> str: ...


class ReviewDocuments(Protocol):
    """The document service (`realname.documents.DocumentService`), as review uses it."""

    def phone_owner(self, phone: str) -> str:
        """The owner string of documents uploaded with a ticket of `phone`."""
        ...

    async def info(self, document_id: str) -> DocumentFacts | None:
        """A document's metadata, or None."""
        ...

    def chunks(
        self, document_id: str, *, reader: str, why: str, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]:
        """The decrypted bytes, audited before the first one."""
        ...


class DocumentTransform(Protocol):
    """Rewrites a document's chunks on their way to a reviewer (the watermark seam)."""

    def __call__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        case_id: str,
        document: DocumentFacts,
        reviewer_account_id: str,
    ) -> AsyncIterator[bytes]:
        """The chunks as the reviewer receives them."""
        ...


@dataclass(frozen=True)
class Applied:
    """What applying a final approval did: "" or why it became a rejection."""

    rejected_because: str = ""


class CaseApplier(Protocol):
    """Applies a case's final decision inside the decision's unit of work."""

    async def apply_case(
        self, case: ReviewCase, *, approved: bool, reason: str, reviewer_account_id: str
    ) -> Applied:
        """Apply the decision; on an approval, may refuse it with a reason (see Applied)."""
        ...


class RealNameReview(Protocol):
    """The real-name flow's side of a decision (`flows.realname.RealNameFlow`, interface 3)."""

    async def apply_review(
        self, submission_id: str, *, approved: bool, reason: str, reviewer_account_id: str
    ) -> None:
        """Mark the submission VERIFIED or REJECTED (uniqueness checked there)."""
        ...


class RealNameApplier:
    """Applies real-name cases through the real-name flow (the case's reference is the
    submission id)."""

    def __init__(self, flow: RealNameReview) -> None:
        self._flow = flow

    async def apply_case(
        self, case: ReviewCase, *, approved: bool, reason: str, reviewer_account_id: str
    ) -> Applied:
        """Hand the decision to the real-name flow."""
        await self._flow.apply_review(
            case.reference,
            approved=approved,
            reason=reason,
            reviewer_account_id=reviewer_account_id,
        )
        return Applied()


@dataclass(frozen=True)
class Reviewer:
    """The person behind a review call: their account, how they signed in, and the session."""

    account_id: str
    amr: tuple[str, ...]
    session_id: str = ""


class SessionStarts(Protocol):
    """When a session began (`SessionService.started_at`)."""

    async def started_at(self, session_id: str) -> float | None:
        """The sign-in time of the session (epoch seconds), or None if there is none."""
        ...


@dataclass(frozen=True)
class CaseView:
    """A case as GetCase shows it: fields masked unless revealed."""

    case: ReviewCase
    fields: tuple[tuple[str, str, bool], ...] = field(repr=False)
    """(name, value, masked) in a stable order."""
    documents: tuple[DocumentFacts, ...]
    waiting_seconds: int
    overdue: bool


@dataclass(frozen=True)
class QueueEntry:
    """A case in the queue with its waiting time against the SLA."""

    summary: CaseSummary
    waiting_seconds: int
    overdue: bool


@dataclass(frozen=True)
class Queue:
    """One page of the queue."""

    entries: tuple[QueueEntry, ...]
    next_page_token: str
    sla_seconds: int


class CaseQueue:
    """Opens cases for the flows that need a reviewer (the `ReviewQueue` of flows/realname.py).

    Runs inside the caller's unit of work: the case commits with the step that
    asked for it (a consumed ticket's consequences, a submission's new state).
    """

    def __init__(self, cases: ReviewCases, audit: AuditSink) -> None:
        self._cases = cases
        self._audit = audit

    def __repr__(self) -> str:
        return "CaseQueue()"

    async def open_case(
        self,
        *,
        kind: str,
        account_id: str | None,
        subject_type: str,
        fields: Mapping[str, str],
        document_ids: Sequence[str],
        reference: str,
    ) -> str:
        """Open a case; returns its id (ValueError for a kind or subject type no case has)."""
        if subject_type not in SUBJECT_TYPES:
            raise ValueError("subject_type must be natural_person or legal_person")
        case_id = await self._cases.open(
            kind=CaseKind(kind),
            account_id=account_id,
            subject_type=subject_type,
            fields=fields,
            document_ids=document_ids,
            reference=reference,
        )
        await self._audit.record(OPEN_ACTION, case_id, CaseKind(kind).value)
        return case_id


class ReviewFlow:
    """The reviewer's work (rules and reasons in the module docstring)."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        cases: ReviewCases,
        roles: OperatorRoles,
        documents: ReviewDocuments | None,
        appliers: Mapping[CaseKind, CaseApplier],
        audit: AuditSink,
        clock: Clock,
        sla_seconds: int = DEFAULT_SLA_SECONDS,
        second_approval: bool = False,
        transform: DocumentTransform | None = None,
        sessions: SessionStarts | None = None,
    ) -> None:
        if sla_seconds < 1:
            raise ValueError("sla_seconds must be positive")
        self._uow = uow
        self._cases = cases
        self._roles = roles
        self._documents = documents
        self._appliers = dict(appliers)
        self._audit = audit
        self._clock = clock
        self._sla = sla_seconds
        self._second_approval = second_approval
        self._transform = transform
        self._sessions = sessions

    def __repr__(self) -> str:
        return "ReviewFlow()"

    async def authorize(self, reviewer: Reviewer) -> None:
        """PERMISSION_DENIED unless the reviewer signed in with TOTP, holds the role, and signed
        in after it was granted (so the sign-in passed the operators' password rule, P5)."""
        if not {"pwd", "otp"} <= set(reviewer.amr):
            raise PermissionDenied(
                "reviewers must sign in with password and TOTP (the token's methods are "
                f"{', '.join(reviewer.amr) or 'none'})"
            )
        granted_at = await self._roles.granted_at(reviewer.account_id, REVIEW_ROLE)
        if granted_at is None:
            raise PermissionDenied("the signed-in account does not hold the operator role review")
        if self._sessions is not None:
            started_at = await self._sessions.started_at(reviewer.session_id)
            if started_at is None or started_at < granted_at:
                raise PermissionDenied(
                    "the operator role review was granted after this sign-in; sign in again"
                )

    async def list_cases(
        self,
        reviewer: Reviewer,
        *,
        kind: CaseKind | None,
        state: CaseState | None,
        page_size: int,
        page_token: str,
    ) -> Queue:
        """The queue, oldest first, with waiting times against the SLA."""
        if page_size < 0:
            raise InvalidArgument(FieldViolation("page_size", "must not be negative"))
        await self.authorize(reviewer)
        page: CasePage = await self._cases.page(
            kind=kind, state=state, page_size=page_size, page_token=page_token
        )
        entries = tuple(self._entry(s) for s in page.cases)
        return Queue(entries, page.next_page_token, self._sla)

    async def get_case(
        self, reviewer: Reviewer, case_id: str, *, reveal: Sequence[str] = ()
    ) -> CaseView:
        """One case, its fields masked except those in `reveal` (each reveal audited)."""
        _check_case_id(case_id)
        await self.authorize(reviewer)
        case = await self._cases.get(case_id)
        fields = dict(case.fields)
        fields[ACCOUNT_FIELD] = case.account_id or NO_MATCHING_ACCOUNT
        wanted = list(dict.fromkeys(reveal))
        unknown = [name for name in wanted if name not in fields]
        if unknown:
            raise InvalidArgument(
                FieldViolation("reveal_fields", f"the case has no field(s) {unknown[:5]}")
            )
        if wanted:
            self._not_own(reviewer, case, "reveal the fields of")
            async with self._uow.begin():
                for name in wanted:
                    await self._audit.record(REVEAL_ACTION, case.case_id, name[:50])
        shown = tuple(
            (name, value, False)
            if name in wanted or name in _PLAIN
            else (name, mask_field(name, value), True)
            for name, value in sorted(fields.items())
        )
        documents = []
        if self._documents is not None:
            for document_id in case.document_ids:
                info = await self._documents.info(document_id)
                if info is not None:
                    documents.append(info)
        entry = self._entry(case.summary)
        return CaseView(case, shown, tuple(documents), entry.waiting_seconds, entry.overdue)

    async def document(
        self, reviewer: Reviewer, case_id: str, document_id: str
    ) -> tuple[DocumentFacts, AsyncIterator[bytes]]:
        """A document the case references and its decrypted chunks (the read is audited)."""
        v = Violations()
        if not case_id:
            v.add("case_id", "must not be empty")
        if not document_id:
            v.add("document_id", "must not be empty")
        v.raise_if_any()
        await self.authorize(reviewer)
        case = await self._cases.get(case_id)
        if document_id not in case.document_ids or self._documents is None:
            raise NotFound("the case references no such document")
        self._not_own(reviewer, case, "read the documents of")
        info = await self._documents.info(document_id)
        if info is None:
            raise NotFound("the document is no longer stored")
        chunks = self._documents.chunks(
            document_id, reader=reviewer.account_id, why=f"review:{case.case_id}"
        )
        if self._transform is not None:
            chunks = self._transform(
                chunks, case_id=case.case_id, document=info, reviewer_account_id=reviewer.account_id
            )
        return info, chunks

    async def decide(
        self, reviewer: Reviewer, case_id: str, verdict: Verdict | None, reason: str
    ) -> CaseState:
        """Approve or reject (rules in the module docstring); returns the case's new state."""
        v = Violations()
        if not case_id:
            v.add("case_id", "must not be empty")
        if verdict is None:
            v.add("decision", "must be DECISION_APPROVE or DECISION_REJECT")
        text = _required_text(v, "reason", reason)
        v.raise_if_any()
        assert verdict is not None  # a missing verdict is a violation above
        await self.authorize(reviewer)
        case = await self._cases.get(case_id)
        self._not_own(reviewer, case, "decide")
        if case.state.final:
            raise FailedPrecondition(f"the case is {case.state.value} already")
        applier = self._appliers.get(case.kind)
        if applier is None:
            raise FailedPrecondition(f"{case.kind.value} cases cannot be decided on this server")
        new_state = self._next_state(reviewer, case, verdict)
        async with self._uow.begin():
            outcome = verdict
            if new_state.final:
                applied = await applier.apply_case(
                    case,
                    approved=verdict is Verdict.APPROVE,
                    reason=text,
                    reviewer_account_id=reviewer.account_id,
                )
                if verdict is Verdict.APPROVE and applied.rejected_because:
                    new_state, outcome = CaseState.REJECTED, Verdict.REJECT
                    text = f"{applied.rejected_because} (approval refused: {text})"[:MAX_TEXT_CHARS]
            await self._cases.decide(
                case,
                reviewer_account_id=reviewer.account_id,
                verdict=outcome,
                reason=text,
                new_state=new_state,
            )
            await self._audit.record(DECIDE_ACTION, case.case_id, new_state.value.lower())
        return new_state

    async def add_note(self, reviewer: Reviewer, case_id: str, text: str) -> None:
        """Append a note to a case (audited)."""
        v = Violations()
        if not case_id:
            v.add("case_id", "must not be empty")
        note = _required_text(v, "text", text)
        v.raise_if_any()
        await self.authorize(reviewer)
        case = await self._cases.get(case_id)  # NotFound before anything is written
        self._not_own(reviewer, case, "annotate")  # a note could steer whoever decides it
        async with self._uow.begin():
            await self._cases.add_note(case_id, author_account_id=reviewer.account_id, text=note)
            await self._audit.record(NOTE_ACTION, case_id, "ok")

    def _next_state(self, reviewer: Reviewer, case: ReviewCase, verdict: Verdict) -> CaseState:
        """The state this decision moves the case to (the second-approval rule)."""
        if verdict is Verdict.REJECT:
            return CaseState.REJECTED
        if not self._second_approval:
            return CaseState.APPROVED
        if case.state is CaseState.OPEN:
            return CaseState.AWAITING_SECOND_APPROVAL
        if case.first_approver == reviewer.account_id:
            raise PermissionDenied("the second approval must come from another reviewer")
        return CaseState.APPROVED

    @staticmethod
    def _not_own(reviewer: Reviewer, case: ReviewCase, what: str) -> None:
        """PERMISSION_DENIED for a case about the reviewer's own account (D2)."""
        if case.account_id is not None and case.account_id == reviewer.account_id:
            raise PermissionDenied(f"a reviewer cannot {what} a case about their own account")

    def _entry(self, summary: CaseSummary) -> QueueEntry:
        """Waiting time (until decided, or until now) and whether it passed the SLA."""
        until = summary.decided_at if summary.decided_at is not None else self._clock.now()
        waiting = max(0, int(until - summary.opened_at))
        overdue = not summary.state.final and waiting > self._sla
        return QueueEntry(summary, waiting, overdue)


def _check_case_id(case_id: str) -> None:
    """InvalidArgument for an empty case id."""
    if not case_id:
        raise InvalidArgument(FieldViolation("case_id", "must not be empty"))


def _required_text(v: Violations, name: str, raw: str) -> str:
    """A reason or note as the reviewer wrote it (not NFKC-folded: it is their words),
    trimmed, 1-MAX_TEXT_CHARS characters; line breaks allowed, other control and
    format characters not (they forge or hide what the next reviewer reads)."""
    text = raw.replace("\r\n", "\n").strip()
    if len(text) > MAX_TEXT_CHARS:
        v.add(name, f"must be at most {MAX_TEXT_CHARS} characters")
    elif not text:
        v.add(name, "must not be empty")
    elif any(ch != "\n" and unicodedata.category(ch) in _HIDDEN for ch in text):
        v.add(name, "must not contain control characters (line breaks are fine)")
    else:
        return text
    return ""


__all__ = [
    "ACCOUNT_FIELD",
    "DECIDE_ACTION",
    "DEFAULT_SLA_SECONDS",
    "NO_MATCHING_ACCOUNT",
    "REVEAL_ACTION",
    "Applied",
    "CaseApplier",
    "CaseQueue",
    "CaseView",
    "DocumentFacts",
    "DocumentTransform",
    "Queue",
    "QueueEntry",
    "RealNameApplier",
    "RealNameReview",
    "ReviewDocuments",
    "ReviewFlow",
    "Reviewer",
    "mask_field",
]
