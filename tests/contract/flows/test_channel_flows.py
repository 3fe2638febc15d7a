"""BindPhone, BindEmail, UnbindEmail and ChangePhone on real stores: all or nothing (F2, H1, T3).

Everything that stores, counts or hashes is real: AccountService, SessionService
(with its revocation list), the outbox behind the notices and the audit log on
the `database` fixture (SQLite and PostgreSQL); tickets and the login throttle
on `redis_client` (embedded and system Redis); Argon2id at the cheapest costs.
Faults are database triggers (`tests/contract/faults.py`) that make the outbox
or the audit log refuse new rows, which breaks each flow after its first write
(the contact change) without replacing any part of the code under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from tests.contract.accounts.conftest import (
    PASSWORD,
    PHONE_E164,
    AccountsEnv,
    build_env,
    natural_command,
)
from tests.contract.faults import INJECTED, failing_writes, row_counts
from tests.contract.flows.conftest import session_service
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.codes.models import Channel, Purpose
from xiaohe.identity.server.credentials.hasher import PasswordHasher
from xiaohe.identity.server.credentials.lockout import LockoutPolicy, LoginThrottle
from xiaohe.identity.server.credentials.passwords import PasswordPolicy
from xiaohe.identity.server.credentials.reauth import PasswordCheck
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.errors import AlreadyExists, Conflict, TicketInvalid
from xiaohe.identity.server.flows.channels import (
    BindEmailCommand,
    BindPhoneCommand,
    ChannelFlow,
    UnbindEmailCommand,
)
from xiaohe.identity.server.flows.phone_change import (
    ChangePhoneCommand,
    PhoneChangeFlow,
    PhoneProof,
)
from xiaohe.identity.server.sessions.models import IssuedSession, SessionSubject
from xiaohe.identity.server.sessions.revocations import RevocationList
from xiaohe.identity.server.sessions.service import SessionService
from xiaohe.identity.server.shared.identifiers import IdentifierKind, IdType
from xiaohe.identity.server.storage.database import AfterCommit, Database, SqlConnection
from xiaohe.identity.server.storage.schema import identifiers, sessions

CLIENT = "xhc_bff"
IP = "203.0.113.7"
NEW_PHONE = "+8613700001111"
THIRD_PHONE = "+8613700002222"
ADDRESS = "zhangsan@example.cn"
NEW_ADDRESS = "san.zhang@example.com"
TABLES = ("accounts", "identifiers", "sessions", "outbox")
EXPECTED_ERROR = {"outbox": "could not be queued", "audit_log": INJECTED}


@dataclass
class FlowsEnv:
    """The channel and phone-change flows on real stores, and what tests inspect."""

    accounts: AccountsEnv
    sessions: SessionService
    revocations: RevocationList
    audit: AuditLog
    channels: ChannelFlow
    phone_change: PhoneChangeFlow
    channel_kwargs: dict[str, Any]
    phone_change_kwargs: dict[str, Any]

    @property
    def service(self) -> AccountService:
        """The account service."""
        return self.accounts.service

    @property
    def database(self) -> Database:
        """The test database."""
        return self.accounts.database

    async def register(self, *, email: str = "", phone: bool = True) -> str:
        """A natural person (login name `zhangsan`), with an email and/or no phone if asked."""
        cmd = natural_command(id_type=IdType.UNSPECIFIED, id_number="")
        account_id = (await self.accounts.register(cmd)).account_id
        if email:
            await self.service.replace_contact(account_id, "email", expected="", new=email)
        if not phone:
            await self.service.replace_contact(account_id, "phone", expected=PHONE_E164, new="")
        return account_id

    async def session(self, account_id: str) -> IssuedSession:
        """A new session of the account."""
        subject = SessionSubject(account_id=account_id, subject_type="NATURAL_PERSON", rn_level=0)
        return await self.sessions.create(subject, ("pwd",), client_id=CLIENT)

    async def ticket(
        self, destination: str, purpose: Purpose, channel: Channel = Channel.SMS
    ) -> str:
        """A real, live ticket."""
        return await self.accounts.ticket(destination, purpose, channel)

    async def state(self, account_id: str) -> dict[str, Any]:
        """Everything a flow may change about the account: contact points, identifier rows,
        sessions (in SQL and in the revocation list), queued notices, success records."""
        data = await self.service.get_personal_data(account_id)
        async with self.database.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(identifiers.c.kind, identifiers.c.blind_index)
                    .where(identifiers.c.account_id == account_id)
                    .order_by(identifiers.c.kind)
                )
            ).all()
            revoked = (
                await conn.execute(
                    sa.select(sessions.c.session_id).where(sessions.c.revoked_at.is_not(None))
                )
            ).all()
        live = await self.sessions.list_sessions(account_id)
        await self.revocations.reload()
        return {
            "phone": data.phone,
            "email": data.email,
            "identifiers": [tuple(r) for r in rows],
            "revoked in SQL": [tuple(r) for r in revoked],
            "live": sorted(s.session_id for s in live),
            "revoked in the list": [
                s.session_id for s in live if self.revocations.is_revoked(s.session_id)
            ],
            "successes": [
                (r.action, r.outcome)
                for r in await self.audit.query()
                if r.outcome not in {"error", "unavailable"}
            ],
            "rows": await row_counts(self.database, *TABLES),
        }


@pytest.fixture
async def env(
    database: Database,
    redis_client: aioredis.Redis,
    clock: FakeClock,
    tmp_path: Path,
    password_policy: PasswordPolicy,
    argon2: PasswordHasher,
) -> FlowsEnv:
    """The flows on `database` × `redis_client`, with the real audit log and outbox."""
    accounts = await build_env(database, redis_client, clock, tmp_path, password_policy, argon2)
    audit = AuditLog(database, clock, AuditKeys(bytes(range(32))))
    sessions, revocations = session_service(accounts, redis_client, audit=audit)
    tickets = accounts.service_kwargs["tickets"]
    notices = accounts.service_kwargs["notices"]
    channel_kwargs: dict[str, Any] = {
        "uow": database,
        "accounts": accounts.service,
        "tickets": tickets,
        "passwords": PasswordCheck(
            argon2, LoginThrottle(redis_client, clock, LockoutPolicy(), ip_key=b"i" * 32)
        ),
        "sessions": sessions,
        "notices": notices,
        "audit": audit,
    }
    phone_change_kwargs: dict[str, Any] = {
        "uow": database,
        "accounts": accounts.service,
        "tickets": tickets,
        "sessions": sessions,
        "notices": notices,
        "clock": clock,
        "audit": audit,
    }
    return FlowsEnv(
        accounts,
        sessions,
        revocations,
        audit,
        ChannelFlow(**channel_kwargs),
        PhoneChangeFlow(**phone_change_kwargs),
        channel_kwargs,
        phone_change_kwargs,
    )


# -- one case per flow: set up, then the call that a fault must leave undone ------------------


Call = Callable[[], Awaitable[object]]


async def bind_phone_case(env: FlowsEnv) -> tuple[str, Call]:
    """A phoneless account with an email (so a notice is queued) binds NEW_PHONE."""
    account_id = await env.register(email=ADDRESS, phone=False)
    await env.session(account_id)

    async def call() -> object:
        return await env.channels.bind_phone(
            BindPhoneCommand(
                login_name="zhangsan",
                password=PASSWORD,
                phone=NEW_PHONE,
                phone_ticket=await env.ticket(NEW_PHONE, Purpose.BIND_PHONE),
                ip=IP,
            )
        )

    return account_id, call


async def bind_email_case(env: FlowsEnv) -> tuple[str, Call]:
    """An account with an email replaces it (both tickets, both addresses told)."""
    account_id = await env.register(email=ADDRESS)
    mine = await env.session(account_id)
    await env.session(account_id)

    async def call() -> object:
        return await env.channels.bind_email(
            BindEmailCommand(
                account_id=account_id,
                session_id=mine.session_id,
                email=NEW_ADDRESS,
                email_ticket=await env.ticket(NEW_ADDRESS, Purpose.BIND_EMAIL, Channel.EMAIL),
                current_email_ticket=await env.ticket(ADDRESS, Purpose.BIND_EMAIL, Channel.EMAIL),
                password=PASSWORD,
                ip=IP,
            )
        )

    return account_id, call


async def unbind_email_case(env: FlowsEnv) -> tuple[str, Call]:
    """An account removes its email with its password."""
    account_id = await env.register(email=ADDRESS)
    mine = await env.session(account_id)
    await env.session(account_id)

    async def call() -> object:
        await env.channels.unbind_email(
            UnbindEmailCommand(
                account_id=account_id, session_id=mine.session_id, password=PASSWORD, ip=IP
            )
        )
        return None

    return account_id, call


async def change_phone_case(env: FlowsEnv) -> tuple[str, Call]:
    """An account named by login name changes its phone, proven by the old one."""
    account_id = await env.register(email=ADDRESS)
    await env.session(account_id)

    async def call() -> object:
        return await env.phone_change.change(
            ChangePhoneCommand(
                identifier="zhangsan",
                identifier_kind=IdentifierKind.UNSPECIFIED,
                account_id="",
                session_id="",
                new_phone=NEW_PHONE,
                new_phone_ticket=await env.ticket(NEW_PHONE, Purpose.BIND_PHONE),
                proof=PhoneProof.OLD_PHONE,
                proof_ticket=await env.ticket(PHONE_E164, Purpose.CHANGE_PHONE),
                ip=IP,
            )
        )

    return account_id, call


CASES = {
    "BindPhone": bind_phone_case,
    "BindEmail": bind_email_case,
    "UnbindEmail": unbind_email_case,
    "ChangePhone": change_phone_case,
}


@pytest.mark.parametrize("failing", ["outbox", "audit_log"])
@pytest.mark.parametrize("flow", list(CASES))
async def test_a_change_of_contact_point_is_all_or_nothing(
    env: FlowsEnv, flow: str, failing: str
) -> None:
    """F2, H1, H2, T3: a fault after the contact change is written (the notice or the audit
    record cannot be stored) leaves the phone, the email, the identifier rows, every session (in
    SQL and in the revocation list) and the outbox as they were; the same change with fresh
    tickets then goes through whole."""
    account_id, call = await CASES[flow](env)
    before = await env.state(account_id)
    assert len(before["live"]) >= 1
    async with failing_writes(env.database, failing):
        # The outbox reports a failed insert as Unavailable; the audit log lets it through.
        with pytest.raises(Exception, match=EXPECTED_ERROR[failing]):
            await call()
    assert await env.state(account_id) == before

    await call()
    after = await env.state(account_id)
    assert (after["phone"], after["email"]) != (before["phone"], before["email"])
    assert after["identifiers"] != before["identifiers"]
    assert after["rows"]["outbox"] > before["rows"]["outbox"]
    assert len(after["live"]) < len(before["live"])
    assert len(after["successes"]) > len(before["successes"])


# -- concurrency on every store ---------------------------------------------------------------


class Gate:
    """The unit of work of a flow, opened only once `parties` calls have reached it.

    Concurrent calls in one process may otherwise run one after the other (a
    later call then sees the earlier one's change before its own checks); the
    gate holds each call at the door of its unit of work until all have passed
    every check, which is the race the row lock must decide.
    """

    def __init__(self, database: Database, parties: int) -> None:
        self._database = database
        self._barrier = asyncio.Barrier(parties)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[SqlConnection]:
        """Wait for the others, then open the unit of work."""
        if not self._database.in_transaction():
            await asyncio.wait_for(self._barrier.wait(), timeout=10)
        async with self._database.begin() as conn:
            yield conn

    async def after_commit(self, work: AfterCommit) -> None:
        """As the database does."""
        await self._database.after_commit(work)

    def in_transaction(self) -> bool:
        """As the database does."""
        return self._database.in_transaction()


def change_command(new_phone: str, new_ticket: str, proof: str) -> ChangePhoneCommand:
    """ChangePhone of `zhangsan` by the old phone."""
    return ChangePhoneCommand(
        identifier="zhangsan",
        identifier_kind=IdentifierKind.LOGIN_NAME,
        account_id="",
        session_id="",
        new_phone=new_phone,
        new_phone_ticket=new_ticket,
        proof=PhoneProof.OLD_PHONE,
        proof_ticket=proof,
        ip=IP,
    )


async def test_of_two_concurrent_phone_changes_exactly_one_wins(env: FlowsEnv) -> None:
    """H1: two changes of one account with their own tickets and different new phones, both
    past every check: one wins, the other is Conflict (the row lock makes it read the winner's
    phone), and the account holds exactly one new phone, with one notice per channel."""
    account_id = await env.register(email=ADDRESS)
    commands = [
        change_command(
            NEW_PHONE,
            await env.ticket(NEW_PHONE, Purpose.BIND_PHONE),
            await env.ticket(PHONE_E164, Purpose.CHANGE_PHONE),
        ),
        change_command(
            THIRD_PHONE,
            await env.ticket(THIRD_PHONE, Purpose.BIND_PHONE),
            await env.ticket(PHONE_E164, Purpose.CHANGE_PHONE),
        ),
    ]
    flow = PhoneChangeFlow(**{**env.phone_change_kwargs, "uow": Gate(env.database, 2)})
    outbox_before = (await row_counts(env.database, "outbox"))["outbox"]
    results = await asyncio.gather(*(flow.change(c) for c in commands), return_exceptions=True)
    assert sum(isinstance(r, Conflict) for r in results) == 1, results
    assert sum(not isinstance(r, BaseException) for r in results) == 1, results
    phone = (await env.service.get_personal_data(account_id)).phone
    assert phone in {NEW_PHONE, THIRD_PHONE}
    loser = THIRD_PHONE if phone == NEW_PHONE else NEW_PHONE
    assert await env.service.find_by_phone(loser) is None
    assert await env.service.find_by_phone(PHONE_E164) is None
    assert (await row_counts(env.database, "outbox"))["outbox"] == outbox_before + 2
    outcomes = [r.outcome for r in await env.audit.query(action="account.phone.change")]
    assert sorted(outcomes) == ["conflict", "old_phone"]


async def test_a_late_second_change_finds_its_proof_stale(env: FlowsEnv) -> None:
    """H1: a second change whose checks run after the first one committed is refused at the
    proof, which names a phone the account no longer holds (TicketInvalid)."""
    account_id = await env.register()
    proof = await env.ticket(PHONE_E164, Purpose.CHANGE_PHONE)
    late = change_command(
        THIRD_PHONE,
        await env.ticket(THIRD_PHONE, Purpose.BIND_PHONE),
        await env.ticket(PHONE_E164, Purpose.CHANGE_PHONE),
    )
    await env.phone_change.change(
        change_command(NEW_PHONE, await env.ticket(NEW_PHONE, Purpose.BIND_PHONE), proof)
    )
    with pytest.raises(TicketInvalid) as caught:
        await env.phone_change.change(late)
    assert caught.value.field == "old_phone_ticket"
    assert (await env.service.get_personal_data(account_id)).phone == NEW_PHONE


async def test_one_ticket_in_two_concurrent_phone_changes_works_once(env: FlowsEnv) -> None:
    """C5, H1: the same tickets in two concurrent calls: one change; the other is refused,
    as TicketInvalid (the ticket is spent) or, when the first finished before its checks,
    AlreadyExists (the new phone is bound now). Either way it changes nothing."""
    account_id = await env.register()
    command = change_command(
        NEW_PHONE,
        await env.ticket(NEW_PHONE, Purpose.BIND_PHONE),
        await env.ticket(PHONE_E164, Purpose.CHANGE_PHONE),
    )
    results = await asyncio.gather(
        env.phone_change.change(command), env.phone_change.change(command), return_exceptions=True
    )
    assert sum(isinstance(r, TicketInvalid | AlreadyExists) for r in results) == 1, results
    assert sum(not isinstance(r, BaseException) for r in results) == 1, results
    assert (await env.service.get_personal_data(account_id)).phone == NEW_PHONE


async def test_two_concurrent_email_bindings_of_one_account_bind_one(env: FlowsEnv) -> None:
    """H1: two first-email bindings of one account, both past every check: one address is
    bound, the other call is Conflict and its address stays free."""
    account_id = await env.register()
    mine = await env.session(account_id)
    flow = ChannelFlow(**{**env.channel_kwargs, "uow": Gate(env.database, 2)})
    commands = [
        BindEmailCommand(
            account_id=account_id,
            session_id=mine.session_id,
            email=address,
            email_ticket=await env.ticket(address, Purpose.BIND_EMAIL, Channel.EMAIL),
            current_email_ticket="",
            password=PASSWORD,
            ip=IP,
        )
        for address in (ADDRESS, NEW_ADDRESS)
    ]
    results = await asyncio.gather(*(flow.bind_email(c) for c in commands), return_exceptions=True)
    assert sum(isinstance(r, Conflict) for r in results) == 1, results
    email = (await env.service.get_personal_data(account_id)).email
    assert email in {ADDRESS, NEW_ADDRESS}
    other = NEW_ADDRESS if email == ADDRESS else ADDRESS
    assert await env.service.find_credentials(IdentifierKind.EMAIL, other) is None
