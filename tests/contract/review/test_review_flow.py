"""ReviewFlow on SQLite and PostgreSQL: the queue the real-name flow opens cases in, and
decisions applied in one unit of work with the case (SECURITY D2, P5).

The real-name flow itself is another part's (`flows/realname.py`); here its side of a
decision (`RealNameReview.apply_review`, interface 3) is a small recorder that writes
a row in the same transaction, so the test sees what the flow hands it and whether
it commits or rolls back with the case.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.contract.faults import INJECTED, failing_writes
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.crypto.envelope import DataKeyCipher
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.errors import InvalidArgument, NotFound, PermissionDenied
from xiaohe.identity.server.flows.review import (
    CaseQueue,
    RealNameApplier,
    Reviewer,
    ReviewFlow,
)
from xiaohe.identity.server.review.cases import ReviewCases
from xiaohe.identity.server.review.models import CaseKind, CaseState, Verdict
from xiaohe.identity.server.review.roles import OperatorRoles
from xiaohe.identity.server.storage.database import Database, utc

APPLICANT = "acc_applicant00000000000000"
REVIEWER = "acc_reviewer000000000000000"
SECOND = "acc_second00000000000000000"
TOTP = ("pwd", "otp")


class RecordedRealName:
    """The real-name flow's side of a decision, recorded as a row of the same transaction
    (in `consents`, a table any test may write: account, purpose, channel)."""

    def __init__(self, database: Database, clock: FakeClock) -> None:
        self._db = database
        self._clock = clock
        self.calls: list[tuple[str, bool, str, str, bool]] = []

    async def apply_review(
        self, submission_id: str, *, approved: bool, reason: str, reviewer_account_id: str
    ) -> None:
        """Record the call and write one row inside the caller's unit of work."""
        self.calls.append(
            (submission_id, approved, reason, reviewer_account_id, self._db.in_transaction())
        )
        async with self._db.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO consents (consent_id, account_id, policy_version, purpose, "
                    "accepted_at, client_id, channel, ip_masked) VALUES (:id, :a, 1, :p, :t, "
                    "'test', 'review', '')"
                ),
                {
                    "id": f"con_{len(self.calls)}",
                    "a": APPLICANT,
                    "p": "approved" if approved else "rejected",
                    "t": utc(self._clock.now()),
                },
            )


class Env:
    """A ReviewFlow on one database, with three accounts, two of them reviewers."""

    def __init__(self, database: Database, clock: FakeClock, tmp_path: Path) -> None:
        keyring = KeyRing.load_or_create(tmp_path / "keyring.json", clock)
        self.database = database
        self.clock = clock
        self.audit = AuditLog(database, clock, AuditKeys(bytes(range(32))))
        self.cases = ReviewCases(database, DataKeyCipher(keyring), clock)
        self.roles = OperatorRoles(database, clock)
        self.queue = CaseQueue(self.cases, self.audit)
        self.realname = RecordedRealName(database, clock)

    def flow(self, *, second_approval: bool = False) -> ReviewFlow:
        """The flow with real-name cases applied through the recorder."""
        return ReviewFlow(
            uow=self.database,
            cases=self.cases,
            roles=self.roles,
            documents=None,
            appliers={CaseKind.REAL_NAME: RealNameApplier(self.realname)},
            audit=self.audit,
            clock=self.clock,
            second_approval=second_approval,
        )

    async def setup(self) -> None:
        """The accounts (rows only) and the reviewers' role."""
        async with self.database.begin() as conn:
            for n, account_id in enumerate((APPLICANT, REVIEWER, SECOND)):
                await conn.execute(
                    sa.text(
                        "INSERT INTO accounts (account_id, subject_type, login_name, "
                        "password_hash, status, accepted_policy_version, real_name_level, "
                        "master_key_id, created_at, updated_at) VALUES (:a, 'NATURAL_PERSON', "
                        ":n, 'x', 'active', 1, 0, 'mk', :t, :t)"
                    ),
                    {"a": account_id, "n": f"user{n}", "t": utc(self.clock.now())},
                )
        await self.roles.grant(REVIEWER, "review")
        await self.roles.grant(SECOND, "review")

    async def real_name_case(self, account_id: str = APPLICANT) -> str:
        """A real-name case opened as the real-name flow opens one (in its unit of work)."""
        async with self.database.begin():
            return await self.queue.open_case(
                kind="real_name",
                account_id=account_id,
                subject_type="natural_person",
                fields={
                    "name": "张伟",
                    "id_type": "RESIDENT_ID_CARD",
                    "id_number": "11010519491231002X",
                },
                document_ids=["doc_front", "doc_back"],
                reference="sub_0123456789",
            )


@pytest.fixture
async def env(database: Database, clock: FakeClock, tmp_path: Path) -> Env:
    """The flow's stores on `database` (SQLite, PostgreSQL)."""
    built = Env(database, clock, tmp_path)
    await built.setup()
    return built


async def test_a_real_name_decision_reaches_the_real_name_flow_in_the_same_transaction(
    env: Env,
) -> None:
    """D2: the submission id, the verdict, the reason and the reviewer go to apply_review
    inside the unit of work that records the decision; the decision is audited."""
    case_id = await env.real_name_case()
    state = await env.flow().decide(Reviewer(REVIEWER, TOTP), case_id, Verdict.APPROVE, "一致")
    assert state is CaseState.APPROVED
    assert env.realname.calls == [("sub_0123456789", True, "一致", REVIEWER, True)]
    records = await env.audit.query(action="review.case.decide")
    assert [(r.target, r.outcome) for r in records] == [(case_id, "approved")]
    opened = await env.audit.query(action="review.case.open")
    assert [(r.target, r.outcome) for r in opened] == [(case_id, "real_name")]


async def test_a_fault_after_the_real_name_flow_rolls_both_back(env: Env) -> None:
    """D2: with the decision's row refused, neither the real-name flow's write nor the case's
    new state remains; the case can be decided again."""
    case_id = await env.real_name_case()
    flow = env.flow()
    async with failing_writes(env.database, "review_decisions"):
        with pytest.raises(Exception, match=INJECTED):
            await flow.decide(Reviewer(REVIEWER, TOTP), case_id, Verdict.REJECT, "证件模糊")
    async with env.database.connect() as conn:
        written = (await conn.execute(sa.text("SELECT COUNT(*) FROM consents"))).scalar_one()
    assert written == 0
    assert (await env.cases.get(case_id)).state is CaseState.OPEN
    assert await env.audit.query(action="review.case.decide") == []
    assert await flow.decide(Reviewer(REVIEWER, TOTP), case_id, Verdict.REJECT, "证件模糊") is (
        CaseState.REJECTED
    )


async def test_two_approvals_reach_the_real_name_flow_once(env: Env) -> None:
    """D2: with second approval on, the first approval applies nothing; the second, by
    another reviewer, applies it once."""
    case_id = await env.real_name_case()
    flow = env.flow(second_approval=True)
    first = await flow.decide(Reviewer(REVIEWER, TOTP), case_id, Verdict.APPROVE, "一致")
    assert first is CaseState.AWAITING_SECOND_APPROVAL
    assert env.realname.calls == []
    with pytest.raises(PermissionDenied):
        await flow.decide(Reviewer(REVIEWER, TOTP), case_id, Verdict.APPROVE, "一致")
    second = await flow.decide(Reviewer(SECOND, TOTP), case_id, Verdict.APPROVE, "复核一致")
    assert second is CaseState.APPROVED
    assert [c[:4] for c in env.realname.calls] == [("sub_0123456789", True, "复核一致", SECOND)]
    case = await env.cases.get(case_id)
    assert [(d.reviewer_account_id, d.verdict) for d in case.decisions] == [
        (REVIEWER, Verdict.APPROVE),
        (SECOND, Verdict.APPROVE),
    ]


async def test_reviewers_need_totp_and_the_role_and_not_their_own_case(env: Env) -> None:
    """D2, P5: no `otp` in amr, no role, or the reviewer's own case: PermissionDenied."""
    case_id = await env.real_name_case(account_id=REVIEWER)
    flow = env.flow()
    for reviewer in (Reviewer(REVIEWER, ("pwd",)), Reviewer(APPLICANT, TOTP)):
        with pytest.raises(PermissionDenied):
            await flow.list_cases(reviewer, kind=None, state=None, page_size=0, page_token="")
    with pytest.raises(PermissionDenied, match="own account"):
        await flow.decide(Reviewer(REVIEWER, TOTP), case_id, Verdict.APPROVE, "是我")
    with pytest.raises(PermissionDenied, match="own account"):
        await flow.get_case(Reviewer(REVIEWER, TOTP), case_id, reveal=["name"])
    view = await flow.get_case(Reviewer(REVIEWER, TOTP), case_id)
    assert dict((n, (v, m)) for n, v, m in view.fields)["name"] == ("张*", True)
    assert env.realname.calls == []


async def test_reveals_are_audited_one_record_per_field(env: Env) -> None:
    """D2: each revealed field is one audit record; an unknown field is InvalidArgument and
    reveals nothing."""
    case_id = await env.real_name_case()
    flow = env.flow()
    with pytest.raises(InvalidArgument) as caught:
        await flow.get_case(Reviewer(REVIEWER, TOTP), case_id, reveal=["name", "password"])
    assert caught.value.violations[0].field == "reveal_fields"
    assert await env.audit.query(action="review.case.reveal") == []
    view = await flow.get_case(Reviewer(REVIEWER, TOTP), case_id, reveal=["name", "id_number"])
    shown = {n: (v, m) for n, v, m in view.fields}
    assert shown["name"] == ("张伟", False)
    assert shown["id_number"] == ("11010519491231002X", False)
    records = await env.audit.query(action="review.case.reveal")
    assert sorted(r.outcome for r in records) == ["id_number", "name"]
    assert {r.target for r in records} == {case_id}
    with pytest.raises(NotFound):
        await flow.get_case(Reviewer(REVIEWER, TOTP), "case_unknown")


async def test_the_sla_marks_open_cases_overdue(env: Env) -> None:
    """Waiting time counts until the decision; only open cases become overdue."""
    waiting = await env.real_name_case()
    decided = await env.real_name_case()
    flow = env.flow()
    env.clock.advance(3600)
    await flow.decide(Reviewer(REVIEWER, TOTP), decided, Verdict.REJECT, "不符")
    env.clock.advance(48 * 3600)
    queue = await flow.list_cases(
        Reviewer(REVIEWER, TOTP), kind=None, state=None, page_size=0, page_token=""
    )
    entries = {e.summary.case_id: e for e in queue.entries}
    assert queue.sla_seconds == 48 * 3600
    assert (entries[waiting].waiting_seconds, entries[waiting].overdue) == (49 * 3600, True)
    assert (entries[decided].waiting_seconds, entries[decided].overdue) == (3600, False)
