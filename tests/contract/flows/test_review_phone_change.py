"""ChangePhone by manual review, decided through ReviewFlow, on SQLite and PostgreSQL
(SECURITY H1, H2, T3, D2).

The flows are wired as the container wires them, on the channel-flow suite's stores
(`env`): real accounts, tickets, sessions, outbox and audit log, the real document
service and review cases. A fault in the decision's unit of work must leave the
phone, the identifier rows, every session, the outbox and the case as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.contract.accounts.conftest import PHONE_E164, natural_command
from tests.contract.faults import failing_writes
from tests.contract.flows.test_channel_flows import (  # noqa: F401 - `env` is a fixture
    IP,
    NEW_PHONE,
    FlowsEnv,
    env,
)
from xiaohe.identity.server.codes.models import Purpose
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.flows.phone_change import (
    ChangePhoneCommand,
    PhoneChangeFlow,
    PhoneProof,
)
from xiaohe.identity.server.flows.review import CaseQueue, Reviewer, ReviewFlow
from xiaohe.identity.server.realname.documents import DocumentService, FileDocumentStore
from xiaohe.identity.server.review.cases import ReviewCases
from xiaohe.identity.server.review.models import CaseKind, CaseState, Verdict
from xiaohe.identity.server.review.roles import OperatorRoles
from xiaohe.identity.server.shared.identifiers import IdentifierKind
from xiaohe.identity.server.storage.database import utc

REVIEWER = "acc_reviewer000000000000000"
TOTP = ("pwd", "otp")


@dataclass
class ReviewEnv:
    """The phone-change flow with its manual-review branch, and the reviewers' flow."""

    flows: FlowsEnv
    phone_change: PhoneChangeFlow
    review: ReviewFlow
    cases: ReviewCases
    documents: DocumentService


@pytest.fixture
async def review(env: FlowsEnv, tmp_path: Path) -> ReviewEnv:  # noqa: F811 - the fixture
    """Manual review wired on `env`'s stores, with one reviewer (role `review`)."""
    accounts = env.accounts
    documents = DocumentService(
        database=accounts.database,
        store=FileDocumentStore(tmp_path / "documents"),
        cipher=accounts.cipher,
        account_keys=accounts.service,
        blind_index=BlindIndex(accounts.keyring.blind_index_key),
        audit=env.audit,
        clock=accounts.clock,
    )
    cases = ReviewCases(accounts.database, accounts.cipher, accounts.clock)
    phone_change = PhoneChangeFlow(
        **env.phone_change_kwargs,
        review_queue=CaseQueue(cases, env.audit),
        documents=documents,
    )
    roles = OperatorRoles(accounts.database, accounts.clock)
    async with accounts.database.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO accounts (account_id, subject_type, login_name, password_hash, "
                "status, accepted_policy_version, real_name_level, master_key_id, created_at, "
                "updated_at) VALUES (:a, 'NATURAL_PERSON', 'reviewer', 'x', 'active', 1, 0, "
                "'mk', :t, :t)"
            ),
            {"a": REVIEWER, "t": utc(accounts.clock.now())},
        )
    await roles.grant(REVIEWER, "review")
    flow = ReviewFlow(
        uow=accounts.database,
        cases=cases,
        roles=roles,
        documents=documents,
        appliers={CaseKind.PHONE_CHANGE: phone_change},
        audit=env.audit,
        clock=accounts.clock,
    )
    return ReviewEnv(env, phone_change, flow, cases, documents)


async def apply(review: ReviewEnv, account_id: str) -> str:
    """ChangePhone by manual review, not signed in, with a document uploaded with the new
    phone's ticket; the case id."""
    flows = review.flows
    info = await review.documents.store(
        owner=review.documents.phone_owner(NEW_PHONE),
        kind="id_scan",
        file_name="scan.pdf",
        content_type="application/pdf",
        content=b"%PDF-1.7\nscan",
    )
    changed = await review.phone_change.change(
        ChangePhoneCommand(
            identifier="zhangsan",
            identifier_kind=IdentifierKind.UNSPECIFIED,
            account_id="",
            session_id="",
            new_phone=NEW_PHONE,
            new_phone_ticket=await flows.ticket(NEW_PHONE, Purpose.BIND_PHONE),
            proof=PhoneProof.MANUAL_REVIEW,
            proof_ticket="",
            ip=IP,
            document_ids=(info.document_id,),
        )
    )
    assert (changed.phone_masked, changed.sessions_ended) == ("", 0)
    return changed.review_case_id


@pytest.mark.parametrize("failing", ["review_decisions", "outbox"])
async def test_an_approval_is_all_or_nothing(review: ReviewEnv, failing: str) -> None:
    """H1, H2, T3: with the decision or the notice refused, the approval leaves the phone,
    the identifiers, every session, the outbox, the audit successes and the case as they
    were; decided again, the whole change happens."""
    flows = review.flows
    account_id = await flows.register()
    await flows.session(account_id)
    case_id = await apply(review, account_id)
    before = await flows.state(account_id)
    assert before["phone"] == PHONE_E164
    async with failing_writes(flows.database, failing):
        with pytest.raises(Exception):  # noqa: B017,PT011 - the store's own error
            await review.review.decide(Reviewer(REVIEWER, TOTP), case_id, Verdict.APPROVE, "一致")
    assert await flows.state(account_id) == before
    assert (await review.cases.get(case_id)).state is CaseState.OPEN

    state = await review.review.decide(Reviewer(REVIEWER, TOTP), case_id, Verdict.APPROVE, "一致")
    assert state is CaseState.APPROVED
    after = await flows.state(account_id)
    assert after["phone"] == NEW_PHONE
    assert after["live"] == []
    assert after["rows"]["outbox"] > before["rows"]["outbox"]
    assert ("account.phone.change", "manual_review") in after["successes"]
    assert ("review.case.decide", "approved") in after["successes"]


async def test_an_approval_for_a_phone_taken_meanwhile_is_a_rejection(review: ReviewEnv) -> None:
    """H1: the new phone is checked again when the case is decided."""
    flows = review.flows
    account_id = await flows.register()
    case_id = await apply(review, account_id)
    other = natural_command(login_name="lisi", phone=NEW_PHONE, id_number="440524188001010014")
    await flows.accounts.register(other)
    state = await review.review.decide(Reviewer(REVIEWER, TOTP), case_id, Verdict.APPROVE, "一致")
    assert state is CaseState.REJECTED
    assert (await flows.state(account_id))["phone"] == PHONE_E164
    case = await review.cases.get(case_id)
    assert "meanwhile" in case.final_reason
