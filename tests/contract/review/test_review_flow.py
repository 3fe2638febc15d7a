"""ReviewFlow on SQLite and PostgreSQL: the queue the real-name flow opens cases in, and
decisions applied in one unit of work with the case (SECURITY D2, P5).

The real-name flow itself is another part's (`flows/realname.py`); here its side of a
decision (`RealNameReview.apply_review`, interface 3) is a small recorder that writes
a row in the same transaction, so the test sees what the flow hands it and whether
it commits or rolls back with the case.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.contract.faults import INJECTED, failing_writes
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.crypto.envelope import DataKeyCipher
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.errors import InvalidArgument, NotFound, PermissionDenied
from xiaohe.identity.server.flows.review import (
    CaseQueue,
    DocumentFacts,
    DocumentTransform,
    RealNameApplier,
    Reviewer,
    ReviewFlow,
)
from xiaohe.identity.server.realname.documents import DocumentService, FileDocumentStore
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


class NoAccountKeys:
    """Accounts' data keys: these tests store only phone holders' documents (own keys)."""

    async def data_key(self, account_id: str) -> bytes:
        """Never asked for here."""
        raise NotFound("account not found")


class Env:
    """A ReviewFlow on one database, with three accounts, two of them reviewers."""

    def __init__(self, database: Database, clock: FakeClock, tmp_path: Path) -> None:
        keyring = KeyRing.load_or_create(tmp_path / "keyring.json", clock)
        self.keyring = keyring
        self.tmp_path = tmp_path
        self.database = database
        self.clock = clock
        self.audit = AuditLog(database, clock, AuditKeys(bytes(range(32))))
        self.cases = ReviewCases(database, DataKeyCipher(keyring), clock)
        self.roles = OperatorRoles(database, clock)
        self.queue = CaseQueue(self.cases, self.audit)
        self.realname = RecordedRealName(database, clock)

    def flow(
        self,
        *,
        second_approval: bool = False,
        documents: DocumentService | None = None,
        transform: DocumentTransform | None = None,
    ) -> ReviewFlow:
        """The flow with real-name cases applied through the recorder."""
        return ReviewFlow(
            uow=self.database,
            cases=self.cases,
            roles=self.roles,
            documents=documents,
            transform=transform,
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

    def documents(self) -> DocumentService:
        """The real document service, files under the test's directory."""
        return DocumentService(
            database=self.database,
            store=FileDocumentStore(self.tmp_path / "documents"),
            cipher=DataKeyCipher(self.keyring),
            account_keys=NoAccountKeys(),
            blind_index=BlindIndex(self.keyring.blind_index_key),
            audit=self.audit,
            clock=self.clock,
        )

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


async def test_a_reviewer_reads_only_the_cases_documents_audited_through_the_transform(
    env: Env,
) -> None:
    """D1: the case's documents are streamed to its reviewer through the document service,
    which audits the read (who, why) first; the watermark seam sees every chunk; a document
    the case does not reference is NotFound."""
    documents = env.documents()
    owner = documents.phone_owner("+8613700001111")
    content = b"%PDF-1.7\n" + bytes(range(256)) * 300
    stored = await documents.store(
        owner=owner,
        kind="id_scan",
        file_name="a.pdf",
        content_type="application/pdf",
        content=content,
    )
    other = await documents.store(
        owner=owner,
        kind="id_scan",
        file_name="b.pdf",
        content_type="application/pdf",
        content=b"%PDF-1.7\nother",
    )
    async with env.database.begin():
        case_id = await env.queue.open_case(
            kind="recovery",
            account_id=None,
            subject_type="natural_person",
            fields={"new_phone": "+8613700001111"},
            document_ids=[stored.document_id],
            reference="",
        )
    seen: list[tuple[str, str, str]] = []

    async def watermark(
        chunks: AsyncIterator[bytes],
        *,
        case_id: str,
        document: DocumentFacts,
        reviewer_account_id: str,
    ) -> AsyncIterator[bytes]:
        seen.append((case_id, document.document_id, reviewer_account_id))
        async for chunk in chunks:
            yield chunk.upper()

    flow = env.flow(documents=documents, transform=watermark)
    info, chunks = await flow.document(Reviewer(REVIEWER, TOTP), case_id, stored.document_id)
    assert (info.content_type, info.size) == ("application/pdf", len(content))
    received = b"".join([chunk async for chunk in chunks])
    assert received == content.upper()
    assert seen == [(case_id, stored.document_id, REVIEWER)]
    (read,) = await env.audit.query(action="document.read")
    assert (read.target, read.outcome, read.actor_account) == (
        stored.document_id,
        f"review:{case_id}",
        REVIEWER,
    )
    with pytest.raises(NotFound):
        await flow.document(Reviewer(REVIEWER, TOTP), case_id, other.document_id)
    view = await flow.get_case(Reviewer(REVIEWER, TOTP), case_id)
    assert [d.document_id for d in view.documents] == [stored.document_id]
