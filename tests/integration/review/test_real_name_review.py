"""Real-name submissions decided by a reviewer, over real gRPC (SECURITY D1, D2).

RealNameService sends a submission to review (`real_name_review` on); the case opens
in the review queue in the same unit of work, the reviewer reads it and its scan,
and the decision reaches the submission through `RealNameFlow.apply_review`.
"""

from __future__ import annotations

import grpc
import pytest

from tests.document_samples import png_sample
from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.realname.test_realname_rpc import (
    ID_NUMBER,
    NAME,
    bearer,
    rn,
    signed_in,
    ts,
    upload,
)
from tests.integration.review.steps import (
    REVIEWER,
    REVIEWER_PHONE,
    decide,
    review_stub,
    reviewer_session,
    session_metadata,
    streamed,
)
from xiaohe.identity.v1 import auth_pb2, common_pb2, realname_pb2, review_pb2


async def submitted(h: Harness, session: auth_pb2.Session) -> tuple[str, str]:
    """A natural person's submission with one uploaded scan; (submission id, document id)."""
    doc = await upload(h, session.access_token, png_sample())
    response = await rn(h).SubmitNaturalPerson(
        realname_pb2.SubmitNaturalPersonRequest(
            name=NAME,
            id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD,
            id_number=ID_NUMBER,
            valid_from=ts(h.clock.now() - 86400),
            address="青海",
            document_ids=[doc.document_id],
        ),
        metadata=bearer(h, session.access_token),
    )
    assert response.state == realname_pb2.REAL_NAME_STATE_IN_REVIEW
    return response.submission_id, doc.document_id


async def status(h: Harness, session: auth_pb2.Session) -> realname_pb2.GetRealNameStatusResponse:
    """GetRealNameStatus of the session's account."""
    return await rn(h).GetRealNameStatus(
        realname_pb2.GetRealNameStatusRequest(), metadata=bearer(h, session.access_token)
    )


@pytest.fixture
async def h(harness_factory: HarnessFactory) -> Harness:
    """A server whose real-name submissions go to review."""
    return await harness_factory(real_name_review=True)


async def test_an_approved_case_verifies_the_submission(h: Harness) -> None:
    """D1, D2: the case carries the submission's fields and scan; approval gives level 2."""
    session = await signed_in(h)
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    submission_id, document_id = await submitted(h, session)

    (summary,) = (
        await review_stub(h).ListCases(
            review_pb2.ListCasesRequest(kind=review_pb2.CASE_KIND_REAL_NAME), metadata=console
        )
    ).cases
    case = (
        await review_stub(h).GetCase(
            review_pb2.GetCaseRequest(case_id=summary.case_id, reveal_fields=["id_number"]),
            metadata=console,
        )
    ).case
    fields = {f.name: (f.value, f.masked) for f in case.fields}
    assert fields["id_number"] == (ID_NUMBER, False)
    assert fields["name"][1] is True
    assert fields["account"] == (session.account_id, False)
    assert [d.document_id for d in case.documents] == [document_id]
    content_type, size, content = await streamed(h, console, summary.case_id, document_id)
    assert (content_type, size, len(content)) == ("image/png", case.documents[0].size, size)

    state = await decide(h, console, summary.case_id, review_pb2.DECISION_APPROVE)
    assert state == review_pb2.CASE_STATE_APPROVED
    now = await status(h, session)
    assert (now.state, now.real_name_level, now.submission_id) == (
        realname_pb2.REAL_NAME_STATE_VERIFIED,
        2,
        submission_id,
    )


async def test_a_rejected_case_rejects_the_submission_with_the_reason(h: Harness) -> None:
    """D2: the reviewer's reason is what the user sees."""
    session = await signed_in(h)
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    await submitted(h, session)
    (summary,) = (
        await review_stub(h).ListCases(review_pb2.ListCasesRequest(), metadata=console)
    ).cases
    state = await decide(h, console, summary.case_id, review_pb2.DECISION_REJECT, "证件照片不清晰")
    assert state == review_pb2.CASE_STATE_REJECTED
    now = await status(h, session)
    assert (now.state, now.real_name_level) == (realname_pb2.REAL_NAME_STATE_REJECTED, 0)
    assert now.reason == "证件照片不清晰"


async def test_the_applicant_cannot_review_their_own_submission(h: Harness) -> None:
    """D2: an applicant who is also a reviewer cannot decide their own case."""
    session = await signed_in(h)
    await h.container.operator_roles.grant(session.account_id, "review")
    console = await session_metadata(h, session.account_id)
    await submitted(h, session)
    (summary,) = (
        await review_stub(h).ListCases(review_pb2.ListCasesRequest(), metadata=console)
    ).cases
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await review_stub(h).DecideCase(
            review_pb2.DecideCaseRequest(
                case_id=summary.case_id, decision=review_pb2.DECISION_APPROVE, reason="是我"
            ),
            metadata=console,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await status(h, session)).state == realname_pb2.REAL_NAME_STATE_IN_REVIEW
