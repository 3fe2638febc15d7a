"""A reviewer signs in as a reviewer does: password, then the TOTP code (SECURITY D2, P5).

An operator's password is at least 12 characters (P5): a role holder's shorter one
is refused at sign-in and as a new password, and a role is usable only from a
sign-in made after it was granted.

No session is made by hand here: the account enrols TOTP through EnrollTotp and
ConfirmTotp, signs in with Login (MFA_REQUIRED) and CompleteMfa, and the token
that comes out is the one ReviewService accepts; the password-only token of the
same account before enrolment is refused.
"""

from __future__ import annotations

import grpc
import pytest

from tests.integration.auth.test_totp_rpc import (
    STEP,
    bearer,
    complete,
    enrolled_account,
    password_login,
)
from tests.integration.conftest import Harness
from tests.integration.flows import LOGIN_NAME, PASSWORD, PHONE, code_ticket, register, stubs
from tests.integration.review.steps import review_stub
from tests.rpc_errors import details_of
from xiaohe.identity.server.totp.codes import code_at
from xiaohe.identity.v1 import accounts_pb2, auth_pb2, common_pb2, review_pb2

SHORT = "Cha-Hua-9x"
"""Ten characters: enough for anyone (8), too short for an operator (12, P5)."""
ALSO_SHORT = "Cha-Hua-9y-"
LONG_ENOUGH = "Cha-Hua-Shan-Shui-9"


def console(h: Harness, token: str) -> tuple[tuple[str, str], ...]:
    """The console's client credentials and the reviewer's token."""
    return (*h.metadata, ("authorization", f"Bearer {token}"))


async def refused(h: Harness, token: str) -> str:
    """The message of the PERMISSION_DENIED that ListCases answers with `token`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await review_stub(h).ListCases(review_pb2.ListCasesRequest(), metadata=console(h, token))
    d = details_of(caught.value)
    assert d.code == grpc.StatusCode.PERMISSION_DENIED
    return d.message


async def test_a_password_and_totp_sign_in_opens_the_queue(h: Harness) -> None:
    """P5, D2: only the token of a password + TOTP sign-in of an account with the role works."""
    account_id, secret, _ = await enrolled_account(h)
    await h.container.operator_roles.grant(account_id, "review")
    challenged = await password_login(h)
    assert challenged.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
    done = await complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now()))
    listed = await review_stub(h).ListCases(
        review_pb2.ListCasesRequest(), metadata=console(h, done.session.access_token)
    )
    assert listed.cases == []
    assert listed.sla_seconds == 48 * 3600


async def test_a_password_only_token_is_refused(h: Harness) -> None:
    """P5: an account with the role but signed in by password alone (no TOTP yet) is refused,
    with a message that says why."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    await h.container.operator_roles.grant(account_id, "review")
    signed_in = await password_login(h)
    assert signed_in.next_step == auth_pb2.NEXT_STEP_NONE
    assert "TOTP" in await refused(h, signed_in.session.access_token)


async def signed_in(h: Harness, secret: str, password: str) -> auth_pb2.Session:
    """Password then TOTP; the session (the clock moves on a step, so each code is fresh)."""
    challenged = await password_login(h, password)
    assert challenged.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
    done = await complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now()))
    h.clock.advance(STEP)
    return done.session


async def change_password(h: Harness, session: auth_pb2.Session, current: str, new: str) -> None:
    """ChangePassword from `session`, keeping the account's other sessions."""
    await stubs(h).accounts.ChangePassword(
        accounts_pb2.ChangePasswordRequest(
            current_password=current, new_password=new, keep_other_sessions=True
        ),
        metadata=bearer(h, session.access_token),
    )


async def enrolled_with_a_short_password(
    h: Harness,
) -> tuple[str, str, auth_pb2.Session, list[str]]:
    """An account with TOTP and no role, whose password is now SHORT: (account id, TOTP
    secret, the session that changed it, recovery codes)."""
    account_id, secret, recovery_codes = await enrolled_account(h)
    session = await signed_in(h, secret, PASSWORD)
    await change_password(h, session, PASSWORD, SHORT)
    return account_id, secret, session, recovery_codes


async def test_an_operators_password_is_at_least_12_characters(h: Harness) -> None:
    """P5: a ten-character password is fine until the account holds a role. Then the right
    password is FAILED_PRECONDITION at sign-in (audited), ChangePassword and ResetPassword
    refuse a new one under 12 characters on `new_password` (a reset only once its proof is
    complete: the ticket is spent), and the session begun before the grant cannot use the
    role, refreshed or not; after a reset to a longer password the operator signs in and
    reviews."""
    account_id, secret, _, _ = await enrolled_with_a_short_password(h)
    before_grant = await signed_in(h, secret, SHORT)  # not an operator yet: accepted
    h.clock.advance(STEP)
    await h.container.operator_roles.grant(account_id, "review")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await password_login(h, SHORT)
    too_short = details_of(caught.value)
    assert too_short.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "12 characters" in too_short.message
    logins = await h.container.audit.query(action="auth.login.password")
    assert logins[-1].outcome == "operator_password_too_short"

    refreshed = await stubs(h).auth.Refresh(
        auth_pb2.RefreshRequest(refresh_token=before_grant.refresh_token), metadata=h.metadata
    )
    for token in (before_grant.access_token, refreshed.session.access_token):
        assert "sign in again" in await refused(h, token)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs(h).accounts.ChangePassword(
            accounts_pb2.ChangePasswordRequest(current_password=SHORT, new_password=ALSO_SHORT),
            metadata=bearer(h, before_grant.access_token),
        )
    changed = details_of(caught.value)
    assert changed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(changed.violations) == ["new_password"]

    ticket = await code_ticket(h, PHONE, common_pb2.PURPOSE_RESET_PASSWORD)
    reset = accounts_pb2.ResetPasswordRequest(
        identifier=LOGIN_NAME, ticket=ticket, new_password=ALSO_SHORT
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs(h).accounts.ResetPassword(reset, metadata=h.metadata)
    weak = details_of(caught.value)
    assert weak.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(weak.violations) == ["new_password"]
    h.clock.advance(61)  # the phone's resend cooldown
    reset.ticket = await code_ticket(h, PHONE, common_pb2.PURPOSE_RESET_PASSWORD)
    reset.new_password = LONG_ENOUGH
    await stubs(h).accounts.ResetPassword(reset, metadata=h.metadata)

    after = await signed_in(h, secret, LONG_ENOUGH)
    listed = await review_stub(h).ListCases(
        review_pb2.ListCasesRequest(), metadata=console(h, after.access_token)
    )
    assert listed.cases == []


async def test_a_role_granted_between_the_password_and_the_code_meets_the_length_rule(
    h: Harness,
) -> None:
    """P5: a role granted while a sign-in waits for its TOTP code. The password step passed
    (no role yet); the code step refuses a password under 12 characters with
    FAILED_PRECONDITION, audited, before the code is checked (a recovery code is not spent),
    and makes no session. The same race with a long enough password ends in a session that
    reviews."""
    account_id, secret, session, recovery_codes = await enrolled_with_a_short_password(h)
    challenged = await password_login(h, SHORT)
    assert challenged.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
    sessions_before = await h.container.sessions.list_sessions(account_id)
    codes_before = await h.container.totp.recovery_codes_left(account_id)
    await h.container.operator_roles.grant(account_id, "review")
    for second_factor in (
        {"totp_code": code_at(secret, h.clock.now())},
        {"recovery_code": recovery_codes[0]},
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await complete(h, challenged.mfa_ticket, **second_factor)
        too_short = details_of(caught.value)
        assert too_short.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "12 characters" in too_short.message
    completions = await h.container.audit.query(action="auth.login.mfa")
    assert completions[-1].outcome == "operator_password_too_short"
    assert await h.container.sessions.list_sessions(account_id) == sessions_before
    assert await h.container.totp.recovery_codes_left(account_id) == codes_before  # none spent

    h.clock.advance(STEP)
    await change_password(h, session, SHORT, LONG_ENOUGH)
    await h.container.operator_roles.revoke(account_id, "review")
    challenged = await password_login(h, LONG_ENOUGH)
    await h.container.operator_roles.grant(account_id, "review")
    done = await complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now()))
    listed = await review_stub(h).ListCases(
        review_pb2.ListCasesRequest(), metadata=console(h, done.session.access_token)
    )
    assert listed.cases == []


async def test_accounts_without_a_role_keep_the_general_rule(h: Harness) -> None:
    """P5 binds operators only: an account that holds no role signs in with a ten-character
    password and sets another one."""
    await register(h, LOGIN_NAME, PHONE)
    first = await password_login(h)
    await stubs(h).accounts.ChangePassword(
        accounts_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=SHORT),
        metadata=bearer(h, first.session.access_token),
    )
    again = await password_login(h, SHORT)
    assert again.next_step == auth_pb2.NEXT_STEP_NONE
    await stubs(h).accounts.ChangePassword(
        accounts_pb2.ChangePasswordRequest(current_password=SHORT, new_password=ALSO_SHORT),
        metadata=bearer(h, again.session.access_token),
    )


async def test_an_sms_code_and_totp_sign_in_does_not_review(h: Harness) -> None:
    """P5: the password's length is checked at a password sign-in, so a role holder signed in
    by SMS code and TOTP (amr sms, otp) is refused, with a message naming the methods."""
    account_id, secret, _ = await enrolled_account(h)
    await h.container.operator_roles.grant(account_id, "review")
    h.clock.advance(61)  # the phone's resend cooldown since the registration code
    sms_ticket = await code_ticket(h, PHONE, common_pb2.PURPOSE_LOGIN)
    challenged = await stubs(h).auth.Login(
        auth_pb2.LoginRequest(sms_ticket=sms_ticket), metadata=h.metadata
    )
    assert challenged.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
    done = await complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now()))
    assert "password and TOTP" in await refused(h, done.session.access_token)
