"""ChangePhone by manual review and ReviewService over real gRPC (SECURITY D1, D2, H1, H2, P5, T3).

The applicant proves the new phone (BIND_PHONE ticket) and gives identity
documents; a reviewer (an account with the operator role `review`, signed in
with password + TOTP) reads the case and the documents and decides. Nothing
changes before the approval; the approval changes the phone exactly as a
self-service change does, in one unit of work with the case's decision.
"""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa

from tests.contract.faults import failing_writes, row_counts
from tests.integration.accounts.channel_steps import (
    BIND_PHONE,
    NEW_PHONE,
    THIRD_PHONE,
    assert_no_secret,
    login_as,
    notices,
    phone_of,
    refused,
    register,
    settle,
    ticket,
    valid,
)
from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import LOGIN_NAME, OTHER_LOGIN_NAME, OTHER_PHONE, PHONE, stubs
from tests.integration.review.steps import (
    PDF,
    REVIEWER,
    REVIEWER_PHONE,
    SECOND_REVIEWER,
    SECOND_REVIEWER_PHONE,
    HarnessDocuments,
    decide,
    review_harness,
    review_stub,
    reviewer_session,
    session_metadata,
    streamed,
)
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.v1 import accounts_pb2, common_pb2, realname_pb2, review_pb2

APPROVE = review_pb2.DECISION_APPROVE
REJECT = review_pb2.DECISION_REJECT
HOUR = 3600


@pytest.fixture
async def env(harness_factory: HarnessFactory) -> tuple[Harness, HarnessDocuments]:
    """A server whose review reads `HarnessDocuments`; approvals need one reviewer."""
    return await review_harness(harness_factory)


async def apply_for_review(
    h: Harness, docs: HarnessDocuments, account_id: str, *, new_phone: str = NEW_PHONE
) -> str:
    """ChangePhone by manual review, not signed in, with a document uploaded with the new
    phone's ticket; the case id."""
    document_id = await docs.add(docs.phone_owner(new_phone))
    response = await stubs(h).accounts.ChangePhone(
        accounts_pb2.ChangePhoneRequest(
            identifier=LOGIN_NAME,
            new_phone=new_phone,
            new_phone_ticket=await ticket(h, new_phone, BIND_PHONE),
            manual_review=common_pb2.ManualReviewProof(document_ids=[document_id]),
        ),
        metadata=h.metadata,
    )
    assert response.review_case_id.startswith("case_")
    assert (response.phone_masked, response.sessions_ended) == ("", 0)
    return response.review_case_id


async def audit_outcomes(h: Harness, action: str) -> list[tuple[str, str]]:
    """(target, outcome) of the audit records of `action`, oldest first."""
    log: AuditLog = h.container.audit
    return [(r.target, r.outcome) for r in await log.query(action=action)]


async def test_a_case_opens_and_nothing_changes_until_a_reviewer_approves(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """H1, H2, T3, D1: the whole path: apply, list, read masked, reveal, stream, note, approve."""
    h, docs = env
    account_id = await register(h, LOGIN_NAME, PHONE)
    reviewer_id, _ = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    case_id = await apply_for_review(h, docs, account_id)
    assert await phone_of(h, account_id) == PHONE

    h.clock.advance(49 * HOUR)  # past the 48 h SLA; sessions from now on
    session = await login_as(h, LOGIN_NAME)
    console = await session_metadata(h, reviewer_id)
    assert await valid(h, session)
    listed = await review_stub(h).ListCases(
        review_pb2.ListCasesRequest(kind=review_pb2.CASE_KIND_PHONE_CHANGE), metadata=console
    )
    assert listed.sla_seconds == 48 * HOUR
    (summary,) = listed.cases
    assert summary.case_id == case_id
    assert summary.state == review_pb2.CASE_STATE_OPEN
    assert summary.subject_type == common_pb2.SUBJECT_TYPE_NATURAL_PERSON
    assert summary.waiting_seconds == 49 * HOUR
    assert summary.overdue

    got = await review_stub(h).GetCase(review_pb2.GetCaseRequest(case_id=case_id), metadata=console)
    fields = {f.name: (f.value, f.masked) for f in got.case.fields}
    assert fields["new_phone"] == ("137****1111", True)
    assert fields["login_name"][1] is True
    assert fields["account"] == (account_id, False)
    assert NEW_PHONE not in str(got)
    (document,) = got.case.documents
    assert (document.kind, document.size) == (realname_pb2.DOCUMENT_KIND_ID_SCAN, len(PDF))

    revealed = await review_stub(h).GetCase(
        review_pb2.GetCaseRequest(case_id=case_id, reveal_fields=["new_phone"]), metadata=console
    )
    shown = {f.name: (f.value, f.masked) for f in revealed.case.fields}
    assert shown["new_phone"] == (NEW_PHONE, False)
    assert shown["login_name"][1] is True
    assert await audit_outcomes(h, "review.case.reveal") == [(case_id, "new_phone")]

    content_type, size, content = await streamed(h, console, case_id, document.document_id)
    assert (content_type, size, content) == ("application/pdf", len(PDF), PDF)
    assert await audit_outcomes(h, "document.read") == [(document.document_id, f"review:{case_id}")]

    await review_stub(h).AddNote(
        review_pb2.AddNoteRequest(case_id=case_id, text="照片清晰，与身份证一致"), metadata=console
    )
    noted = await review_stub(h).GetCase(
        review_pb2.GetCaseRequest(case_id=case_id), metadata=console
    )
    assert [n.text for n in noted.case.notes] == ["照片清晰，与身份证一致"]

    before = len(await notices(h))
    assert await decide(h, console, case_id, APPROVE) == review_pb2.CASE_STATE_APPROVED
    assert await phone_of(h, account_id) == NEW_PHONE
    assert not await valid(h, session)
    sent = (await notices(h))[before:]
    assert [n["to"] for n in sent] == [PHONE]
    assert "137****1111" in sent[0]["text"]
    assert_no_secret(sent[0]["text"], NEW_PHONE)
    assert (account_id, "manual_review") in await audit_outcomes(h, "account.phone.change")
    assert await audit_outcomes(h, "review.case.decide") == [(case_id, "approved")]

    decided = await review_stub(h).GetCase(
        review_pb2.GetCaseRequest(case_id=case_id), metadata=console
    )
    assert decided.case.summary.state == review_pb2.CASE_STATE_APPROVED
    assert decided.case.reason == "证件与账号信息一致"
    assert not decided.case.summary.overdue
    again = await refused(
        review_stub(h).DecideCase(
            review_pb2.DecideCaseRequest(case_id=case_id, decision=REJECT, reason="重复"),
            metadata=console,
        )
    )
    assert again.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_reviewers_need_the_grant_totp_and_the_role(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """D2, P5: no grant, a token without TOTP, an account without the role: PERMISSION_DENIED."""
    h, _ = env
    reviewer_id, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    request = review_pb2.ListCasesRequest()
    assert (await review_stub(h).ListCases(request, metadata=console)).cases == []

    no_grant = await h.client_metadata("codes")
    token = [m for m in console if m[0] == "authorization"]
    d = await refused(review_stub(h).ListCases(request, metadata=(*no_grant, *token)))
    assert d.code == grpc.StatusCode.PERMISSION_DENIED

    password_only = await session_metadata(h, reviewer_id, amr=("pwd",))
    d = await refused(review_stub(h).ListCases(request, metadata=password_only))
    assert d.code == grpc.StatusCode.PERMISSION_DENIED
    assert "TOTP" in d.message

    other_id = await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    no_role = await session_metadata(h, other_id)
    d = await refused(review_stub(h).ListCases(request, metadata=no_role))
    assert d.code == grpc.StatusCode.PERMISSION_DENIED
    assert "role review" in d.message

    d = await refused(review_stub(h).ListCases(request, metadata=h.metadata))
    assert d.code == grpc.StatusCode.UNAUTHENTICATED

    await h.container.operator_roles.revoke(reviewer_id, "review")
    d = await refused(review_stub(h).ListCases(request, metadata=console))
    assert d.code == grpc.StatusCode.PERMISSION_DENIED


async def test_a_reviewer_cannot_decide_or_reveal_their_own_case(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """D2: a case about the reviewer's own account: no decision, no reveal, no note, no
    document."""
    h, docs = env
    account_id = await register(h, LOGIN_NAME, PHONE)
    await h.container.operator_roles.grant(account_id, "review")
    console = await session_metadata(h, account_id)
    case_id = await apply_for_review(h, docs, account_id)
    case = (
        await review_stub(h).GetCase(review_pb2.GetCaseRequest(case_id=case_id), metadata=console)
    ).case
    for call in (
        review_stub(h).DecideCase(
            review_pb2.DecideCaseRequest(case_id=case_id, decision=APPROVE, reason="是本人"),
            metadata=console,
        ),
        review_stub(h).GetCase(
            review_pb2.GetCaseRequest(case_id=case_id, reveal_fields=["new_phone"]),
            metadata=console,
        ),
        review_stub(h).AddNote(
            review_pb2.AddNoteRequest(case_id=case_id, text="本人申请，请尽快通过"),
            metadata=console,
        ),
    ):
        d = await refused(call)
        assert d.code == grpc.StatusCode.PERMISSION_DENIED
        assert "own account" in d.message
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await streamed(h, console, case_id, case.documents[0].document_id)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await phone_of(h, account_id) == PHONE


async def test_every_decision_needs_a_reason_and_a_decision(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """D2: an empty reason or an unspecified decision is INVALID_ARGUMENT naming the field."""
    h, docs = env
    account_id = await register(h, LOGIN_NAME, PHONE)
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    case_id = await apply_for_review(h, docs, account_id)
    for request, field in (
        (review_pb2.DecideCaseRequest(case_id=case_id, decision=APPROVE, reason=" "), "reason"),
        (review_pb2.DecideCaseRequest(case_id=case_id, reason="ok"), "decision"),
    ):
        d = await refused(review_stub(h).DecideCase(request, metadata=console))
        assert d.code == grpc.StatusCode.INVALID_ARGUMENT
        assert list(d.violations) == [field]
    d = await refused(
        review_stub(h).DecideCase(
            review_pb2.DecideCaseRequest(case_id="case_nope", decision=APPROVE, reason="ok"),
            metadata=console,
        )
    )
    assert d.code == grpc.StatusCode.NOT_FOUND
    assert await phone_of(h, account_id) == PHONE


async def test_a_rejection_tells_the_new_phone_and_changes_nothing(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """H1: rejected, the phone stays; the new phone learns only that the application failed."""
    h, docs = env
    account_id = await register(h, LOGIN_NAME, PHONE)
    session = await login_as(h, LOGIN_NAME)
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    case_id = await apply_for_review(h, docs, account_id)
    before = len(await notices(h))
    assert await decide(h, console, case_id, REJECT, "证件照片与账号实名信息不符") == (
        review_pb2.CASE_STATE_REJECTED
    )
    assert await phone_of(h, account_id) == PHONE
    assert await valid(h, session)
    (sent,) = (await notices(h))[before:]
    assert sent["to"] == NEW_PHONE
    assert "未通过" in sent["text"]
    assert LOGIN_NAME not in sent["text"]
    assert_no_secret(sent["text"], PHONE)


async def test_an_approval_after_the_new_phone_was_taken_becomes_a_rejection(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """H1: the new phone is checked again at approval: bound elsewhere meanwhile, the case is
    REJECTED with that reason and the account keeps its phone."""
    h, docs = env
    account_id = await register(h, LOGIN_NAME, PHONE)
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    case_id = await apply_for_review(h, docs, account_id)
    await register(h, OTHER_LOGIN_NAME, NEW_PHONE)
    assert await decide(h, console, case_id, APPROVE) == review_pb2.CASE_STATE_REJECTED
    assert await phone_of(h, account_id) == PHONE
    got = await review_stub(h).GetCase(review_pb2.GetCaseRequest(case_id=case_id), metadata=console)
    assert "bound to another account meanwhile" in got.case.reason


async def test_a_fault_in_the_decision_leaves_the_case_and_the_account_as_they_were(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """H1, T3: one unit of work: with the decision record refused, the approval changes
    nothing (phone, sessions, notices, case state) and can be made again afterwards."""
    h, docs = env
    account_id = await register(h, LOGIN_NAME, PHONE)
    session = await login_as(h, LOGIN_NAME)
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    case_id = await apply_for_review(h, docs, account_id)
    await settle(h)
    tables = ("outbox", "review_decisions", "identifiers")
    counts = await row_counts(h.container.database, *tables)
    async with failing_writes(h.container.database, "review_decisions"):
        d = await refused(
            review_stub(h).DecideCase(
                review_pb2.DecideCaseRequest(case_id=case_id, decision=APPROVE, reason="一致"),
                metadata=console,
            )
        )
    assert d.code not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN)
    assert await row_counts(h.container.database, *tables) == counts
    assert await phone_of(h, account_id) == PHONE
    assert await valid(h, session)
    got = await review_stub(h).GetCase(review_pb2.GetCaseRequest(case_id=case_id), metadata=console)
    assert got.case.summary.state == review_pb2.CASE_STATE_OPEN
    assert await decide(h, console, case_id, APPROVE) == review_pb2.CASE_STATE_APPROVED
    assert await phone_of(h, account_id) == NEW_PHONE


async def test_the_applicant_gives_only_their_own_documents_and_a_free_phone(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """H1, D1: someone else's document, one that does not exist, or the named account's own
    when the caller is not signed in as it, is INVALID_ARGUMENT (the same answer); a new
    phone bound to any account is ALREADY_EXISTS; the ticket survives both."""
    h, docs = env
    account_id = await register(h, LOGIN_NAME, PHONE)
    other_id = await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    new_phone_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)

    def request(document_id: str, phone: str = NEW_PHONE, t: str = new_phone_ticket) -> object:
        return stubs(h).accounts.ChangePhone(
            accounts_pb2.ChangePhoneRequest(
                identifier=LOGIN_NAME,
                new_phone=phone,
                new_phone_ticket=t,
                manual_review=common_pb2.ManualReviewProof(document_ids=[document_id]),
            ),
            metadata=h.metadata,
        )

    others = await refused(request(await docs.add(other_id)))
    missing = await refused(request("doc_unknown"))
    for d in (others, missing):
        assert d.code == grpc.StatusCode.INVALID_ARGUMENT
        assert list(d.violations) == ["manual_review.document_ids"]
    assert (others.message, others.violations) == (missing.message, missing.violations)

    # The account's own stored scan, named by a caller who is not signed in as it: refused.
    own_scan = await refused(request(await docs.add(account_id)))
    assert (own_scan.message, own_scan.violations) == (missing.message, missing.violations)
    taken = await refused(
        request(
            await docs.add(docs.phone_owner(OTHER_PHONE)),
            OTHER_PHONE,
            await ticket(h, OTHER_PHONE, BIND_PHONE),
        )
    )
    assert taken.code == grpc.StatusCode.ALREADY_EXISTS

    by_phone_holder = await docs.add(docs.phone_owner(NEW_PHONE))
    response = await request(by_phone_holder)
    assert response.review_case_id  # type: ignore[attr-defined]
    assert await phone_of(h, account_id) == PHONE


async def test_an_unknown_account_gets_a_case_too(env: tuple[Harness, HarnessDocuments]) -> None:
    """H1: an identifier naming no account opens a case like any other; the reviewer sees
    "no matching account" and cannot approve it."""
    h, docs = env
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    response = await stubs(h).accounts.ChangePhone(
        accounts_pb2.ChangePhoneRequest(
            identifier="nobody.here",
            new_phone=THIRD_PHONE,
            new_phone_ticket=await ticket(h, THIRD_PHONE, BIND_PHONE),
            manual_review=common_pb2.ManualReviewProof(
                document_ids=[await docs.add(docs.phone_owner(THIRD_PHONE))]
            ),
        ),
        metadata=h.metadata,
    )
    case_id = response.review_case_id
    assert case_id
    got = await review_stub(h).GetCase(review_pb2.GetCaseRequest(case_id=case_id), metadata=console)
    fields = {f.name: f.value for f in got.case.fields}
    assert fields["account"] == "no matching account"
    d = await refused(
        review_stub(h).DecideCase(
            review_pb2.DecideCaseRequest(case_id=case_id, decision=APPROVE, reason="ok"),
            metadata=console,
        )
    )
    assert d.code == grpc.StatusCode.FAILED_PRECONDITION
    assert await decide(h, console, case_id, REJECT, "无匹配账号") == review_pb2.CASE_STATE_REJECTED


async def test_a_second_approval_must_come_from_another_reviewer(
    harness_factory: HarnessFactory,
) -> None:
    """D2: with review_second_approval, the first approval waits for a second, different
    reviewer; only then does the phone change."""
    h, docs = await review_harness(harness_factory, review_second_approval=True)
    account_id = await register(h, LOGIN_NAME, PHONE)
    first_id, first = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    second_id, second = await reviewer_session(h, SECOND_REVIEWER, SECOND_REVIEWER_PHONE)
    case_id = await apply_for_review(h, docs, account_id)

    assert await decide(h, first, case_id, APPROVE) == (
        review_pb2.CASE_STATE_AWAITING_SECOND_APPROVAL
    )
    assert await phone_of(h, account_id) == PHONE
    waiting = await review_stub(h).ListCases(
        review_pb2.ListCasesRequest(state=review_pb2.CASE_STATE_AWAITING_SECOND_APPROVAL),
        metadata=second,
    )
    assert [c.case_id for c in waiting.cases] == [case_id]
    d = await refused(
        review_stub(h).DecideCase(
            review_pb2.DecideCaseRequest(case_id=case_id, decision=APPROVE, reason="再次确认"),
            metadata=first,
        )
    )
    assert d.code == grpc.StatusCode.PERMISSION_DENIED
    assert await decide(h, second, case_id, APPROVE) == review_pb2.CASE_STATE_APPROVED
    assert await phone_of(h, account_id) == NEW_PHONE
    got = await review_stub(h).GetCase(review_pb2.GetCaseRequest(case_id=case_id), metadata=second)
    assert got.case.first_approver_account_id != second_id
    assert got.case.first_approver_account_id

    # A rejection by anyone, the first approver included, ends a waiting case.
    h.clock.advance(25 * HOUR)  # past the cooling-off of the change above
    first = await session_metadata(h, first_id)
    sessions_case = await apply_for_review(h, docs, account_id, new_phone=THIRD_PHONE)
    assert await decide(h, first, sessions_case, APPROVE) == (
        review_pb2.CASE_STATE_AWAITING_SECOND_APPROVAL
    )
    assert await decide(h, first, sessions_case, REJECT, "发现疑点") == (
        review_pb2.CASE_STATE_REJECTED
    )
    assert await phone_of(h, account_id) == NEW_PHONE


async def test_the_queue_pages_oldest_first(env: tuple[Harness, HarnessDocuments]) -> None:
    """Cases come oldest first, page by page; a token not from ListCases is INVALID_ARGUMENT."""
    h, docs = env
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    case_ids = []
    for phone in (NEW_PHONE, THIRD_PHONE, "+8613700003333"):
        response = await stubs(h).accounts.ChangePhone(
            accounts_pb2.ChangePhoneRequest(
                identifier="nobody.here",
                new_phone=phone,
                new_phone_ticket=await ticket(h, phone, BIND_PHONE),
                manual_review=common_pb2.ManualReviewProof(
                    document_ids=[await docs.add(docs.phone_owner(phone))]
                ),
            ),
            metadata=h.metadata,
        )
        case_ids.append(response.review_case_id)
        h.clock.advance(60)
    seen, token = [], ""
    while True:
        page = await review_stub(h).ListCases(
            review_pb2.ListCasesRequest(page_size=2, page_token=token), metadata=console
        )
        seen.extend(c.case_id for c in page.cases)
        token = page.next_page_token
        if not token:
            break
    assert seen == case_ids
    waits = [
        c.waiting_seconds
        for c in (
            await review_stub(h).ListCases(review_pb2.ListCasesRequest(), metadata=console)
        ).cases
    ]
    assert waits == sorted(waits, reverse=True)
    d = await refused(
        review_stub(h).ListCases(
            review_pb2.ListCasesRequest(page_token="garbage!"), metadata=console
        )
    )
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(d.violations) == ["page_token"]


async def test_case_fields_are_sealed_at_rest(env: tuple[Harness, HarnessDocuments]) -> None:
    """I1: the new phone, the login name and the note are not in the database in the clear."""
    h, docs = env
    account_id = await register(h, LOGIN_NAME, PHONE)
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    case_id = await apply_for_review(h, docs, account_id)
    await review_stub(h).AddNote(
        review_pb2.AddNoteRequest(case_id=case_id, text="secret-note-text"), metadata=console
    )
    async with h.container.database.connect() as conn:
        rows = [
            repr(tuple(r))
            for table in ("review_cases", "review_notes")
            for r in (await conn.execute(sa.text(f"SELECT * FROM {table}"))).all()  # noqa: S608
        ]
    dump = "\n".join(rows)
    for value in (NEW_PHONE, NEW_PHONE.removeprefix("+86"), LOGIN_NAME, "secret-note-text"):
        assert value not in dump
