"""Steps shared by the BindPhone/BindEmail/UnbindEmail and ChangePhone RPC tests."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable

import grpc
import pytest
import sqlalchemy as sa

from tests.integration import flows
from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import PASSWORD, PHONE, code_ticket, stubs
from tests.rpc_errors import Details, details_of
from xiaohe.identity.server.delivery.outbox import STATUS_PENDING, STATUS_SENDING
from xiaohe.identity.server.storage.schema import outbox
from xiaohe.identity.v1 import accounts_pb2, auth_pb2, common_pb2

NEW_PHONE = "+8613700001111"
THIRD_PHONE = "+8613700002222"
ADDRESS = "zhang.wei@example.cn"
OTHER_ADDRESS = "wei.zhang@example.com.cn"

SMS = common_pb2.CHANNEL_SMS
EMAIL = common_pb2.CHANNEL_EMAIL
BIND_PHONE = common_pb2.PURPOSE_BIND_PHONE
BIND_EMAIL = common_pb2.PURPOSE_BIND_EMAIL
CHANGE_PHONE = common_pb2.PURPOSE_CHANGE_PHONE
LOGIN = common_pb2.PURPOSE_LOGIN
REGISTER = common_pb2.PURPOSE_REGISTER

# Codes may be requested as often as a test needs; the limits have their own tests.
OPEN_LIMITS: dict[str, object] = {
    "code_cooldown_seconds": 0,
    "code_per_destination_hour": 1000,
    "code_per_destination_day": 1000,
    "code_per_ip_hour": 1000,
}
TICKET_TTL = 600
_CODE = re.compile(r"\d{6}")


async def open_harness(harness_factory: HarnessFactory, **overrides: object) -> Harness:
    """A server whose code limits do not get in a test's way."""
    return await harness_factory(**{**OPEN_LIMITS, **overrides})


async def settle(h: Harness) -> None:
    """Wait until every queued message (codes, notices) has been written to the dev outbox."""
    unfinished = sa.select(sa.func.count()).where(
        outbox.c.status.in_([STATUS_PENDING, STATUS_SENDING])
    )
    for _ in range(250):
        await h.drain_outbox()
        async with h.container.database.connect() as conn:
            if not (await conn.execute(unfinished)).scalar_one():
                return
        await asyncio.sleep(0.02)
    raise AssertionError("queued messages were not delivered within 5 s")


async def ticket(
    h: Harness,
    destination: str,
    purpose: common_pb2.Purpose.ValueType,
    channel: common_pb2.Channel.ValueType = SMS,
) -> str:
    """A live ticket for (channel, destination, purpose) through IssueCode and VerifyCode."""
    await settle(h)  # a notice still on its way would be counted as the code's message
    return await code_ticket(h, destination, purpose, channel)


async def refused(call: Awaitable[object]) -> Details:
    """The decoded error of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


def ticket_refusal(details: Details, field: str) -> None:
    """The refusal of a ticket that proves nothing, pointing at the request field."""
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "TICKET_INVALID"
    assert list(details.violations) == [field]


def same_answer(a: Details, b: Details) -> bool:
    """Whether two refusals say exactly the same (everything but the request id)."""
    return (a.code, a.message, a.reason, a.violations, a.retry_after) == (
        b.code,
        b.message,
        b.reason,
        b.violations,
        b.retry_after,
    )


async def register(h: Harness, login_name: str, phone: str) -> str:
    """Register a natural person (`flows.register`) once earlier messages are delivered."""
    await settle(h)  # a notice still on its way would be counted as the REGISTER code's message
    return await flows.register(h, login_name, phone)


async def register_ticket(h: Harness, phone: str) -> str:
    """A REGISTER ticket for `phone` once earlier messages are delivered."""
    return await ticket(h, phone, REGISTER)


async def phone_of(h: Harness, account_id: str) -> str:
    """The account's bound phone, read from the store."""
    return (await h.container.accounts.get_personal_data(account_id)).phone


async def phoneless(h: Harness, login_name: str, phone: str = PHONE) -> str:
    """Register an account, then clear its phone (as an account from before phones were
    required would be); returns its id."""
    account_id = await register(h, login_name, phone)
    await h.container.accounts.replace_contact(account_id, "phone", expected=phone, new="")
    return account_id


async def login_as(h: Harness, identifier: str, password: str = PASSWORD) -> auth_pb2.Session:
    """A password login; returns the session."""
    response = await stubs(h).auth.Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=identifier, password=password)
        ),
        metadata=h.metadata,
    )
    return response.session


async def sms_login(h: Harness, phone: str) -> auth_pb2.Session:
    """Log in by a LOGIN code sent to `phone`."""
    sms_ticket = await ticket(h, phone, LOGIN)
    response = await stubs(h).auth.Login(
        auth_pb2.LoginRequest(sms_ticket=sms_ticket), metadata=h.metadata
    )
    return response.session


def bearer(session: auth_pb2.Session) -> tuple[tuple[str, str], ...]:
    """Metadata of a call about "me"."""
    return (("authorization", f"Bearer {session.access_token}"),)


async def me(h: Harness, session: auth_pb2.Session) -> accounts_pb2.Account:
    """GetAccount for the session's account."""
    response = await stubs(h).accounts.GetAccount(
        accounts_pb2.GetAccountRequest(), metadata=h.metadata + bearer(session)
    )
    return response.account


async def valid(h: Harness, session: auth_pb2.Session) -> bool:
    """What ValidateToken says of the session's access token."""
    answer = await stubs(h).auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=session.access_token), metadata=h.metadata
    )
    return answer.valid


async def refused_within_a_second(h: Harness, *sessions: auth_pb2.Session) -> None:
    """T3: ValidateToken says invalid for each session's token within one second."""
    deadline = time.monotonic() + 1.0
    pending = list(sessions)
    while pending and time.monotonic() < deadline:
        pending = [s for s in pending if await valid(h, s)]
        if pending:
            await asyncio.sleep(0.02)
    assert not pending, "a token of an ended session was still valid after one second"


async def delivered(h: Harness) -> tuple[int, int]:
    """Deliver what is queued; how many SMS and email lines the dev outbox then holds."""
    await settle(h)
    return len(h.outbox_lines("sms")), len(h.outbox_lines("email"))


async def notices(h: Harness, box: str = "sms") -> list[dict[str, str]]:
    """The security notices delivered so far to the `box` ("sms" or "email") outbox."""
    await settle(h)
    return [line for line in h.outbox_lines(box) if line["purpose"] == "NOTICE"]


def assert_no_secret(text: str, *values: str) -> None:
    """H2: a notice carries no code and none of `values` (full numbers, addresses)."""
    assert not _CODE.search(text), text
    for value in values:
        assert value not in text
        assert value.removeprefix("+86") not in text
