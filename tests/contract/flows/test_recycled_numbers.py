"""Recycled numbers (二次号) on real stores: the report, its effects, and the number-status check.

Everything that stores or counts is real: accounts, sessions (with their
revocation list), the outbox behind the notices and the audit log on the
`database` fixture (SQLite and PostgreSQL); tickets, codes and the login
throttle on `redis_client` (embedded and system Redis); Argon2id at the cheapest
costs. The number-status service is the local fake of Aliyun's API, which
checks every request's signature. Faults are database triggers
(`tests/contract/faults.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from tests.contract.accounts.conftest import (
    _OPEN_CODE_POLICY,
    OTHER_ID_NUMBER,
    PASSWORD,
    PHONE,
    PHONE_E164,
    AccountsEnv,
    build_env,
    natural_command,
)
from tests.contract.codes.conftest import ListQueue, compose
from tests.contract.faults import INJECTED, failing_writes, row_counts
from tests.contract.flows.conftest import session_service
from tests.fakes.number_status import FakeNumberStatusService
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.codes.models import Channel, IssueCodeCommand, Purpose
from xiaohe.identity.server.codes.service import CodeService
from xiaohe.identity.server.credentials.hasher import PasswordHasher
from xiaohe.identity.server.credentials.lockout import LockoutPolicy, LoginThrottle
from xiaohe.identity.server.credentials.passwords import PasswordPolicy
from xiaohe.identity.server.credentials.reauth import PasswordCheck
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.delivery.number_status import AliyunNumberStatusCheck
from xiaohe.identity.server.errors import InvalidArgument, InvalidCredentials, TokenInvalid
from xiaohe.identity.server.flows.channels import BindPhoneCommand, ChannelFlow
from xiaohe.identity.server.flows.code_recipients import RegisteredRecipients
from xiaohe.identity.server.flows.login import (
    PHONE_REVERIFY_RESTRICTION,
    LoginFlow,
    NextStep,
)
from xiaohe.identity.server.flows.recycled_numbers import (
    CHECK_ACTION,
    REPORT_ACTION,
    STALE_ACTION,
    NumberStatusGuard,
    RecycledNumberFlow,
)
from xiaohe.identity.server.sessions.models import IssuedSession, SessionLifetimes, SessionSubject
from xiaohe.identity.server.sessions.revocations import RevocationList
from xiaohe.identity.server.sessions.service import SessionService
from xiaohe.identity.server.shared.identifiers import IdentifierKind
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.schema import identifiers, outbox

CLIENT = "xhc_carrier"
IP = "203.0.113.7"
ADDRESS = "zhangsan@example.cn"
NEW_PHONE = "+8613700001111"
UNBOUND_PHONE = "+8613911112222"
PSEUDONYM_KEY = b"p" * 32
DAY = 86400.0
KEY_ID, SECRET, AUTH_CODE = "LTAI-test", "test-secret-0123456789", "auth-test"
TABLES = ("accounts", "identifiers", "sessions", "outbox")


@dataclass
class Env:
    """The recycled-number flow and the flows it affects, on real stores."""

    accounts: AccountsEnv
    sessions: SessionService
    revocations: RevocationList
    audit: AuditLog
    flow: RecycledNumberFlow
    channels: ChannelFlow
    login: LoginFlow
    queue: ListQueue
    redis: aioredis.Redis

    @property
    def database(self) -> Database:
        """The test database."""
        return self.accounts.database

    @property
    def clock(self) -> FakeClock:
        """The injected clock."""
        return self.accounts.clock

    async def register(self, **changes: Any) -> str:
        """A natural person `zhangsan` with PHONE bound at creation and an email."""
        account_id = (await self.accounts.register(natural_command(**changes))).account_id
        await self.accounts.service.replace_contact(account_id, "email", expected="", new=ADDRESS)
        return account_id

    async def session(self, account_id: str) -> IssuedSession:
        """A new session of the account."""
        subject = SessionSubject(account_id=account_id, subject_type="NATURAL_PERSON", rn_level=0)
        return await self.sessions.create(subject, ("pwd",), client_id="xhc_bff")

    def codes(self, guard: NumberStatusGuard | None = None) -> CodeService:
        """A code service whose recipient filter is the real one (with `guard` if given)."""
        return CodeService(
            redis=self.redis,
            hmac_key=self.accounts.keyring.code_hmac_key,
            clock=self.clock,
            queue=self.queue,
            compose=compose,
            policy=_OPEN_CODE_POLICY,
            recipient_filter=RegisteredRecipients(self.accounts.service, guard),
        )

    async def state(self, account_id: str) -> dict[str, Any]:
        """What a report may change: the binding, identifier rows, sessions, the outbox."""
        credentials = await self.accounts.service.get_credentials(account_id)
        async with self.database.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(identifiers.c.kind).where(identifiers.c.account_id == account_id)
                )
            ).all()
        live = await self.sessions.list_sessions(account_id)
        await self.revocations.reload()
        return {
            "stale": credentials.phone_stale_at,
            "phone": (await self.accounts.service.get_personal_data(account_id)).phone,
            "identifiers": sorted(r.kind for r in rows),
            "live": sorted(s.session_id for s in live),
            "revoked in the list": [
                s.session_id for s in live if self.revocations.is_revoked(s.session_id)
            ],
            "rows": await row_counts(self.database, *TABLES),
        }

    async def outcomes(self, action: str) -> list[tuple[str, str]]:
        """(target, outcome) of every audit record of `action`."""
        return [(r.target, r.outcome) for r in await self.audit.query(action=action)]


@pytest.fixture
async def env(
    database: Database,
    redis_client: aioredis.Redis,
    clock: FakeClock,
    tmp_path: Path,
    password_policy: PasswordPolicy,
    argon2: PasswordHasher,
) -> Env:
    """The flows on `database` × `redis_client`, with the real audit log and outbox."""
    accounts = await build_env(database, redis_client, clock, tmp_path, password_policy, argon2)
    audit = AuditLog(database, clock, AuditKeys(bytes(range(32))))
    sessions, revocations = session_service(accounts, redis_client, audit=audit)
    await revocations.reload()
    tickets = accounts.service_kwargs["tickets"]
    notices = accounts.service_kwargs["notices"]
    throttle = LoginThrottle(redis_client, clock, LockoutPolicy(), ip_key=b"i" * 32)
    flow = RecycledNumberFlow(
        uow=database,
        accounts=accounts.service,
        sessions=sessions,
        notices=notices,
        clock=clock,
        pseudonym_key=PSEUDONYM_KEY,
        audit=audit,
    )
    channels = ChannelFlow(
        uow=database,
        accounts=accounts.service,
        tickets=tickets,
        passwords=PasswordCheck(argon2, throttle),
        sessions=sessions,
        notices=notices,
        audit=audit,
    )
    login = LoginFlow(
        uow=database,
        accounts=accounts.service,
        sessions=sessions,
        tickets=tickets,
        hasher=argon2,
        throttle=throttle,
        policies=accounts.policies,
        clock=clock,
        audit=audit,
    )
    return Env(
        accounts, sessions, revocations, audit, flow, channels, login, ListQueue(), redis_client
    )


async def password_login(env: Env, identifier: str = "zhangsan") -> Any:
    """A password login as the BFF makes it."""
    return await env.login.login_with_password(
        identifier,
        IdentifierKind.UNSPECIFIED,
        PASSWORD,
        audience="",
        client_id="xhc_bff",
        ip=IP,
        user_agent="test",
    )


# -- the report ---------------------------------------------------------------------------------


async def test_a_report_marks_the_binding_stale_ends_sessions_and_tells_the_email(
    env: Env, redis_client: aioredis.Redis
) -> None:
    """H3, T3: a number bound before `recycled_at` is marked stale, its identifier row is gone,
    every session ends (the access tokens are refused here and by another worker's revocation
    list), one notice goes to the email and none to the number, and the audit names the number
    only by its keyed tag."""
    account_id = await env.register()
    env.clock.advance(DAY)
    first, second = await env.session(account_id), await env.session(account_id)
    env.sessions.validate(first.access_token)  # live until the report
    outbox_before = (await row_counts(env.database, "outbox"))["outbox"]

    await env.flow.report(PHONE, env.clock.now() - 60, client_id=CLIENT)

    state = await env.state(account_id)
    assert state["stale"] == env.clock.now()
    assert state["phone"] == ""
    assert "phone" not in state["identifiers"]
    assert state["live"] == []
    assert await env.accounts.service.find_by_phone(PHONE_E164) is None
    for issued in (first, second):
        with pytest.raises(TokenInvalid):
            env.sessions.validate(issued.access_token)
    other_worker = RevocationList(redis_client, env.clock, SessionLifetimes().access_ttl)
    await other_worker.reload()
    assert other_worker.is_revoked(first.session_id)
    assert other_worker.is_revoked(second.session_id)
    async with env.database.connect() as conn:
        queued = (
            await conn.execute(
                sa.select(outbox.c.channel, outbox.c.purpose).order_by(outbox.c.created_at)
            )
        ).all()
    assert len(queued) == outbox_before + 1
    assert tuple(queued[-1]) == ("EMAIL", "NOTICE")
    reports = await env.outcomes(REPORT_ACTION)
    assert [outcome for _, outcome in reports] == ["stale"]
    assert all("13812345678" not in target for target, _ in reports)
    assert await env.outcomes(STALE_ACTION) == [(account_id, "report")]


async def test_a_repeated_report_changes_nothing_more(env: Env) -> None:
    """H3: idempotent; the second report finds no binding (only its audit record is new)."""
    account_id = await env.register()
    await env.session(account_id)
    env.clock.advance(DAY)
    recycled_at = env.clock.now() - 60
    await env.flow.report(PHONE, recycled_at, client_id=CLIENT)
    after_first = await env.state(account_id)
    env.clock.advance(60)
    await env.flow.report(PHONE, recycled_at, client_id=CLIENT)
    assert await env.state(account_id) == after_first
    assert [o for _, o in await env.outcomes(REPORT_ACTION)] == ["stale", "not_bound"]


async def test_a_binding_made_after_the_recycling_belongs_to_the_new_owner(env: Env) -> None:
    """H3: a report dated before the binding leaves the account untouched."""
    account_id = await env.register()
    await env.session(account_id)
    before = await env.state(account_id)
    await env.flow.report(PHONE, env.clock.now() - DAY, client_id=CLIENT)
    assert await env.state(account_id) == before
    assert [o for _, o in await env.outcomes(REPORT_ACTION)] == ["unchanged"]


async def test_an_unbound_number_gets_the_same_answer(env: Env) -> None:
    """B4: a report on a number no account holds answers exactly like one that is held."""
    await env.register()
    env.clock.advance(DAY)
    recycled_at = env.clock.now() - 60
    held = await env.flow.report(PHONE, recycled_at, client_id=CLIENT)  # type: ignore[func-returns-value]
    unheld = await env.flow.report(UNBOUND_PHONE, recycled_at, client_id=CLIENT)  # type: ignore[func-returns-value]
    assert held is None
    assert unheld is None
    assert [o for _, o in await env.outcomes(REPORT_ACTION)] == ["stale", "not_bound"]


@pytest.mark.parametrize(
    ("phone", "recycled_at", "field"),
    [
        ("12345", 1_700_000_000.0, "phone"),
        ("", 1_700_000_000.0, "phone"),
        (PHONE, 0.0, "recycled_at"),
        (PHONE, float("nan"), "recycled_at"),
        (PHONE, 9_999_999_999.0, "recycled_at"),
    ],
)
async def test_a_malformed_report_is_invalid_argument(
    env: Env, phone: str, recycled_at: float, field: str
) -> None:
    """F3: bad input names its field; nothing is written."""
    with pytest.raises(InvalidArgument) as caught:
        await env.flow.report(phone, recycled_at, client_id=CLIENT)
    assert [v.field for v in caught.value.violations] == [field]
    assert await env.outcomes(REPORT_ACTION) == []


@pytest.mark.parametrize(
    ("table", "operation", "error"),
    [
        ("outbox", "INSERT", "could not be queued"),
        ("audit_log", "INSERT", INJECTED),
        ("sessions", "UPDATE", INJECTED),
    ],
)
async def test_a_report_is_all_or_nothing(env: Env, table: str, operation: str, error: str) -> None:
    """F2, H3: a fault after the binding is marked (sessions, notice or audit cannot be written)
    leaves the binding, the identifier row, every session (in SQL and in the revocation list)
    and the outbox as they were; the same report then goes through whole."""
    account_id = await env.register()
    env.clock.advance(DAY)
    await env.session(account_id)
    before = await env.state(account_id)
    recycled_at = env.clock.now() - 60
    async with failing_writes(env.database, table, operation):
        with pytest.raises(Exception, match=error):
            await env.flow.report(PHONE, recycled_at, client_id=CLIENT)
    assert await env.state(account_id) == before
    assert await env.accounts.service.find_by_phone(PHONE_E164) is not None

    await env.flow.report(PHONE, recycled_at, client_id=CLIENT)
    after = await env.state(account_id)
    assert after["stale"] is not None
    assert after["live"] == []
    assert after["rows"]["outbox"] == before["rows"]["outbox"] + 1


# -- the effects --------------------------------------------------------------------------------


async def test_the_next_password_login_must_reverify_the_phone(env: Env) -> None:
    """H3: login by login name answers PHONE_REVERIFY_REQUIRED with a restricted session whose
    tokens are refused; login by the recycled number itself is an unknown identifier (B3)."""
    account_id = await env.register()
    env.clock.advance(DAY)
    await env.flow.report(PHONE, env.clock.now() - 60, client_id=CLIENT)

    result = await password_login(env)
    assert result.next_step is NextStep.PHONE_REVERIFY_REQUIRED
    with pytest.raises(TokenInvalid):
        env.sessions.validate(result.session.access_token)
    claims = env.sessions.validate(result.session.access_token, allow_restricted=True)
    assert (claims.sub, claims.restriction) == (account_id, PHONE_REVERIFY_RESTRICTION)
    with pytest.raises(InvalidCredentials):
        await password_login(env, PHONE)


async def test_a_report_during_a_login_restricts_the_session_it_starts(env: Env) -> None:
    """H3: a report that lands after the login checked the password and before its session
    starts still restricts that session: the account is read again, locked, with the session."""
    account_id = await env.register()
    env.clock.advance(DAY)

    class ReportMidLogin:
        """The accounts, with a report arriving right after the login found the account."""

        def __getattr__(self, name: str) -> Any:
            return getattr(env.accounts.service, name)

        async def find_credentials(self, *args: Any, **kwargs: Any) -> Any:
            found = await env.accounts.service.find_credentials(*args, **kwargs)
            await env.flow.report(PHONE, env.clock.now() - 60, client_id=CLIENT)
            return found

    env.login._accounts = ReportMidLogin()  # type: ignore[assignment]
    result = await password_login(env)

    assert result.next_step is NextStep.PHONE_REVERIFY_REQUIRED
    with pytest.raises(TokenInvalid):
        env.sessions.validate(result.session.access_token)
    claims = env.sessions.validate(result.session.access_token, allow_restricted=True)
    assert (claims.sub, claims.restriction) == (account_id, PHONE_REVERIFY_RESTRICTION)


async def test_binding_a_phone_ends_the_stale_state(env: Env) -> None:
    """H3, H1: BindPhone with a fresh BIND_PHONE ticket binds the new phone, clears
    `phone_stale_at`, ends the reverify session, and the next login is a normal one."""
    account_id = await env.register()
    env.clock.advance(DAY)
    await env.flow.report(PHONE, env.clock.now() - 60, client_id=CLIENT)
    restricted = await password_login(env)

    await env.channels.bind_phone(
        BindPhoneCommand(
            login_name="zhangsan",
            password=PASSWORD,
            phone=NEW_PHONE,
            phone_ticket=await env.accounts.ticket(NEW_PHONE, Purpose.BIND_PHONE),
            ip=IP,
        )
    )
    state = await env.state(account_id)
    assert state["stale"] is None
    assert state["phone"] == NEW_PHONE
    assert (await env.accounts.service.find_by_phone(NEW_PHONE)).account_id == account_id  # type: ignore[union-attr]
    with pytest.raises(TokenInvalid):
        env.sessions.validate(restricted.session.access_token, allow_restricted=True)
    assert (await password_login(env)).next_step is NextStep.NONE


async def test_the_new_owner_can_register_the_number(env: Env) -> None:
    """H3: the freed number registers a new account; a later report dated as before leaves the
    new owner's binding alone."""
    old = await env.register()
    env.clock.advance(DAY)
    recycled_at = env.clock.now() - 60
    await env.flow.report(PHONE, recycled_at, client_id=CLIENT)
    env.clock.advance(60)
    new = (
        await env.accounts.register(
            natural_command(login_name="lisi", name="李四", id_number=OTHER_ID_NUMBER)
        )
    ).account_id
    assert new != old
    assert (await env.accounts.service.find_by_phone(PHONE_E164)).account_id == new  # type: ignore[union-attr]
    await env.flow.report(PHONE, recycled_at, client_id=CLIENT)
    assert (await env.accounts.service.get_credentials(new)).phone_stale_at is None
    assert (await env.accounts.service.find_by_phone(PHONE_E164)).account_id == new  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "purpose", [Purpose.LOGIN, Purpose.RESET_PASSWORD, Purpose.RECOVER_ACCOUNT]
)
async def test_codes_to_a_recycled_number_are_not_sent(env: Env, purpose: Purpose) -> None:
    """H3, B4: after the report, LOGIN, RESET_PASSWORD and RECOVER_ACCOUNT codes to the number
    are withheld, with the answer an unknown number gets; before it they were sent."""
    await env.register()
    codes = env.codes()
    await codes.issue(IssueCodeCommand(Channel.SMS, PHONE, purpose))
    assert len(env.queue.messages) == 1
    env.clock.advance(DAY)
    await env.flow.report(PHONE, env.clock.now() - 60, client_id=CLIENT)

    recycled = await codes.issue(IssueCodeCommand(Channel.SMS, PHONE, purpose))
    unknown = await codes.issue(IssueCodeCommand(Channel.SMS, UNBOUND_PHONE, purpose))
    assert len(env.queue.messages) == 1
    assert env.queue.withheld == [("SMS", purpose.value)] * 2
    assert (recycled.expires_in, recycled.resend_after) == (
        unknown.expires_in,
        unknown.resend_after,
    )


# -- the number-status check --------------------------------------------------------------------


@pytest.fixture
async def status_service() -> AsyncIterator[FakeNumberStatusService]:
    """The local fake of Aliyun's 二次号 check."""
    fake = FakeNumberStatusService(KEY_ID, SECRET, AUTH_CODE)
    await fake.start()
    yield fake
    await fake.close()


def guard_for(
    env: Env, service: FakeNumberStatusService, *, send_when_unknown: bool = True
) -> NumberStatusGuard:
    """The guard with the real Aliyun check pointed at the fake; bindings older than 180 days."""
    check = AliyunNumberStatusCheck(
        access_key_id=KEY_ID, access_key_secret=SECRET, auth_code=AUTH_CODE, endpoint=service.url
    )
    return NumberStatusGuard(
        check=check,
        flow=env.flow,
        clock=env.clock,
        pseudonym_key=PSEUDONYM_KEY,
        min_binding_age_seconds=180 * DAY,
        send_when_unknown=send_when_unknown,
        audit=env.audit,
    )


@pytest.mark.parametrize("purpose", [Purpose.RESET_PASSWORD, Purpose.RECOVER_ACCOUNT])
@pytest.mark.parametrize("verify_result", ["1", "3"])
async def test_a_recycled_or_cancelled_answer_withholds_the_code_and_marks_the_binding(
    env: Env, status_service: FakeNumberStatusService, purpose: Purpose, verify_result: str
) -> None:
    """H3: before a reset or recovery code goes to a binding older than 180 days the service is
    asked; recycled (1) or cancelled (3) withholds the code and handles the number as a report
    would (stale, sessions ended, email told)."""
    account_id = await env.register()
    status_service.answer(PHONE_E164, verify_result)
    env.clock.advance(181 * DAY)
    session = await env.session(account_id)
    env.sessions.validate(session.access_token)  # live until the check
    codes = env.codes(guard_for(env, status_service))

    await codes.issue(IssueCodeCommand(Channel.SMS, PHONE, purpose))

    assert env.queue.messages == []
    assert env.queue.withheld == [("SMS", purpose.value)]
    assert len(status_service.requests) == 1
    assert status_service.rejected == []
    state = await env.state(account_id)
    assert state["stale"] is not None
    assert state["live"] == []
    with pytest.raises(TokenInvalid):
        env.sessions.validate(session.access_token)
    assert await env.outcomes(STALE_ACTION) == [(account_id, "number_status")]
    expected = "recycled" if verify_result == "1" else "cancelled"
    assert [o for _, o in await env.outcomes(CHECK_ACTION)] == [expected]


async def test_a_not_recycled_answer_sends_the_code(
    env: Env, status_service: FakeNumberStatusService
) -> None:
    """H3: a number the service says was not re-issued gets its reset code."""
    account_id = await env.register()
    status_service.answer(PHONE_E164, "2")
    env.clock.advance(181 * DAY)
    await env.codes(guard_for(env, status_service)).issue(
        IssueCodeCommand(Channel.SMS, PHONE, Purpose.RESET_PASSWORD)
    )
    assert len(env.queue.messages) == 1
    assert len(status_service.requests) == 1
    assert (await env.state(account_id))["stale"] is None


async def test_young_bindings_and_login_codes_are_not_checked(
    env: Env, status_service: FakeNumberStatusService
) -> None:
    """H3: a binding younger than the threshold, and LOGIN codes, never ask the service."""
    await env.register()
    status_service.answer(PHONE_E164, "1")
    codes = env.codes(guard_for(env, status_service))
    env.clock.advance(179 * DAY)
    await codes.issue(IssueCodeCommand(Channel.SMS, PHONE, Purpose.RESET_PASSWORD))
    env.clock.advance(2 * DAY)
    await codes.issue(IssueCodeCommand(Channel.SMS, PHONE, Purpose.LOGIN))
    assert len(env.queue.messages) == 2
    assert status_service.requests == []


@pytest.mark.parametrize(("send_when_unknown", "sent"), [(True, 1), (False, 0)])
async def test_an_unknown_answer_follows_the_setting(
    env: Env, status_service: FakeNumberStatusService, send_when_unknown: bool, sent: int
) -> None:
    """H3: "cannot tell" (0) sends by default (fail open) and withholds when so configured; the
    binding is never marked on an unknown answer."""
    account_id = await env.register()
    status_service.answer(PHONE_E164, "0")
    env.clock.advance(181 * DAY)
    guard = guard_for(env, status_service, send_when_unknown=send_when_unknown)
    await env.codes(guard).issue(IssueCodeCommand(Channel.SMS, PHONE, Purpose.RESET_PASSWORD))
    assert len(env.queue.messages) == sent
    assert (await env.state(account_id))["stale"] is None
