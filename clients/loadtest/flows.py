"""The traffic of real users as sequences of calls: register, log in, refresh, validate, reset.

Each function is one user-visible flow and reads as its steps. They are shared by
the driver's seeding and the Locust users; codes come from the dev outbox.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TypeAlias

from clients.loadtest.outbox import OutboxReader
from clients.loadtest.rpc import CallFailed, FlowFailed, Identity
from clients.loadtest.testdata import PHONE_BLOCK, RunData
from xiaohe.identity.v1 import (
    accounts_pb2,
    auth_pb2,
    codes_pb2,
    common_pb2,
    privacy_pb2,
)

CODE_WAIT_SECONDS = 10.0
COOLDOWN_SECONDS = 61.0  # the server's default per-number cooldown is 60 s
CODES_PER_HOUR = 5  # the server's default per-number hourly limit

Purpose: TypeAlias = common_pb2.Purpose.ValueType

_PURPOSE_NAMES: dict[Purpose, str] = {
    common_pb2.PURPOSE_LOGIN: "LOGIN",
    common_pb2.PURPOSE_REGISTER: "REGISTER",
    common_pb2.PURPOSE_RESET_PASSWORD: "RESET_PASSWORD",
}


@dataclass
class Account:
    """A test account this run knows the password of, and when its phone last got a code."""

    login_name: str
    phone: str
    password: str = field(repr=False)
    generation: int = 0
    codes_sent_at: list[float] = field(default_factory=list)
    sessions_ended_at: float = 0.0  # monotonic time of this run's last reset

    def phone_ready(self, now: float) -> bool:
        """Whether a code to this phone would pass the server's default per-number limits."""
        recent = [t for t in self.codes_sent_at if now - t < 3600]
        self.codes_sent_at = recent
        return len(recent) < CODES_PER_HOUR and (not recent or now - recent[-1] >= COOLDOWN_SECONDS)


@dataclass
class Tokens:
    """The tokens of one session, its account and when it began."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    account: Account
    issued_at: float

    def ended_by_reset(self) -> bool:
        """Whether a password reset of this run has ended the session since it began."""
        return self.account.sessions_ended_at > self.issued_at


def _tokens(session: auth_pb2.Session, account: Account, issued_at: float) -> Tokens:
    return Tokens(session.access_token, session.refresh_token, account, issued_at)


def ticket_for(
    identity: Identity, outbox: OutboxReader, account: Account, purpose: Purpose, ip: str
) -> str:
    """IssueCode to the account's phone, read the code from the outbox, VerifyCode: a ticket."""
    mark = outbox.mark()
    account.codes_sent_at.append(time.monotonic())
    identity.call(
        "IssueCode",
        identity.codes.IssueCode,
        codes_pb2.IssueCodeRequest(
            channel=common_pb2.CHANNEL_SMS, destination=account.phone, purpose=purpose
        ),
        end_user_ip=ip,
    )
    code = outbox.wait_code(account.phone, _PURPOSE_NAMES[purpose], mark, CODE_WAIT_SECONDS)
    if code is None:
        raise FlowFailed("no code arrived in the outbox")
    verified = identity.call(
        "VerifyCode",
        identity.codes.VerifyCode,
        codes_pb2.VerifyCodeRequest(
            channel=common_pb2.CHANNEL_SMS,
            destination=account.phone,
            purpose=purpose,
            code=code,
        ),
        end_user_ip=ip,
    )
    return verified.ticket


def policy_version(identity: Identity) -> int:
    """The privacy policy version a registration accepts."""
    policy = identity.call("GetPolicy", identity.privacy.GetPolicy, privacy_pb2.GetPolicyRequest())
    return policy.version


def register(
    identity: Identity, outbox: OutboxReader, account: Account, accepted_policy: int, ip: str
) -> None:
    """Prove the phone, then Register a natural person with a login name and password."""
    ticket = ticket_for(identity, outbox, account, common_pb2.PURPOSE_REGISTER, ip)
    identity.call(
        "Register",
        identity.accounts.Register,
        accounts_pb2.RegisterRequest(
            subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
            login_name=account.login_name,
            password=account.password,
            phone=account.phone,
            phone_ticket=ticket,
            accepted_policy_version=accepted_policy,
        ),
        end_user_ip=ip,
    )


def password_login(identity: Identity, account: Account, ip: str) -> Tokens:
    """Login with login name and password."""
    issued_at = time.monotonic()
    reply = identity.call(
        "Login",
        identity.auth.Login,
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(
                identifier=account.login_name,
                identifier_kind=common_pb2.IDENTIFIER_KIND_LOGIN_NAME,
                password=account.password,
            )
        ),
        end_user_ip=ip,
    )
    return _tokens(reply.session, account, issued_at)


def sms_login(identity: Identity, outbox: OutboxReader, account: Account, ip: str) -> Tokens:
    """Login with a LOGIN code sent to the account's phone."""
    ticket = ticket_for(identity, outbox, account, common_pb2.PURPOSE_LOGIN, ip)
    issued_at = time.monotonic()
    reply = identity.call(
        "Login", identity.auth.Login, auth_pb2.LoginRequest(sms_ticket=ticket), end_user_ip=ip
    )
    return _tokens(reply.session, account, issued_at)


def refresh(identity: Identity, tokens: Tokens, ip: str) -> Tokens:
    """Rotate the session's refresh token (refused, as provoked, if a reset ended it)."""
    reply = identity.call(
        "Refresh",
        identity.auth.Refresh,
        auth_pb2.RefreshRequest(refresh_token=tokens.refresh_token),
        end_user_ip=ip,
        provoked=tokens.ended_by_reset(),
    )
    return _tokens(reply.session, tokens.account, tokens.issued_at)


def validate(identity: Identity, tokens: Tokens) -> bool:
    """ValidateToken as a business system calls it: no end user, just the bearer token."""
    reply = identity.call(
        "ValidateToken",
        identity.auth.ValidateToken,
        auth_pb2.ValidateTokenRequest(access_token=tokens.access_token),
    )
    return reply.valid


def logout(identity: Identity, tokens: Tokens, ip: str) -> None:
    """End the session (one a reset already ended may be refused: provoked)."""
    identity.call(
        "Logout",
        identity.auth.Logout,
        auth_pb2.LogoutRequest(refresh_token=tokens.refresh_token),
        end_user_ip=ip,
        provoked=tokens.ended_by_reset(),
    )


def reset_password(
    identity: Identity, outbox: OutboxReader, data: RunData, account: Account, ip: str
) -> None:
    """Forgotten password: a RESET_PASSWORD code to the phone, then a new password."""
    ticket = ticket_for(identity, outbox, account, common_pb2.PURPOSE_RESET_PASSWORD, ip)
    new_password = data.password(account.login_name, account.generation + 1)
    identity.call(
        "ResetPassword",
        identity.accounts.ResetPassword,
        accounts_pb2.ResetPasswordRequest(
            identifier=account.login_name,
            identifier_kind=common_pb2.IDENTIFIER_KIND_LOGIN_NAME,
            ticket=ticket,
            new_password=new_password,
        ),
        end_user_ip=ip,
    )
    account.generation += 1
    account.password = new_password
    account.sessions_ended_at = time.monotonic()  # the reset ended every session


@dataclass(frozen=True)
class Rejections:
    """How often a person asking for a code does something the server refuses."""

    resend: float = 0.15  # presses "resend" before the 60 s cooldown is over
    malformed: float = 0.03  # mistypes the number


def request_code(identity: Identity, rng: random.Random, rejections: Rejections, ip: str) -> None:
    """A visitor asks for a registration code and leaves; some resend early or mistype.

    The number is a random one of the test block (one in 10**7 is the phone of an
    account of this run, whose next SMS flow may then meet the cooldown).
    """
    if rng.random() < rejections.malformed:
        destination = f"{PHONE_BLOCK}{rng.randrange(1000):03d}"  # too short: INVALID_ARGUMENT
        _issue(identity, destination, ip, provoked=True)
        return
    destination = f"{PHONE_BLOCK}{rng.randrange(10**7):07d}"
    _issue(identity, destination, ip, provoked=False)
    if rng.random() < rejections.resend:
        _issue(identity, destination, ip, provoked=True)


def _issue(identity: Identity, destination: str, ip: str, *, provoked: bool) -> None:
    try:
        identity.call(
            "IssueCode",
            identity.codes.IssueCode,
            codes_pb2.IssueCodeRequest(
                channel=common_pb2.CHANNEL_SMS,
                destination=destination,
                purpose=common_pb2.PURPOSE_REGISTER,
            ),
            end_user_ip=ip,
            provoked=provoked,
        )
    except CallFailed:
        return  # recorded; the visitor gives up
