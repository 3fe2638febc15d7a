"""ReviewService servicer: manual review for reviewers (proto <-> domain only).

The interceptor has checked the console client's grant `review`; every method
here then takes the reviewer from the bearer token (`transport/users.py`) and
leaves the rest (TOTP, the operator role, own cases) to `flows/review.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from xiaohe.identity.server.errors import FieldViolation, InvalidArgument
from xiaohe.identity.server.flows.review import CaseView, QueueEntry, Reviewer, ReviewFlow
from xiaohe.identity.server.review.models import CaseKind, CaseState, Verdict
from xiaohe.identity.server.transport.enums import enum_name
from xiaohe.identity.server.transport.timestamps import timestamp
from xiaohe.identity.server.transport.users import TokenValidation, require_user
from xiaohe.identity.v1 import common_pb2, realname_pb2, review_pb2, review_pb2_grpc

_KINDS = {
    "REAL_NAME": CaseKind.REAL_NAME,
    "PHONE_CHANGE": CaseKind.PHONE_CHANGE,
    "RECOVERY": CaseKind.RECOVERY,
}
_VERDICTS = {"APPROVE": Verdict.APPROVE, "REJECT": Verdict.REJECT}


def reviewer(ctx: grpc.aio.ServicerContext[Any, Any], tokens: TokenValidation) -> Reviewer:
    """The reviewer behind the call, from the bearer token (UNAUTHENTICATED without one)."""
    claims = require_user(ctx, tokens)
    return Reviewer(account_id=claims.sub, amr=tuple(claims.amr), session_id=claims.sid)


def case_kind(value: int, field: str = "kind") -> CaseKind | None:
    """A case kind filter (None: any); unknown values are refused."""
    name = enum_name(review_pb2.CaseKind.Name, "CASE_KIND_", value, field)
    return _KINDS[name] if name else None


def case_state(value: int, field: str = "state") -> CaseState | None:
    """A case state filter (None: any); unknown values are refused."""
    name = enum_name(review_pb2.CaseState.Name, "CASE_STATE_", value, field)
    return CaseState(name) if name else None


def summary_to_proto(entry: QueueEntry) -> review_pb2.CaseSummary:
    """A queue entry as a CaseSummary."""
    s = entry.summary
    return review_pb2.CaseSummary(
        case_id=s.case_id,
        kind=review_pb2.CaseKind.Value("CASE_KIND_" + s.kind.name),
        state=review_pb2.CaseState.Value("CASE_STATE_" + s.state.value),
        subject_type=common_pb2.SubjectType.Value("SUBJECT_TYPE_" + s.subject_type.upper()),
        opened_at=timestamp(s.opened_at),
        waiting_seconds=entry.waiting_seconds,
        overdue=entry.overdue,
    )


def case_to_proto(view: CaseView) -> review_pb2.Case:
    """A case view as a Case (fields masked unless revealed)."""
    case = view.case
    out = review_pb2.Case(
        summary=summary_to_proto(QueueEntry(case.summary, view.waiting_seconds, view.overdue)),
        fields=[
            review_pb2.CaseField(name=name, value=value, masked=masked)
            for name, value, masked in view.fields
        ],
        documents=[
            review_pb2.CaseDocument(
                document_id=d.document_id,
                kind=_document_kind(d.kind),
                content_type=d.content_type,
                size=d.size,
                file_name=d.file_name,
            )
            for d in view.documents
        ],
        notes=[
            review_pb2.CaseNote(
                author_account_id=n.author_account_id, text=n.text, at=timestamp(n.at)
            )
            for n in case.notes
        ],
        first_approver_account_id=case.first_approver or "",
        reason=case.final_reason,
    )
    if case.summary.decided_at is not None:
        out.decided_at.CopyFrom(timestamp(case.summary.decided_at))
    return out


def _document_kind(kind: str) -> realname_pb2.DocumentKind.ValueType:
    """A document kind (`id_scan`, ...) as the proto enum (UNSPECIFIED if unknown)."""
    try:
        return realname_pb2.DocumentKind.Value("DOCUMENT_KIND_" + kind.upper())
    except ValueError:
        return realname_pb2.DOCUMENT_KIND_UNSPECIFIED


class ReviewServicer(review_pb2_grpc.ReviewServiceServicer):
    """Manual review."""

    def __init__(self, review: ReviewFlow, tokens: TokenValidation) -> None:
        self._review = review
        self._tokens = tokens

    async def ListCases(
        self, request: review_pb2.ListCasesRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> review_pb2.ListCasesResponse:
        kind, state = case_kind(request.kind), case_state(request.state)
        queue = await self._review.list_cases(
            reviewer(ctx, self._tokens),
            kind=kind,
            state=state,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return review_pb2.ListCasesResponse(
            cases=[summary_to_proto(e) for e in queue.entries],
            next_page_token=queue.next_page_token,
            sla_seconds=queue.sla_seconds,
        )

    async def GetCase(
        self, request: review_pb2.GetCaseRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> review_pb2.GetCaseResponse:
        view = await self._review.get_case(
            reviewer(ctx, self._tokens), request.case_id, reveal=tuple(request.reveal_fields)
        )
        return review_pb2.GetCaseResponse(case=case_to_proto(view))

    async def StreamDocument(
        self, request: review_pb2.StreamDocumentRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[review_pb2.StreamDocumentResponse]:
        # Every check runs before the first message: a refusal is a status, never a half stream.
        info, chunks = await self._review.document(
            reviewer(ctx, self._tokens), request.case_id, request.document_id
        )
        first = True
        async for chunk in chunks:
            if first:
                yield review_pb2.StreamDocumentResponse(
                    content_type=info.content_type, size=info.size, chunk=chunk
                )
                first = False
            else:
                yield review_pb2.StreamDocumentResponse(chunk=chunk)
        if first:  # an empty document still says what it is
            yield review_pb2.StreamDocumentResponse(content_type=info.content_type, size=info.size)

    async def DecideCase(
        self, request: review_pb2.DecideCaseRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> review_pb2.DecideCaseResponse:
        name = enum_name(review_pb2.Decision.Name, "DECISION_", request.decision, "decision")
        verdict = _VERDICTS.get(name)
        if verdict is None and not request.case_id:
            raise InvalidArgument(
                [
                    FieldViolation("case_id", "must not be empty"),
                    FieldViolation("decision", "must be DECISION_APPROVE or DECISION_REJECT"),
                ]
            )
        state = await self._review.decide(
            reviewer(ctx, self._tokens), request.case_id, verdict, request.reason
        )
        return review_pb2.DecideCaseResponse(
            state=review_pb2.CaseState.Value("CASE_STATE_" + state.value)
        )

    async def AddNote(
        self, request: review_pb2.AddNoteRequest, ctx: grpc.aio.ServicerContext[Any, Any]
    ) -> review_pb2.AddNoteResponse:
        await self._review.add_note(reviewer(ctx, self._tokens), request.case_id, request.text)
        return review_pb2.AddNoteResponse()
