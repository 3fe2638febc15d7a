"""RecoverAccount by manual review over real gRPC (privacy policy 一.5; SECURITY H1, H2, T3).

Someone who lost the bound phone gives their identity, the phone they hold now
with its ticket, and documents uploaded with that phone's ticket. A case opens
whether or not the identity matches an account, with the same answer; on
approval the new phone is bound and the login name goes to it, and the person
resets the password with a RESET_PASSWORD code to the new phone.
"""

from __future__ import annotations

import grpc
import pytest

from tests.contract.faults import failing_writes, row_counts
from tests.integration.accounts.channel_steps import (
    BIND_PHONE,
    login_as,
    notices,
    phone_of,
    refused,
    settle,
    ticket,
    valid,
)
from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import LOGIN_NAME, PHONE, code_ticket
from tests.integration.recovery.test_recover_rpc import (
    ID_NUMBER,
    NAME,
    NEW_PASSWORD,
    legal,
    natural,
    register_legal,
    register_natural,
)
from tests.integration.review.steps import (
    REVIEWER,
    REVIEWER_PHONE,
    HarnessDocuments,
    decide,
    review_harness,
    review_stub,
    reviewer_session,
)
from tests.rpc_errors import details_of
from xiaohe.identity.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    common_pb2,
    recovery_pb2,
    recovery_pb2_grpc,
    review_pb2,
)

NEW_PHONE = "+8613500005555"
OTHER_NEW_PHONE = "+8613500006666"
APPROVE = review_pb2.DECISION_APPROVE
REJECT = review_pb2.DECISION_REJECT


@pytest.fixture
async def env(harness_factory: HarnessFactory) -> tuple[Harness, HarnessDocuments]:
    """A server whose review reads `HarnessDocuments`."""
    return await review_harness(harness_factory)


async def by_review(
    h: Harness,
    docs: HarnessDocuments,
    request: recovery_pb2.RecoverAccountRequest,
    new_phone: str = NEW_PHONE,
) -> recovery_pb2.RecoverAccountResponse:
    """RecoverAccount by manual review: the request's identity, `new_phone` proven by a
    BIND_PHONE ticket, one document uploaded with it."""
    request.ClearField("phone_ticket")
    request.phone = ""
    request.manual_review.CopyFrom(
        common_pb2.ManualReviewProof(
            document_ids=[await docs.add(docs.phone_owner(new_phone))],
            new_phone=new_phone,
            new_phone_ticket=await ticket(h, new_phone, BIND_PHONE),
        )
    )
    response = await recovery_pb2_grpc.RecoveryServiceStub(h.channel).RecoverAccount(
        request, metadata=h.metadata
    )
    await settle(h)
    return response


async def test_a_matched_identity_gets_the_new_phone_and_the_login_name_on_approval(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """H1, H2, T3: approved, the new phone is bound, the old one told, sessions end, the login
    name goes to the new phone, and a RESET_PASSWORD code to it resets the password."""
    h, docs = env
    account_id = await register_natural(h)
    session = await login_as(h, LOGIN_NAME)
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    response = await by_review(h, docs, natural(""))
    assert response.review_case_id
    assert (response.login_name_masked, response.reset_grant) == ("", "")
    assert await phone_of(h, account_id) == PHONE

    got = await review_stub(h).GetCase(
        review_pb2.GetCaseRequest(case_id=response.review_case_id), metadata=console
    )
    fields = {f.name: (f.value, f.masked) for f in got.case.fields}
    assert fields["account"] == (account_id, False)
    assert fields["id_number"] == ("110*************2X", True)
    assert fields["name"] == ("张*", True)
    assert fields["id_type"] == ("RESIDENT_ID_CARD", False)

    before = len(await notices(h))
    state = await decide(h, console, response.review_case_id, APPROVE)
    assert state == review_pb2.CASE_STATE_APPROVED
    assert await phone_of(h, account_id) == NEW_PHONE
    assert not await valid(h, session)
    sent = (await notices(h))[before:]
    assert sorted(n["to"] for n in sent) == sorted([PHONE, NEW_PHONE])
    (reminder,) = [n for n in sent if n["to"] == NEW_PHONE]
    assert LOGIN_NAME in reminder["text"]

    reset_ticket = await code_ticket(h, NEW_PHONE, common_pb2.PURPOSE_RESET_PASSWORD)
    await accounts_pb2_grpc.AccountServiceStub(h.channel).ResetPassword(
        accounts_pb2.ResetPasswordRequest(
            identifier=LOGIN_NAME, ticket=reset_ticket, new_password=NEW_PASSWORD
        ),
        metadata=h.metadata,
    )
    assert (await login_as(h, LOGIN_NAME, NEW_PASSWORD)).access_token


async def test_a_match_and_no_match_answer_alike(env: tuple[Harness, HarnessDocuments]) -> None:
    """The applicant cannot tell whether the identity matched: both answers are a case id
    and nothing else; the reviewer sees "no matching account" and cannot approve it."""
    h, docs = env
    await register_natural(h)
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    matched = await by_review(h, docs, natural(""))
    unmatched = await by_review(
        h, docs, natural("", id_number="440524188001010014"), new_phone=OTHER_NEW_PHONE
    )
    for response in (matched, unmatched):
        assert response.review_case_id.startswith("case_")
        assert response.ListFields() == [
            (
                recovery_pb2.RecoverAccountResponse.DESCRIPTOR.fields_by_name["review_case_id"],
                response.review_case_id,
            )
        ]
    got = await review_stub(h).GetCase(
        review_pb2.GetCaseRequest(case_id=unmatched.review_case_id), metadata=console
    )
    assert {f.name: f.value for f in got.case.fields}["account"] == "no matching account"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await review_stub(h).DecideCase(
            review_pb2.DecideCaseRequest(
                case_id=unmatched.review_case_id, decision=APPROVE, reason="一致"
            ),
            metadata=console,
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    before = len(await notices(h))
    assert await decide(h, console, unmatched.review_case_id, REJECT, "无匹配账号") == (
        review_pb2.CASE_STATE_REJECTED
    )
    (sent,) = (await notices(h))[before:]
    assert sent["to"] == OTHER_NEW_PHONE
    assert "未通过" in sent["text"]


async def test_a_legal_person_is_matched_by_the_uscc(env: tuple[Harness, HarnessDocuments]) -> None:
    """A legal person's case names its account when every field it holds matches."""
    h, docs = env
    account_id = await register_legal(h)
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    response = await by_review(h, docs, legal(""))
    got = await review_stub(h).GetCase(
        review_pb2.GetCaseRequest(case_id=response.review_case_id), metadata=console
    )
    fields = {f.name: (f.value, f.masked) for f in got.case.fields}
    assert fields["account"] == (account_id, False)
    assert fields["uscc"] == ("91350100M000100Y43", False)
    assert got.case.summary.subject_type == common_pb2.SUBJECT_TYPE_LEGAL_PERSON


async def test_documents_must_come_from_the_new_phone(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """D1: a document of the account (or of another phone) is INVALID_ARGUMENT before the
    ticket is spent; the ticket then still opens the case."""
    h, docs = env
    account_id = await register_natural(h)
    new_phone_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
    request = natural("")
    request.ClearField("phone_ticket")
    request.phone = ""
    for owner in (account_id, docs.phone_owner(OTHER_NEW_PHONE)):
        request.manual_review.CopyFrom(
            common_pb2.ManualReviewProof(
                document_ids=[await docs.add(owner)],
                new_phone=NEW_PHONE,
                new_phone_ticket=new_phone_ticket,
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await recovery_pb2_grpc.RecoveryServiceStub(h.channel).RecoverAccount(
                request, metadata=h.metadata
            )
        d = details_of(caught.value)
        assert d.code == grpc.StatusCode.INVALID_ARGUMENT
        assert list(d.violations) == ["manual_review.document_ids"]
    request.manual_review.document_ids[:] = [await docs.add(docs.phone_owner(NEW_PHONE))]
    response = await recovery_pb2_grpc.RecoveryServiceStub(h.channel).RecoverAccount(
        request, metadata=h.metadata
    )
    assert response.review_case_id
    again = await refused(
        recovery_pb2_grpc.RecoveryServiceStub(h.channel).RecoverAccount(
            request, metadata=h.metadata
        )
    )
    assert (again.code, list(again.violations)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["manual_review.new_phone_ticket"],
    )


async def test_malformed_manual_review_names_every_field(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """F3: all violations at once, under the request's paths."""
    h, _ = env
    request = recovery_pb2.RecoverAccountRequest(
        natural_person=recovery_pb2.NaturalPersonIdentity(name=NAME, id_number=ID_NUMBER[:-1]),
        manual_review=common_pb2.ManualReviewProof(new_phone="12"),
    )
    d = await refused(
        recovery_pb2_grpc.RecoveryServiceStub(h.channel).RecoverAccount(
            request, metadata=h.metadata
        )
    )
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {
        "manual_review.new_phone",
        "manual_review.new_phone_ticket",
        "manual_review.document_ids",
    } <= set(d.violations)
    assert any(v.startswith("natural_person.") for v in d.violations)


async def test_a_fault_while_opening_the_case_spends_nothing_but_the_ticket(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """The case and its audit record commit together: with the case refused, no case row
    and no `review_opened` record remain."""
    h, docs = env
    await register_natural(h)
    tables = ("review_cases", "audit_log")
    async with failing_writes(h.container.database, "review_cases"):
        counts = await row_counts(h.container.database, *tables)
        with pytest.raises(grpc.aio.AioRpcError):
            await by_review(h, docs, natural(""))
        after = await row_counts(h.container.database, *tables)
    assert after["review_cases"] == counts["review_cases"] == 0
    outcomes = [r.outcome for r in await h.container.audit.query(action="account.recover")]
    assert "review_opened" not in outcomes


async def test_a_fault_in_the_approval_binds_nothing_and_sends_nothing(
    env: tuple[Harness, HarnessDocuments],
) -> None:
    """H1, T3: the approval's phone binding, ended sessions, notices and the case's state are
    one unit of work: with the decision record refused none of them happens."""
    h, docs = env
    account_id = await register_natural(h)
    session = await login_as(h, LOGIN_NAME)
    _, console = await reviewer_session(h, REVIEWER, REVIEWER_PHONE)
    response = await by_review(h, docs, natural(""))
    await settle(h)
    tables = ("outbox", "identifiers", "review_decisions")
    counts = await row_counts(h.container.database, *tables)
    async with failing_writes(h.container.database, "review_decisions"):
        with pytest.raises(grpc.aio.AioRpcError):
            await review_stub(h).DecideCase(
                review_pb2.DecideCaseRequest(
                    case_id=response.review_case_id, decision=APPROVE, reason="一致"
                ),
                metadata=console,
            )
    assert await row_counts(h.container.database, *tables) == counts
    assert await phone_of(h, account_id) == PHONE
    assert await valid(h, session)
    assert await decide(h, console, response.review_case_id, APPROVE) == (
        review_pb2.CASE_STATE_APPROVED
    )
    assert await phone_of(h, account_id) == NEW_PHONE
