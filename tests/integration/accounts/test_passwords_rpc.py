"""AccountService.ChangePassword and ResetPassword over real gRPC (SECURITY P2, P3, B1-B3, T3, H2).

Everything runs through the in-process server on SQLite and the embedded Redis:
tickets come from IssueCode and VerifyCode with the code read from the dev
outbox, sessions from Login, and "refused" is what ValidateToken, Login and
Refresh answer afterwards. Argon2 work is counted by wrapping the server's own
hasher (the same instance every flow uses), not timed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
import sqlalchemy as sa

from tests.integration.conftest import Harness, wait_for_outbox
from tests.integration.flows import (
    LOGIN_NAME,
    OTHER_LOGIN_NAME,
    OTHER_PHONE,
    PASSWORD,
    PHONE,
    code_ticket,
    login,
    register,
    stubs,
)
from tests.rpc_errors import Details, details_of
from xiaohe.identity.server.codes.models import Purpose
from xiaohe.identity.server.storage.schema import accounts, outbox
from xiaohe.identity.v1 import (
    accounts_pb2,
    auth_pb2,
    common_pb2,
    privacy_pb2,
    privacy_pb2_grpc,
)

NEW_PASSWORD = "Yunshan-Changjiang-2027"
OTHER_NEW_PASSWORD = "Baiyun-Huangshan-2028"
EMAIL = "zhang.wei@example.cn"
THIRD_PHONE = "+8613700001111"
REAL_NAME = "张伟"  # what tests.integration.flows.register stores
COOLDOWN = 61  # seconds between two codes to one destination (60 s cooldown)
TICKET_TTL = 600
RESET = common_pb2.PURPOSE_RESET_PASSWORD
SMS = common_pb2.CHANNEL_SMS
EMAIL_CHANNEL = common_pb2.CHANNEL_EMAIL


def bearer(h: Harness, token: str) -> tuple[tuple[str, str], ...]:
    """The client credentials plus `authorization: Bearer <token>`."""
    return (*h.metadata, ("authorization", f"Bearer {token}"))


async def ticket(
    h: Harness,
    destination: str = PHONE,
    purpose: common_pb2.Purpose.ValueType = RESET,
    channel: common_pb2.Channel.ValueType = SMS,
) -> str:
    """A ticket through IssueCode, the dev outbox and VerifyCode, past the cooldown first."""
    h.clock.advance(COOLDOWN)
    return await code_ticket(h, destination, purpose, channel)


async def valid(h: Harness, token: str) -> bool:
    """What ValidateToken says of an access token."""
    answer = await stubs(h).auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=token), metadata=h.metadata
    )
    return answer.valid


async def refused_within_a_second(h: Harness, token: str) -> bool:
    """Whether ValidateToken says invalid within one second (wall clock)."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if not await valid(h, token):
            return True
        await asyncio.sleep(0.02)
    return not await valid(h, token)


async def failure(call: Awaitable[object]) -> Details:
    """The decoded error of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


def comparable(d: Details) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    """What a caller sees of an error, without the request id."""
    return d.code, d.message, d.reason, d.violations


async def change(
    h: Harness,
    token: str,
    current: str = PASSWORD,
    new: str = NEW_PASSWORD,
    *,
    keep_other_sessions: bool = False,
) -> accounts_pb2.ChangePasswordResponse:
    """ChangePassword as the bearer of `token` (raw gRPC: other sessions end by default)."""
    return await stubs(h).accounts.ChangePassword(
        accounts_pb2.ChangePasswordRequest(
            current_password=current, new_password=new, keep_other_sessions=keep_other_sessions
        ),
        metadata=bearer(h, token),
    )


async def reset(
    h: Harness,
    reset_ticket: str,
    identifier: str = LOGIN_NAME,
    new: str = NEW_PASSWORD,
    real_name: str = "",
) -> accounts_pb2.ResetPasswordResponse:
    """ResetPassword without a bearer token, as a signed-out user does."""
    return await stubs(h).accounts.ResetPassword(
        accounts_pb2.ResetPasswordRequest(
            identifier=identifier, ticket=reset_ticket, new_password=new, real_name=real_name
        ),
        metadata=h.metadata,
    )


async def login_fails(h: Harness, identifier: str, password: str) -> Details:
    """A password login that must fail; its error."""
    return await failure(
        stubs(h).auth.Login(
            auth_pb2.LoginRequest(
                password=auth_pb2.PasswordCredential(identifier=identifier, password=password)
            ),
            metadata=h.metadata,
        )
    )


async def login_with(h: Harness, identifier: str, password: str) -> auth_pb2.Session:
    """A password login that must succeed."""
    response = await stubs(h).auth.Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=identifier, password=password)
        ),
        metadata=h.metadata,
    )
    return response.session


async def notices(h: Harness) -> int:
    """Security notices queued so far (outbox rows of purpose NOTICE, sent or not)."""
    async with h.container.database.connect() as conn:
        query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.purpose == "NOTICE")
        return int((await conn.execute(query)).scalar_one())


async def bind_email(h: Harness, account_id: str, email: str = EMAIL) -> None:
    """Bind an email directly through the account service (the BindEmail flow is not ours)."""
    await h.container.accounts.replace_contact(account_id, "email", expected="", new=email)


async def verify_real_name(h: Harness, account_id: str) -> None:
    """Mark the account real-name verified (no flow verifies names yet)."""
    async with h.container.database.begin() as conn:
        await conn.execute(
            sa.update(accounts).where(accounts.c.account_id == account_id).values(real_name_level=1)
        )


async def audited(h: Harness, action: str) -> list[tuple[str, str]]:
    """(target, outcome) of the audit records of `action`, oldest first."""
    return [(r.target, r.outcome) for r in await h.container.audit.query(action=action)]


@dataclass
class Argon2Count:
    """Counts the Argon2 operations of the server's hasher (hash, verify, dummy verify)."""

    counts: Counter[str]

    @property
    def total(self) -> int:
        """Operations so far."""
        return sum(self.counts.values())


@pytest.fixture
def argon2(h: Harness, monkeypatch: pytest.MonkeyPatch) -> Argon2Count:
    """Wrap the server's hasher so that every Argon2 operation is counted."""
    hasher = h.container.hasher
    count = Argon2Count(Counter())

    def counted(name: str) -> Callable[..., Awaitable[object]]:
        inner = getattr(hasher, name)

        async def wrapper(*args: object) -> object:
            count.counts[name] += 1
            return await inner(*args)

        return wrapper

    for name in ("hash", "verify", "dummy_verify"):
        monkeypatch.setattr(hasher, name, counted(name))
    return count


def assert_no_secrets(lines: list[dict[str, str]], *secrets: str) -> None:
    """No message text holds a password, a ticket or a full phone number or address."""
    for line in lines:
        for secret in secrets:
            assert secret not in line["text"], "a notice leaks a secret"
            assert secret not in line.get("subject", "")


# -- change ----------------------------------------------------------------------------------


async def test_change_password_ends_the_other_sessions_and_notifies(h: Harness) -> None:
    """P3, T3, H2: the current password and a new one change it; the other sessions' tokens are
    refused by ValidateToken within a second while the caller's stays valid; the bound phone
    and email get a notice holding no secret; audited."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    await bind_email(h, account_id)
    caller = await login(h, LOGIN_NAME)
    other = await login(h, PHONE)
    await h.container.revocations.wait_ready()
    assert await valid(h, other.access_token)

    answer = await change(h, caller.access_token)
    assert answer.sessions_ended == 1
    assert await refused_within_a_second(h, other.access_token)
    assert await valid(h, caller.access_token)
    refresh = await failure(
        stubs(h).auth.Refresh(
            auth_pb2.RefreshRequest(refresh_token=other.refresh_token), metadata=h.metadata
        )
    )
    assert refresh.reason == "TOKEN_INVALID"
    me = await stubs(h).accounts.GetAccount(
        accounts_pb2.GetAccountRequest(), metadata=bearer(h, caller.access_token)
    )
    assert me.account.account_id == account_id

    assert (await login_fails(h, LOGIN_NAME, PASSWORD)).reason == "INVALID_CREDENTIALS"
    assert (await login_with(h, LOGIN_NAME, NEW_PASSWORD)).account_id == account_id

    sms = [m for m in await wait_for_outbox(h, 2, "sms") if m["purpose"] == "NOTICE"]
    email = [m for m in await wait_for_outbox(h, 1, "email") if m["purpose"] == "NOTICE"]
    assert [m["to"] for m in sms] == [PHONE]
    assert [m["to"] for m in email] == [EMAIL]
    assert "密码" in sms[0]["text"]
    assert_no_secrets(sms + email, PASSWORD, NEW_PASSWORD, PHONE, PHONE[3:], EMAIL)
    assert await audited(h, "account.password.change") == [(account_id, "ok")]
    assert await audited(h, "session.revoke_all") == [(account_id, "password_change")]


async def test_a_raw_change_password_that_leaves_the_choice_out_ends_the_other_sessions(
    h: Harness,
) -> None:
    """T3, P3: a raw gRPC ChangePasswordRequest with neither keep_other_sessions nor the
    deprecated end_other_sessions ends every other session; the deprecated field set to false
    (what an omitted proto3 bool reads as) is ignored and ends them too."""
    await register(h, LOGIN_NAME, PHONE)
    caller = await login(h, LOGIN_NAME)
    others = [await login(h, LOGIN_NAME), await login(h, PHONE)]
    await h.container.revocations.wait_ready()
    omitted = await stubs(h).accounts.ChangePassword(
        accounts_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=NEW_PASSWORD),
        metadata=bearer(h, caller.access_token),
    )
    assert omitted.sessions_ended == 2
    for other in others:
        assert await refused_within_a_second(h, other.access_token)
    assert await valid(h, caller.access_token)

    other = await login_with(h, LOGIN_NAME, NEW_PASSWORD)
    request = accounts_pb2.ChangePasswordRequest(
        current_password=NEW_PASSWORD, new_password=OTHER_NEW_PASSWORD
    )
    request.end_other_sessions = False  # deprecated, and ignored by the server
    deprecated = await stubs(h).accounts.ChangePassword(
        request, metadata=bearer(h, caller.access_token)
    )
    assert deprecated.sessions_ended == 1
    assert await refused_within_a_second(h, other.access_token)
    assert await valid(h, caller.access_token)


async def test_change_password_can_keep_the_other_sessions(h: Harness) -> None:
    """P3, H2: with keep_other_sessions no session ends, and the notice is still sent."""
    await register(h, LOGIN_NAME, PHONE)
    caller = await login(h, LOGIN_NAME)
    other = await login(h, LOGIN_NAME)
    await h.container.revocations.wait_ready()
    answer = await change(h, caller.access_token, keep_other_sessions=True)
    assert answer.sessions_ended == 0
    await asyncio.sleep(0.2)
    assert await valid(h, other.access_token)
    assert await notices(h) == 1


async def test_wrong_current_passwords_count_toward_the_login_lock(h: Harness) -> None:
    """B1, B2, P3: a wrong current password is a failed login for that account and IP; after
    the per-(account, IP) threshold even the right one is refused as INVALID_CREDENTIALS, at
    ChangePassword and at Login alike, until the lock expires."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    caller = await login(h, LOGIN_NAME)
    threshold = h.container.settings.login_failures_per_account_ip
    wrong = [
        await failure(change(h, caller.access_token, current=f"Wrong-{i}-pass"))
        for i in range(threshold)
    ]
    assert {(d.code, d.reason) for d in wrong} == {
        (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    }
    locked = await failure(change(h, caller.access_token))
    assert comparable(locked) == comparable(wrong[0])
    login_locked = await login_fails(h, LOGIN_NAME, PASSWORD)
    assert (login_locked.code, login_locked.reason) == (locked.code, locked.reason)
    assert await notices(h) == 0

    h.clock.advance(h.container.settings.lock_base_seconds + 1)
    assert (await change(h, caller.access_token)).sessions_ended == 0
    assert (await login_with(h, LOGIN_NAME, NEW_PASSWORD)).account_id == account_id
    outcomes = [o for _, o in await audited(h, "account.password.change")]
    assert outcomes == ["invalid_credentials"] * (threshold + 1) + ["ok"]


async def test_the_new_password_must_pass_the_policy_and_differ(h: Harness) -> None:
    """P2, P3: a common password, one holding the login name or the phone digits, and the
    current one again are INVALID_ARGUMENT on new_password; an empty current password on
    current_password; nothing changes and nothing is counted as a failure."""
    await register(h, LOGIN_NAME, PHONE)
    caller = await login(h, LOGIN_NAME)
    cases = {
        "password123": "new_password",
        "Zhang.Wei-2027-Spring": "new_password",  # the login name, separators ignored
        f"Call-me-{PHONE[-8:]}": "new_password",
        PASSWORD: "new_password",
        "short": "new_password",
    }
    for new, field in cases.items():
        d = await failure(change(h, caller.access_token, new=new))
        assert (d.code, d.reason, set(d.violations)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            {field},
        ), new
        assert new not in d.message
    same = await failure(change(h, caller.access_token, new=PASSWORD))
    assert same.violations == {"new_password": "must differ from the current password"}
    empty = await failure(change(h, caller.access_token, current=""))
    assert set(empty.violations) == {"current_password"}
    assert await notices(h) == 0
    # Eleven refusals, none a failed login: the right password still changes it.
    assert (await change(h, caller.access_token)).sessions_ended == 0


async def test_a_restricted_session_changes_the_password_only_after_consent(h: Harness) -> None:
    """I3, P3: a session waiting for consent to a new policy gets CONSENT_REQUIRED; after
    AcceptPolicy and a Refresh the same session changes the password."""
    await register(h, LOGIN_NAME, PHONE)
    version = (await h.container.policies.publish("小禾隐私政策（第二版）：新增用途说明。")).version
    response = await stubs(h).auth.Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=LOGIN_NAME, password=PASSWORD)
        ),
        metadata=h.metadata,
    )
    assert response.next_step == auth_pb2.NEXT_STEP_CONSENT_REQUIRED
    restricted = response.session
    d = await failure(change(h, restricted.access_token))
    assert (d.code, d.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CONSENT_REQUIRED")
    await privacy_pb2_grpc.PrivacyServiceStub(h.channel).AcceptPolicy(
        privacy_pb2.AcceptPolicyRequest(version=version),
        metadata=bearer(h, restricted.access_token),
    )
    refreshed = await stubs(h).auth.Refresh(
        auth_pb2.RefreshRequest(refresh_token=restricted.refresh_token), metadata=h.metadata
    )
    assert (await change(h, refreshed.session.access_token)).sessions_ended == 0


# -- reset -----------------------------------------------------------------------------------


async def test_reset_by_sms_ends_every_session_and_notifies(h: Harness) -> None:
    """P3, T3, H2: a RESET_PASSWORD ticket for the bound phone sets a new password; every
    session ends (ValidateToken within a second, Refresh at once); the phone is told; audited."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    first = await login(h, LOGIN_NAME)
    second = await login(h, PHONE)
    await h.container.revocations.wait_ready()
    await reset(h, await ticket(h), identifier="138 1234 5678")
    for session in (first, second):
        assert await refused_within_a_second(h, session.access_token)
        d = await failure(
            stubs(h).auth.Refresh(
                auth_pb2.RefreshRequest(refresh_token=session.refresh_token), metadata=h.metadata
            )
        )
        assert d.reason == "TOKEN_INVALID"
    assert (await login_fails(h, LOGIN_NAME, PASSWORD)).reason == "INVALID_CREDENTIALS"
    assert (await login_with(h, LOGIN_NAME, NEW_PASSWORD)).account_id == account_id
    lines = await wait_for_outbox(h, 3, "sms")  # register code, reset code, notice
    notice = [m for m in lines if m["purpose"] == "NOTICE"]
    assert [m["to"] for m in notice] == [PHONE]
    assert_no_secrets(notice, PASSWORD, NEW_PASSWORD, PHONE[3:])
    assert await audited(h, "account.password.reset") == [(account_id, "ok")]


async def test_reset_by_email_notifies_phone_and_email(h: Harness) -> None:
    """P3, H2: a RESET_PASSWORD ticket for the bound email works too (identifier: the phone);
    the notice goes to the phone and the email."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    await bind_email(h, account_id)
    reset_ticket = await ticket(h, EMAIL, channel=EMAIL_CHANNEL)
    await reset(h, reset_ticket, identifier=PHONE)
    assert (await login_with(h, EMAIL, NEW_PASSWORD)).account_id == account_id
    sms = [m for m in await wait_for_outbox(h, 2, "sms") if m["purpose"] == "NOTICE"]
    email = [m for m in await wait_for_outbox(h, 2, "email") if m["purpose"] == "NOTICE"]
    assert [m["to"] for m in sms] == [PHONE]
    assert [m["to"] for m in email] == [EMAIL]
    assert_no_secrets(sms + email, NEW_PASSWORD, reset_ticket)


async def test_reset_with_a_recovery_grant_names_its_account_only(h: Harness) -> None:
    """P3, C5: a reset grant (what recovery hands out) resets the account it names; a grant
    for another account is refused like a wrong ticket and spent."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    other_id = await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    foreign = await h.container.tickets.grant(other_id, Purpose.RESET_PASSWORD)
    d = await failure(reset(h, foreign))
    assert (d.reason, d.violations) == ("TICKET_INVALID", {"ticket": d.message})
    assert (await failure(reset(h, foreign, identifier=OTHER_LOGIN_NAME))).reason == (
        "TICKET_INVALID"
    )
    grant = await h.container.tickets.grant(account_id, Purpose.RESET_PASSWORD)
    await reset(h, grant)
    assert (await login_with(h, LOGIN_NAME, NEW_PASSWORD)).account_id == account_id
    assert (await login_with(h, OTHER_LOGIN_NAME, PASSWORD)).account_id == other_id


async def test_bad_tickets_are_refused_alike(h: Harness) -> None:
    """P3, C2, C5: a ticket of the wrong purpose (kept: it still logs in), one whose
    destination is no longer the account's, an expired one, a reused one and one for another
    account's phone all get the same INVALID_ARGUMENT TICKET_INVALID on `ticket`; the password
    stays and nothing is sent."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    answers: dict[str, Details] = {}

    login_ticket = await ticket(h, PHONE, common_pb2.PURPOSE_LOGIN)
    answers["wrong purpose"] = await failure(reset(h, login_ticket))
    # Not spent by the mismatch: it still signs in by SMS.
    response = await stubs(h).auth.Login(
        auth_pb2.LoginRequest(sms_ticket=login_ticket), metadata=h.metadata
    )
    assert response.session.account_id == account_id

    foreign = await ticket(h, OTHER_PHONE)
    answers["another account's phone"] = await failure(reset(h, foreign))
    answers["spent by that refusal"] = await failure(reset(h, foreign, OTHER_LOGIN_NAME))

    expiring = await ticket(h)
    h.clock.advance(TICKET_TTL + 1)
    answers["expired"] = await failure(reset(h, expiring))

    stale = await ticket(h)
    await h.container.accounts.replace_contact(account_id, "phone", expected=PHONE, new=THIRD_PHONE)
    answers["destination no longer bound"] = await failure(reset(h, stale))
    await h.container.accounts.replace_contact(account_id, "phone", expected=THIRD_PHONE, new=PHONE)

    good = await ticket(h)
    await reset(h, good)
    answers["reused"] = await failure(reset(h, good, new=OTHER_NEW_PASSWORD))

    first = comparable(next(iter(answers.values())))
    assert (first[0], first[2]) == (grpc.StatusCode.INVALID_ARGUMENT, "TICKET_INVALID")
    assert set(first[3]) == {"ticket"}
    for case, d in answers.items():
        assert comparable(d) == first, case
    assert await notices(h) == 1  # the one successful reset
    assert (await login_with(h, LOGIN_NAME, NEW_PASSWORD)).account_id == account_id


async def test_unknown_identifier_foreign_ticket_and_wrong_name_look_alike(
    h: Harness, argon2: Argon2Count
) -> None:
    """B3, B4, P3: an unknown (or malformed) identifier, a ticket for another account's phone
    and a wrong real name answer with the same status, message and details as a reused
    ticket; each spends its ticket, sends nothing and costs exactly one Argon2 operation,
    as a successful reset does."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    other_id = await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    await verify_real_name(h, account_id)

    async def refused(reset_ticket: str, identifier: str, name: str = REAL_NAME) -> Details:
        before = argon2.total
        d = await failure(reset(h, reset_ticket, identifier, real_name=name))
        assert argon2.total - before == 1, identifier
        assert argon2.counts["verify"] == 0
        # Spent: not even the right request can use it now.
        again = await failure(reset(h, reset_ticket, LOGIN_NAME, real_name=REAL_NAME))
        assert again.reason == "TICKET_INVALID"
        return d

    answers = {
        "unknown": await refused(await ticket(h), "nobody_here"),
        "unknown phone": await refused(await ticket(h), "13900001111"),
        "malformed": await refused(await ticket(h), "1381234567"),
        "foreign ticket": await refused(await ticket(h, OTHER_PHONE), LOGIN_NAME),
    }
    assert await notices(h) == 0

    # The name check: the account is real-name verified, so a wrong name fails like the rest.
    h.clock.advance(3600)  # past the per-destination hourly limit of codes
    answers["wrong name"] = await refused(await ticket(h), LOGIN_NAME, "李娜")
    answers["no name"] = await refused(await ticket(h), LOGIN_NAME, "")
    assert await notices(h) == 0

    before = argon2.total
    good = await ticket(h)
    await reset(h, good, LOGIN_NAME, real_name=f" {REAL_NAME} ")
    assert argon2.total - before == 1
    answers["reused"] = await failure(reset(h, good, LOGIN_NAME, real_name=REAL_NAME))
    assert await notices(h) == 1

    first = comparable(answers["reused"])
    assert first[2] == "TICKET_INVALID"
    for case, d in answers.items():
        assert comparable(d) == first, case
    outcomes = [o for _, o in await audited(h, "account.password.reset")]
    assert outcomes.count("unknown_account") == 3
    assert outcomes.count("ticket_unbound") == 1
    assert outcomes.count("name_mismatch") == 2
    assert outcomes.count("ok") == 1
    targets = {t for t, _ in await audited(h, "account.password.reset")}
    assert targets <= {account_id, other_id, "unknown"}
    # The foreign ticket's owner did not get a new password either.
    assert (await login_with(h, OTHER_LOGIN_NAME, PASSWORD)).account_id == other_id


async def test_a_weak_new_password_keeps_the_ticket(h: Harness, argon2: Argon2Count) -> None:
    """P2, P3: the new password is checked before the ticket is spent (and before any Argon2
    work): a common one, or one holding the account's phone digits, is INVALID_ARGUMENT on
    new_password, and the same ticket then resets with a good one."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    reset_ticket = await ticket(h)
    before = argon2.total
    for weak in ("password123", f"Ring-me-{PHONE[-8:]}", "Zhang.Wei.Loves.Tea", ""):
        d = await failure(reset(h, reset_ticket, identifier=PHONE, new=weak))
        assert (d.code, d.reason, set(d.violations)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            {"new_password"},
        ), weak
    assert argon2.total == before
    await reset(h, reset_ticket, identifier=PHONE)
    assert (await login_with(h, LOGIN_NAME, NEW_PASSWORD)).account_id == account_id


async def test_malformed_reset_requests_name_their_fields(h: Harness) -> None:
    """F3, P3: empty or oversized fields are INVALID_ARGUMENT naming each request field."""
    d = await failure(reset(h, "", identifier="", new="x"))
    assert set(d.violations) == {"identifier", "ticket", "new_password"}
    d = await failure(reset(h, "t" * 513, identifier="a" * 257, real_name="名" * 101))
    assert set(d.violations) == {"identifier", "ticket", "real_name"}
    d = await failure(reset(h, "vt1.x", real_name="张\n伟"))
    assert set(d.violations) == {"real_name"}


async def test_one_ticket_two_concurrent_resets_one_wins(h: Harness) -> None:
    """C5, P3: the same ticket in two concurrent ResetPassword calls: exactly one succeeds,
    the other is TICKET_INVALID, and the winner's password is the one stored."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    reset_ticket = await ticket(h)
    results = await asyncio.gather(
        reset(h, reset_ticket, new=NEW_PASSWORD),
        reset(h, reset_ticket, new=OTHER_NEW_PASSWORD),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(errors) == 1
    assert details_of(errors[0]).reason == "TICKET_INVALID"
    winner = NEW_PASSWORD if results[1] is errors[0] else OTHER_NEW_PASSWORD
    loser = OTHER_NEW_PASSWORD if winner == NEW_PASSWORD else NEW_PASSWORD
    assert (await login_with(h, LOGIN_NAME, winner)).account_id == account_id
    assert (await login_fails(h, LOGIN_NAME, loser)).reason == "INVALID_CREDENTIALS"
    assert await notices(h) == 1
