"""Review cases and operator roles on SQLite and PostgreSQL (SECURITY D2, I1).

The same bodies run on both stores: cases open inside the caller's unit of
work, page oldest first, keep their fields, reasons and notes sealed, and a
decision is a conditional move of the state (two deciders: one wins).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.contract.faults import INJECTED, failing_writes
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.envelope import DataKeyCipher
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.errors import Conflict, InvalidArgument, NotFound
from xiaohe.identity.server.review.cases import ReviewCases
from xiaohe.identity.server.review.models import CaseKind, CaseState, Verdict
from xiaohe.identity.server.review.roles import OperatorRoles
from xiaohe.identity.server.storage.database import Database, utc

ID_NUMBER = "11010519491231002X"
PHONE = "+8613812345678"
ACCOUNT = "acc_0123456789abcdef01234567"


@pytest.fixture
def cases(database: Database, clock: FakeClock, tmp_path: Path) -> ReviewCases:
    """The cases store on `database` (SQLite, PostgreSQL) with a fresh key ring."""
    keyring = KeyRing.load_or_create(tmp_path / "keyring.json", clock)
    return ReviewCases(database, DataKeyCipher(keyring), clock)


async def open_case(cases: ReviewCases, **changes: object) -> str:
    """A phone-change case about ACCOUNT."""
    values: dict[str, object] = {
        "kind": CaseKind.PHONE_CHANGE,
        "account_id": ACCOUNT,
        "subject_type": "natural_person",
        "fields": {"name": "张伟", "id_number": ID_NUMBER, "new_phone": PHONE},
        "document_ids": ["doc_1", "doc_2"],
        "reference": "",
    }
    values.update(changes)
    return await cases.open(**values)  # type: ignore[arg-type]


async def test_a_case_keeps_what_it_was_opened_with_sealed_at_rest(
    cases: ReviewCases, database: Database, clock: FakeClock
) -> None:
    """I1: fields, reasons and notes read back as written, and none is in a row in the clear."""
    case_id = await open_case(cases)
    clock.advance(30)
    await cases.add_note(case_id, author_account_id="acc_reviewer", text="备注：照片清晰")
    case = await cases.get(case_id)
    await cases.decide(
        case,
        reviewer_account_id="acc_reviewer",
        verdict=Verdict.APPROVE,
        reason=f"与证件 {ID_NUMBER} 一致",
        new_state=CaseState.APPROVED,
    )
    case = await cases.get(case_id)
    assert case.state is CaseState.APPROVED
    assert case.account_id == ACCOUNT
    assert dict(case.fields) == {"name": "张伟", "id_number": ID_NUMBER, "new_phone": PHONE}
    assert case.document_ids == ("doc_1", "doc_2")
    assert [(n.author_account_id, n.text) for n in case.notes] == [
        ("acc_reviewer", "备注：照片清晰")
    ]
    assert case.final_reason == f"与证件 {ID_NUMBER} 一致"
    assert case.summary.decided_at == clock.now()
    rows: list[str] = []
    async with database.connect() as conn:
        for table in ("review_cases", "review_decisions", "review_notes"):
            result = await conn.execute(sa.text(f"SELECT * FROM {table}"))  # noqa: S608
            rows.extend(repr(tuple(row)) for row in result.all())
    dump = "".join(rows)
    for secret in (ID_NUMBER, PHONE, "张伟", "照片清晰", "一致"):
        assert secret not in dump
        assert secret.encode("utf-8").hex() not in dump


async def test_the_queue_is_oldest_first_filtered_and_paged(
    cases: ReviewCases, clock: FakeClock
) -> None:
    """Oldest first; filters by kind and state; a page token continues where the page ended."""
    opened = []
    for kind in (CaseKind.RECOVERY, CaseKind.PHONE_CHANGE, CaseKind.RECOVERY, CaseKind.REAL_NAME):
        opened.append(await open_case(cases, kind=kind, account_id=None))
        clock.advance(10)
    first = await cases.page(kind=None, state=None, page_size=3, page_token="")
    assert [c.case_id for c in first.cases] == opened[:3]
    rest = await cases.page(kind=None, state=None, page_size=3, page_token=first.next_page_token)
    assert [c.case_id for c in rest.cases] == opened[3:]
    assert rest.next_page_token == ""
    recoveries = await cases.page(kind=CaseKind.RECOVERY, state=None, page_size=0, page_token="")
    assert [c.case_id for c in recoveries.cases] == [opened[0], opened[2]]
    done = await cases.page(kind=None, state=CaseState.APPROVED, page_size=10, page_token="")
    assert done.cases == ()
    with pytest.raises(InvalidArgument) as caught:
        await cases.page(kind=None, state=None, page_size=1, page_token="not-a-token")
    assert caught.value.violations[0].field == "page_token"


async def test_of_two_concurrent_decisions_exactly_one_wins(cases: ReviewCases) -> None:
    """D2: a decision moves the state it was read in; the second decider gets Conflict and
    records nothing."""
    case_id = await open_case(cases)
    case = await cases.get(case_id)
    results = await asyncio.gather(
        *(
            cases.decide(
                case,
                reviewer_account_id=f"acc_reviewer{n}",
                verdict=verdict,
                reason="决定",
                new_state=state,
            )
            for n, (verdict, state) in enumerate(
                [(Verdict.APPROVE, CaseState.APPROVED), (Verdict.REJECT, CaseState.REJECTED)]
            )
        ),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1
    assert sum(isinstance(r, Conflict) for r in results) == 1
    decided = await cases.get(case_id)
    assert len(decided.decisions) == 1
    assert decided.state.final


async def test_opening_joins_the_callers_unit_of_work(
    cases: ReviewCases, database: Database
) -> None:
    """A case opened in a unit of work that fails later is not there; a fault in the case
    row leaves nothing either."""

    class Abort(Exception):
        pass

    opened: list[str] = []

    async def open_then_fail() -> None:
        async with database.begin():
            opened.append(await open_case(cases))
            raise Abort

    with pytest.raises(Abort):
        await open_then_fail()
    (case_id,) = opened
    with pytest.raises(NotFound):
        await cases.get(case_id)
    async with failing_writes(database, "review_cases"):
        with pytest.raises(Exception, match=INJECTED):
            await open_case(cases)
    page = await cases.page(kind=None, state=None, page_size=10, page_token="")
    assert page.cases == ()


async def test_operator_roles_grant_revoke_and_list(database: Database, clock: FakeClock) -> None:
    """D2: a role is held from its grant until its revocation; an unknown account cannot
    hold one."""
    async with database.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO accounts (account_id, subject_type, login_name, password_hash, "
                "status, accepted_policy_version, real_name_level, master_key_id, created_at, "
                "updated_at) VALUES (:a, 'NATURAL_PERSON', 'shen', 'x', 'active', 1, 0, 'mk', "
                ":t, :t)"
            ),
            {"a": ACCOUNT, "t": utc(clock.now())},
        )
    roles = OperatorRoles(database, clock)
    assert not await roles.holds(ACCOUNT, "review")
    assert await roles.grant(ACCOUNT, "review")
    assert not await roles.grant(ACCOUNT, "review")
    assert await roles.holds(ACCOUNT, "review")
    assert [h.account_id for h in await roles.holders("review")] == [ACCOUNT]
    with pytest.raises(NotFound):
        await roles.grant("acc_nobody", "review")
    with pytest.raises(InvalidArgument):
        await roles.grant(ACCOUNT, "admin")
    assert await roles.revoke(ACCOUNT, "review")
    assert not await roles.revoke(ACCOUNT, "review")
    assert not await roles.holds(ACCOUNT, "review")
