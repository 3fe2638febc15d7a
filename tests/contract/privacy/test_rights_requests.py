"""Rights requests on SQLite and PostgreSQL: due dates, sealing, resolution, overdue (issue 14).

The flow runs over real accounts (with their data keys), the real audit log and
the shipped working-day calendar; only the clock is fake.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.contract.faults import INJECTED, failing_writes, row_counts
from xiaohe.identity.server.accounts.models import NewAccount, SubjectType
from xiaohe.identity.server.accounts.repository import SqlAccountRepository
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.crypto.envelope import DataKeyCipher
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.errors import FailedPrecondition, InvalidArgument, NotFound
from xiaohe.identity.server.flows.rights_requests import (
    MAX_DETAIL_CHARS,
    MAX_OPEN_PER_ACCOUNT,
    FileRequestCommand,
    ResolveRequestCommand,
    RightsRequestFlow,
)
from xiaohe.identity.server.observability.metrics import Metrics
from xiaohe.identity.server.privacy.calendar import SHANGHAI, WorkingCalendar
from xiaohe.identity.server.privacy.requests import (
    Outcome,
    RequestKind,
    RequestState,
    RightsRequests,
)
from xiaohe.identity.server.storage.database import Database

DETAIL = "请删除我在小禾的全部资料：手机号 13800138000，姓名 张三丰。"
FRIDAY_BEFORE_NATIONAL_DAY = datetime(2025, 9, 26, 10, 0, tzinfo=SHANGHAI).timestamp()
OVERDUE_LINE = "xiaohe_privacy_requests_overdue 1.0"


@dataclass
class Env:
    """The flow and what it runs on."""

    database: Database
    clock: FakeClock
    accounts: AccountService
    store: RightsRequests
    audit: AuditLog
    metrics: Metrics
    flow: RightsRequestFlow

    async def account(self) -> str:
        """A new account with a data key; returns its id."""
        account_id = self.accounts.new_account_id()
        await self.accounts.create(
            NewAccount(
                account_id=account_id,
                subject_type=SubjectType.NATURAL_PERSON,
                login_name=f"user-{secrets.token_hex(4)}",
                password_hash="$argon2id$unused",
                accepted_policy_version=1,
                phone="+86138" + str(secrets.randbelow(10**8)).zfill(8),
            ),
            [],
        )
        return account_id

    async def file(self, account_id: str, kind: RequestKind = RequestKind.DELETION) -> str:
        """File a request with DETAIL; returns its id."""
        filed = await self.flow.file(FileRequestCommand(account_id, kind, DETAIL, "bff-web"))
        return filed.request_id

    async def outcomes(self, action: str) -> list[tuple[str, str]]:
        """(target, outcome) of the audit records of `action`."""
        return [(r.target, r.outcome) for r in await self.audit.query(action=action)]


@pytest.fixture
async def env(database: Database, tmp_path: Path) -> Env:
    clock = FakeClock(FRIDAY_BEFORE_NATIONAL_DAY)
    keyring = KeyRing.load_or_create(tmp_path / "keyring.json", clock)
    cipher = DataKeyCipher(keyring)
    audit = AuditLog(database, clock, keyring.audit_keys)
    accounts = AccountService(
        repository=SqlAccountRepository(database),
        uow=database,
        cipher=cipher,
        master_keys=keyring,
        blind_index=BlindIndex(keyring.blind_index_key),
        clock=clock,
    )
    store = RightsRequests(database, cipher, accounts)
    metrics = Metrics.in_memory()
    flow = RightsRequestFlow(
        uow=database,
        requests=store,
        calendar=WorkingCalendar.load(),
        clock=clock,
        audit=audit,
        metrics=metrics,
    )
    return Env(database, clock, accounts, store, audit, metrics, flow)


def overdue_gauge(metrics: Metrics) -> float:
    """The value of xiaohe_privacy_requests_overdue in the metrics' exposition."""
    for line in metrics.render().decode().splitlines():
        if line.startswith("xiaohe_privacy_requests_overdue "):
            return float(line.split()[1])
    raise AssertionError("the gauge is not exposed")


async def test_a_deletion_request_before_national_day_is_due_23_october_then_overdue(
    env: Env,
) -> None:
    """I4: issue 14's acceptance case. A DELETION filed on Friday 2025-09-26, the Friday
    before the National Day holiday, is due on 2025-10-23 (the official 2025 calendar,
    国办发明电〔2024〕12号; the count is in tests/unit/privacy/test_working_calendar.py).
    It is not overdue through the last minute of 10-23 in Shanghai; from 10-24 00:00 it
    is, the gauge says 1 and the operators' overdue queue lists it; once resolved, the
    gauge goes back to 0."""
    account_id = await env.account()
    filed = await env.flow.file(
        FileRequestCommand(account_id, RequestKind.DELETION, DETAIL, "bff-web")
    )
    assert filed.due_on == date(2025, 10, 23)
    assert (filed.kind, filed.state, filed.detail) == (
        RequestKind.DELETION,
        RequestState.OPEN,
        DETAIL,
    )
    assert await env.flow.refresh_overdue() == 0
    assert overdue_gauge(env.metrics) == 0

    last_minute = datetime(2025, 10, 23, 23, 59, tzinfo=SHANGHAI).timestamp()
    env.clock.advance(last_minute - env.clock.now())
    assert await env.flow.refresh_overdue() == 0
    assert not env.flow.is_overdue(filed)

    env.clock.advance(60)  # 2025-10-24 00:00 in Shanghai
    assert await env.flow.refresh_overdue() == 1
    assert overdue_gauge(env.metrics) == 1
    assert OVERDUE_LINE in env.metrics.render().decode()
    late = await env.flow.queue(state=None, overdue_only=True, page_size=0, page_token="")
    assert [r.request_id for r in late.requests] == [filed.request_id]
    assert env.flow.is_overdue(late.requests[0])

    await env.flow.resolve(
        ResolveRequestCommand(filed.request_id, Outcome.FULFILLED, "已删除。", "console")
    )
    assert await env.flow.refresh_overdue() == 0
    assert overdue_gauge(env.metrics) == 0
    late = await env.flow.queue(state=None, overdue_only=True, page_size=0, page_token="")
    assert late.requests == ()


async def test_the_texts_are_sealed_under_the_account_key_and_shredded_with_it(
    env: Env,
) -> None:
    """I1: neither the person's text nor the operator's note is stored readable; destroying
    the account's data key (deactivation) leaves the request's record with its texts erased."""
    account_id = await env.account()
    request_id = await env.file(account_id)
    env.clock.advance(1)
    still_open = await env.file(account_id, RequestKind.COMPLAINT)
    await env.flow.resolve(
        ResolveRequestCommand(request_id, Outcome.REFUSED, "号码 13800138000 仍有未结订单", "c")
    )
    async with env.database.connect() as conn:
        row = (
            await conn.execute(
                sa.text("SELECT detail_enc, note_enc FROM rights_requests WHERE request_id = :r"),
                {"r": request_id},
            )
        ).one()
    for blob in (bytes(row.detail_enc), bytes(row.note_enc)):
        assert b"13800138000" not in blob
        assert "张三丰".encode() not in blob
    mine = (await env.flow.list_mine(account_id, page_size=0, page_token="")).requests
    assert [(r.detail, r.note, r.erased) for r in mine] == [
        (DETAIL, "", False),
        (DETAIL, "号码 13800138000 仍有未结订单", False),
    ]

    async with env.database.begin() as conn:
        await conn.execute(
            sa.text("UPDATE accounts SET data_key_wrapped = NULL WHERE account_id = :a"),
            {"a": account_id},
        )
    # An open request of a destroyed account can still be closed; its note is not kept.
    closed = await env.flow.resolve(
        ResolveRequestCommand(still_open, Outcome.FULFILLED, "账号已注销", "c")
    )
    assert (closed.state, closed.note, closed.erased) == (RequestState.RESOLVED, "", True)
    _, shredded = (await env.flow.list_mine(account_id, page_size=0, page_token="")).requests
    assert (shredded.detail, shredded.note, shredded.erased) == ("", "", True)
    assert (shredded.outcome, shredded.due_on) == (Outcome.REFUSED, date(2025, 10, 23))


async def test_resolution_rules_and_their_audit(env: Env) -> None:
    """A refusal needs a note; only an open request can be resolved; an unknown id is
    NotFound; filing and resolving are audited by request id with their outcome."""
    account_id = await env.account()
    request_id = await env.file(account_id, RequestKind.CORRECTION)
    with pytest.raises(InvalidArgument) as caught:
        await env.flow.resolve(ResolveRequestCommand(request_id, Outcome.REFUSED, "  ", "c"))
    assert [v.field for v in caught.value.violations] == ["note"]
    resolved = await env.flow.resolve(
        ResolveRequestCommand(request_id, Outcome.PARTLY_FULFILLED, "", "console-1")
    )
    assert (resolved.state, resolved.outcome, resolved.resolved_by) == (
        RequestState.RESOLVED,
        Outcome.PARTLY_FULFILLED,
        "console-1",
    )
    assert resolved.resolved_at == env.clock.now()
    with pytest.raises(FailedPrecondition):
        await env.flow.resolve(ResolveRequestCommand(request_id, Outcome.FULFILLED, "", "c"))
    with pytest.raises(NotFound):
        await env.flow.resolve(ResolveRequestCommand("rrq_" + "0" * 24, Outcome.FULFILLED, "", "c"))
    for malformed in ("", "+8613800138000", "rrq_" + "0" * 23, request_id.upper()):
        # Never looked up nor audited: a caller's text must not become an audit target.
        with pytest.raises(InvalidArgument) as caught:
            await env.flow.resolve(ResolveRequestCommand(malformed, Outcome.FULFILLED, "", "c"))
        assert [v.field for v in caught.value.violations] == ["request_id"]
    assert (await env.store.get(request_id)).outcome is Outcome.PARTLY_FULFILLED
    assert await env.outcomes("privacy.request.file") == [(request_id, "ok")]
    assert await env.outcomes("privacy.request.resolve") == [
        (request_id, "partly_fulfilled"),
        (request_id, "failed_precondition"),
        ("rrq_" + "0" * 24, "not_found"),
    ]


@pytest.mark.parametrize(("table", "operation"), [("audit_log", "INSERT")])
async def test_filing_is_all_or_nothing(env: Env, table: str, operation: str) -> None:
    """F2: when the audit record cannot be written, no request is stored."""
    account_id = await env.account()
    before = await row_counts(env.database, "rights_requests")
    async with failing_writes(env.database, table, operation):
        with pytest.raises(Exception, match=INJECTED):
            await env.file(account_id)
    assert await row_counts(env.database, "rights_requests") == before
    assert (await env.flow.list_mine(account_id, page_size=0, page_token="")).requests == ()


async def test_resolving_is_all_or_nothing(env: Env) -> None:
    """F2: when the audit record cannot be written, the request stays open, unanswered."""
    account_id = await env.account()
    request_id = await env.file(account_id)
    async with failing_writes(env.database, "audit_log"):
        with pytest.raises(Exception, match=INJECTED):
            await env.flow.resolve(
                ResolveRequestCommand(request_id, Outcome.FULFILLED, "done", "c")
            )
    kept = await env.store.get(request_id)
    assert (kept.state, kept.outcome, kept.note, kept.resolved_at) == (
        RequestState.OPEN,
        None,
        "",
        None,
    )


async def test_a_person_lists_only_their_own_requests_newest_first_in_pages(env: Env) -> None:
    """Paging by (filing time, id), newest first; another account's requests never appear;
    a forged page token is InvalidArgument on page_token."""
    mine, other = await env.account(), await env.account()
    filed = []
    for kind in (RequestKind.ACCESS, RequestKind.COPY, RequestKind.WITHDRAWAL):
        filed.append(await env.file(mine, kind))
        env.clock.advance(3600)
    await env.file(other, RequestKind.COMPLAINT)
    first = await env.flow.list_mine(mine, page_size=2, page_token="")
    assert [r.request_id for r in first.requests] == [filed[2], filed[1]]
    second = await env.flow.list_mine(mine, page_size=2, page_token=first.next_page_token)
    assert [r.request_id for r in second.requests] == [filed[0]]
    assert second.next_page_token == ""
    for token in ("not-a-token", "W1siYSJdXQ"):
        with pytest.raises(InvalidArgument) as caught:
            await env.flow.list_mine(mine, page_size=2, page_token=token)
        assert [v.field for v in caught.value.violations] == ["page_token"]
    with pytest.raises(InvalidArgument):
        await env.flow.list_mine(mine, page_size=-1, page_token="")


async def test_the_operators_queue_is_soonest_due_first_and_filters_by_state(env: Env) -> None:
    """By due date ascending, across accounts; OPEN and RESOLVED filters."""
    a, b = await env.account(), await env.account()
    first = await env.file(a)
    env.clock.advance(3 * 86400)  # a later filing is due later
    second = await env.file(b)
    await env.flow.resolve(ResolveRequestCommand(first, Outcome.FULFILLED, "", "c"))
    every = await env.flow.queue(state=None, overdue_only=False, page_size=0, page_token="")
    assert [r.request_id for r in every.requests] == [first, second]
    paged = await env.flow.queue(state=None, overdue_only=False, page_size=1, page_token="")
    rest = await env.flow.queue(
        state=None, overdue_only=False, page_size=1, page_token=paged.next_page_token
    )
    assert [r.request_id for r in paged.requests + rest.requests] == [first, second]
    still_open = await env.flow.queue(
        state=RequestState.OPEN, overdue_only=False, page_size=0, page_token=""
    )
    assert [r.request_id for r in still_open.requests] == [second]
    done = await env.flow.queue(
        state=RequestState.RESOLVED, overdue_only=False, page_size=0, page_token=""
    )
    assert [r.request_id for r in done.requests] == [first]


async def test_bad_input_and_the_cap_on_open_requests(env: Env) -> None:
    """A text over the limit or with NUL is InvalidArgument on detail; an account with
    MAX_OPEN_PER_ACCOUNT open requests must wait for answers (FailedPrecondition), which is
    audited; an answered one makes room."""
    account_id = await env.account()
    for text in ("x" * (MAX_DETAIL_CHARS + 1), "a\x00b"):
        with pytest.raises(InvalidArgument) as caught:
            await env.flow.file(FileRequestCommand(account_id, RequestKind.ACCESS, text, "c"))
        assert [v.field for v in caught.value.violations] == ["detail"]
    ids = [await env.file(account_id) for _ in range(MAX_OPEN_PER_ACCOUNT)]
    with pytest.raises(FailedPrecondition):
        await env.file(account_id)
    assert "failed_precondition" in [o for _, o in await env.outcomes("privacy.request.file")]
    await env.flow.resolve(ResolveRequestCommand(ids[0], Outcome.FULFILLED, "", "c"))
    assert await env.file(account_id)


async def test_concurrent_filings_never_pass_the_cap(env: Env) -> None:
    """The cap holds under concurrency: with five places left, twelve filings at once give
    five requests and seven FailedPrecondition, never more than MAX_OPEN_PER_ACCOUNT open
    (the count and the insert are one unit of work, serialised per account). On SQLite
    nothing yields between the count and the commit, so the PostgreSQL run is the one that
    would catch a race; it failed there before the fix."""
    account_id = await env.account()
    for _ in range(MAX_OPEN_PER_ACCOUNT - 5):
        await env.file(account_id)
    outcomes = await asyncio.gather(
        *(env.file(account_id) for _ in range(12)), return_exceptions=True
    )
    assert sum(isinstance(o, str) for o in outcomes) == 5
    assert sum(isinstance(o, FailedPrecondition) for o in outcomes) == 7
    assert await env.store.count_open_for_filing(account_id) == MAX_OPEN_PER_ACCOUNT


async def test_a_year_without_a_calendar_counts_weekends_and_is_counted(env: Env) -> None:
    """A filing whose count runs into a year without a file (2027) still gets a due date, and
    xiaohe_privacy_calendar_missing_years counts it."""
    account_id = await env.account()
    env.clock.advance(datetime(2027, 3, 5, 10, tzinfo=SHANGHAI).timestamp() - env.clock.now())
    filed = await env.flow.file(FileRequestCommand(account_id, RequestKind.ACCESS, "", "c"))
    assert filed.due_on == date(2027, 3, 26)
    assert filed.detail == ""
    assert "xiaohe_privacy_calendar_missing_years_total 1.0" in env.metrics.render().decode()
