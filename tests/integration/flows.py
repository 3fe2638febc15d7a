"""Register and sign in through the real RPCs: shared steps of the integration tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.integration.conftest import Harness, wait_for_outbox
from xiaohe.identity.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    codes_pb2,
    codes_pb2_grpc,
    common_pb2,
)

if TYPE_CHECKING:
    from xiaohe.identity.v1.accounts_pb2_grpc import AccountServiceAsyncStub
    from xiaohe.identity.v1.auth_pb2_grpc import AuthServiceAsyncStub
    from xiaohe.identity.v1.codes_pb2_grpc import CodeServiceAsyncStub

PHONE = "+8613812345678"
OTHER_PHONE = "+8613987654321"
LOGIN_NAME = "zhang.wei"
OTHER_LOGIN_NAME = "li.na"
PASSWORD = "Qingshan-Lvshui-2026"
AUDIENCE = "xiaohe-platform"


@dataclass(frozen=True)
class Stubs:
    """The stubs of one harness channel."""

    codes: CodeServiceAsyncStub
    auth: AuthServiceAsyncStub
    accounts: AccountServiceAsyncStub


def stubs(h: Harness) -> Stubs:
    """Stubs on the harness channel."""
    return Stubs(
        codes_pb2_grpc.CodeServiceStub(h.channel),
        auth_pb2_grpc.AuthServiceStub(h.channel),
        accounts_pb2_grpc.AccountServiceStub(h.channel),
    )


async def code_ticket(
    h: Harness,
    destination: str,
    purpose: common_pb2.Purpose.ValueType = common_pb2.PURPOSE_REGISTER,
    channel: common_pb2.Channel.ValueType = common_pb2.CHANNEL_SMS,
) -> str:
    """A ticket for `destination` and `purpose`: IssueCode, the code from the dev outbox,
    VerifyCode."""
    s = stubs(h)
    outbox = "sms" if channel == common_pb2.CHANNEL_SMS else "email"
    await h.drain_outbox()  # a notice of an earlier step is not counted as this code
    before = len(h.outbox_lines(outbox))
    await s.codes.IssueCode(
        codes_pb2.IssueCodeRequest(channel=channel, destination=destination, purpose=purpose),
        metadata=h.metadata,
    )
    lines = await wait_for_outbox(h, before + 1, outbox)
    assert len(lines) == before + 1
    assert lines[-1]["to"] == destination
    code = re.search(r"\d{6}", lines[-1]["text"])
    assert code is not None
    verified = await s.codes.VerifyCode(
        codes_pb2.VerifyCodeRequest(
            channel=channel, destination=destination, purpose=purpose, code=code.group(0)
        ),
        metadata=h.metadata,
    )
    return verified.ticket


async def register_ticket(h: Harness, phone: str) -> str:
    """A REGISTER ticket for `phone`, through IssueCode, the dev outbox and VerifyCode."""
    return await code_ticket(h, phone, common_pb2.PURPOSE_REGISTER)


async def register(h: Harness, login_name: str, phone: str) -> str:
    """Register a natural person with PASSWORD; returns the account id."""
    registered = await stubs(h).accounts.Register(
        accounts_pb2.RegisterRequest(
            subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
            login_name=login_name,
            password=PASSWORD,
            phone=phone,
            phone_ticket=await register_ticket(h, phone),
            accepted_policy_version=1,
            natural_person=accounts_pb2.NaturalPersonProfile(name="张伟"),
        ),
        metadata=h.metadata,
    )
    assert registered.account_id.startswith("acc_")
    return registered.account_id


async def login(h: Harness, identifier: str, audience: str = "") -> auth_pb2.Session:
    """Sign in with PASSWORD; returns the session."""
    response = await stubs(h).auth.Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=identifier, password=PASSWORD),
            audience=audience,
        ),
        metadata=h.metadata,
    )
    assert response.next_step == auth_pb2.NEXT_STEP_NONE
    return response.session
