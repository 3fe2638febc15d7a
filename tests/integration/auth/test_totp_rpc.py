"""The TOTP second factor over real gRPC (SECURITY D3, B1, B2; issue 12 §4).

Everything runs through the in-process server on SQLite and the embedded Redis:
the secret is read from the otpauth URI EnrollTotp returns, and the codes are
computed from it at the harness's fake clock, as an authenticator app would.
"""

from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import parse_qs, unquote, urlparse

import grpc
import pytest
import sqlalchemy as sa

from tests.contract.faults import failing_writes
from tests.integration.conftest import Harness, wait_for_outbox
from tests.integration.flows import LOGIN_NAME, PASSWORD, PHONE, code_ticket, register, stubs
from tests.rpc_errors import Details, details_of
from xiaohe.identity.server.storage.schema import totp_factors, totp_recovery_codes
from xiaohe.identity.server.totp.codes import code_at
from xiaohe.identity.v1 import accounts_pb2, auth_pb2, common_pb2

STEP = 30
NEW_PASSWORD = "Yunshan-Changjiang-2027"


def bearer(h: Harness, token: str) -> tuple[tuple[str, str], ...]:
    """The client credentials plus `authorization: Bearer <token>`."""
    return (*h.metadata, ("authorization", f"Bearer {token}"))


async def failure(call: object) -> Details:
    """The details of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return details_of(caught.value)


async def password_login(
    h: Harness, password: str = PASSWORD, metadata: tuple[tuple[str, str], ...] | None = None
) -> auth_pb2.LoginResponse:
    """Login by LOGIN_NAME and `password`, whatever the next step."""
    return await stubs(h).auth.Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=LOGIN_NAME, password=password)
        ),
        metadata=metadata or h.metadata,
    )


async def complete(
    h: Harness,
    ticket: str,
    totp_code: str = "",
    recovery_code: str = "",
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> auth_pb2.CompleteMfaResponse:
    """CompleteMfa with a TOTP code or a recovery code."""
    request = auth_pb2.CompleteMfaRequest(mfa_ticket=ticket)
    if totp_code:
        request.totp_code = totp_code
    if recovery_code:
        request.recovery_code = recovery_code
    return await stubs(h).auth.CompleteMfa(request, metadata=metadata or h.metadata)


async def enroll(h: Harness, token: str) -> tuple[str, accounts_pb2.EnrollTotpResponse]:
    """EnrollTotp; returns the secret read from the otpauth URI, and the answer."""
    answer = await stubs(h).accounts.EnrollTotp(
        accounts_pb2.EnrollTotpRequest(password=PASSWORD), metadata=bearer(h, token)
    )
    return parse_qs(urlparse(answer.otpauth_uri).query)["secret"][0], answer


async def enrolled_account(h: Harness) -> tuple[str, str, list[str]]:
    """Register, sign in, enrol and confirm: (account id, secret, recovery codes)."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    first = await password_login(h)
    secret, _ = await enroll(h, first.session.access_token)
    confirmed = await stubs(h).accounts.ConfirmTotp(
        accounts_pb2.ConfirmTotpRequest(code=code_at(secret, h.clock.now())),
        metadata=bearer(h, first.session.access_token),
    )
    h.clock.advance(STEP)  # the confirming code's step is spent; the next one is fresh
    return account_id, secret, list(confirmed.recovery_codes)


async def auth_methods(h: Harness, token: str, *required: str) -> tuple[bool, list[str]]:
    """What ValidateToken says of a token (with `required_auth_methods`)."""
    answer = await stubs(h).auth.ValidateToken(
        auth_pb2.ValidateTokenRequest(access_token=token, required_auth_methods=list(required)),
        metadata=h.metadata,
    )
    return answer.valid, list(answer.auth_methods)


async def test_enroll_confirm_then_login_needs_the_code(h: Harness) -> None:
    """D3: enrol (URI, QR, secret sealed at rest) → confirm (ten recovery codes) → Login answers
    MFA_REQUIRED without a session → CompleteMfa gives the session with amr pwd + otp, which
    Refresh keeps and `required_auth_methods` checks."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    first = await password_login(h)
    assert first.next_step == auth_pb2.NEXT_STEP_NONE
    secret, answer = await enroll(h, first.session.access_token)
    uri = urlparse(answer.otpauth_uri)
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert unquote(uri.path) == f"/小禾企服网:{LOGIN_NAME}"
    assert parse_qs(uri.query)["issuer"] == ["小禾企服网"]
    assert answer.qr_png.startswith(b"\x89PNG\r\n\x1a\n")
    async with h.container.database.connect() as conn:
        row = (await conn.execute(sa.select(totp_factors))).one()
    assert row.status == "pending"
    assert secret.encode() not in bytes(row.secret_enc)
    stored = list(h.data_dir.glob("identity.db*"))  # the database file and its WAL
    assert stored
    assert all(secret.encode() not in f.read_bytes() for f in stored)
    # Pending is not active: the login still needs no code.
    assert (await password_login(h)).next_step == auth_pb2.NEXT_STEP_NONE
    assert not await h.container.totp.is_enrolled(account_id)

    confirmed = await stubs(h).accounts.ConfirmTotp(
        accounts_pb2.ConfirmTotpRequest(code=code_at(secret, h.clock.now())),
        metadata=bearer(h, first.session.access_token),
    )
    assert len(confirmed.recovery_codes) == 10
    assert len(set(confirmed.recovery_codes)) == 10
    assert await h.container.totp.is_enrolled(account_id)
    async with h.container.database.connect() as conn:
        hashes = [r.code_hash for r in await conn.execute(sa.select(totp_recovery_codes))]
    assert len(hashes) == 10
    assert not set(confirmed.recovery_codes) & set(hashes)

    h.clock.advance(STEP)
    challenged = await password_login(h)
    assert challenged.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
    assert not challenged.HasField("session")
    assert challenged.mfa_ticket.startswith("mt1.")
    assert challenged.mfa_ticket_expires_in_seconds == 300
    done = await complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now()))
    assert done.next_step == auth_pb2.NEXT_STEP_NONE
    assert done.session.account_id == account_id
    assert await auth_methods(h, done.session.access_token, "otp") == (True, ["pwd", "otp"])
    # A session signed in with the password alone does not satisfy a demand for "otp".
    valid, methods = await auth_methods(h, first.session.access_token, "otp")
    assert (valid, methods) == (False, [])
    assert (await auth_methods(h, first.session.access_token))[0]
    refreshed = await stubs(h).auth.Refresh(
        auth_pb2.RefreshRequest(refresh_token=done.session.refresh_token), metadata=h.metadata
    )
    assert await auth_methods(h, refreshed.session.access_token, "pwd", "otp") == (
        True,
        ["pwd", "otp"],
    )
    # The ticket made one session; it is gone.
    d = await failure(complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now() + STEP)))
    assert (d.reason, list(d.violations)) == ("TICKET_INVALID", ["mfa_ticket"])


async def test_a_replayed_code_is_refused(h: Harness) -> None:
    """D3: a TOTP code is accepted once within its window: the code that completed one login
    (or confirmed the factor) does not complete another, even inside its ±1 step drift."""
    _, secret, _ = await enrolled_account(h)
    code = code_at(secret, h.clock.now())
    first = await password_login(h)
    await complete(h, first.mfa_ticket, code)
    second = await password_login(h)
    d = await failure(complete(h, second.mfa_ticket, code))
    assert (d.code, d.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    # An older step's code is refused too once a newer one was used; the next step works.
    earlier = code_at(secret, h.clock.now() - STEP)
    assert (await failure(complete(h, second.mfa_ticket, earlier))).reason == (
        "INVALID_CREDENTIALS"
    )
    h.clock.advance(STEP)
    done = await complete(h, second.mfa_ticket, code_at(secret, h.clock.now()))
    assert done.session.access_token


async def test_two_identical_presentations_at_once_make_one_session(h: Harness) -> None:
    """D3: under concurrency exactly one of two presentations of one code wins."""
    _, secret, _ = await enrolled_account(h)
    tickets = [(await password_login(h)).mfa_ticket for _ in range(2)]
    code = code_at(secret, h.clock.now())
    results = await asyncio.gather(*(complete(h, t, code) for t in tickets), return_exceptions=True)
    sessions = [r for r in results if isinstance(r, auth_pb2.CompleteMfaResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(sessions) == 1
    assert [details_of(r).reason for r in refused] == ["INVALID_CREDENTIALS"]


async def test_a_recovery_code_works_once(h: Harness) -> None:
    """D3: a recovery code replaces a TOTP code once (typed with any case and spacing); amr
    still shows the second factor."""
    _, _, recovery = await enrolled_account(h)
    first = await password_login(h)
    done = await complete(h, first.mfa_ticket, recovery_code=recovery[3].upper())
    assert await auth_methods(h, done.session.access_token) == (True, ["pwd", "otp"])
    second = await password_login(h)
    d = await failure(complete(h, second.mfa_ticket, recovery_code=recovery[3]))
    assert d.reason == "INVALID_CREDENTIALS"
    spaced = recovery[4].replace("-", " ")
    assert (await complete(h, second.mfa_ticket, recovery_code=spaced)).session.access_token
    assert await h.container.totp.recovery_codes_left(done.session.account_id) == 8


async def test_ten_wrong_codes_lock_like_ten_wrong_passwords(h: Harness) -> None:
    """D3, B2: wrong TOTP codes count toward the password lock: after ten, the right password
    and the right code are both refused from that address, exactly as after ten wrong
    passwords; the lock is temporary, and a right password alone does not clear the count."""
    _, secret, _ = await enrolled_account(h)
    wrong = f"{(int(code_at(secret, h.clock.now())) + 1) % 1_000_000:06d}"
    spare = (await password_login(h)).mfa_ticket
    for i in range(9):
        if i % 4 == 0:  # a ticket takes a few presentations; a right password gives another
            ticket = (await password_login(h)).mfa_ticket
        assert (await failure(complete(h, ticket, wrong))).reason == "INVALID_CREDENTIALS"
    # Nine failures and a right password in between: still counted (not cleared).
    d = await failure(complete(h, (await password_login(h)).mfa_ticket, wrong))
    assert d.reason == "INVALID_CREDENTIALS"
    locked = await failure(password_login(h))
    assert (locked.code, locked.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    right = await failure(complete(h, spare, code_at(secret, h.clock.now())))
    assert (right.code, right.reason, right.message) == (
        d.code,
        d.reason,
        d.message,
    )
    h.clock.advance(61)  # the first lock lasts lock_base_seconds (60 s)
    again = await password_login(h)
    assert again.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
    done = await complete(h, again.mfa_ticket, code_at(secret, h.clock.now()))
    assert done.session.access_token


async def test_ten_wrong_passwords_lock_the_same_way(h: Harness) -> None:
    """B2 (the comparison for the test above): ten wrong passwords refuse the right one."""
    await register(h, LOGIN_NAME, PHONE)
    for _ in range(10):
        assert (await failure(password_login(h, "Wrong-Password-1"))).reason == (
            "INVALID_CREDENTIALS"
        )
    assert (await failure(password_login(h))).reason == "INVALID_CREDENTIALS"


async def test_a_locked_account_with_totp_still_signs_in_by_sms(h: Harness) -> None:
    """B2, D3: after ten wrong passwords the password is refused, but an SMS login and the
    right TOTP code still sign in (a lock must not shut the owner out); wrong codes after
    an SMS login are still refused and the ticket's presentations are bounded."""
    _, secret, _ = await enrolled_account(h)
    h.clock.advance(STEP)
    for _ in range(10):
        await failure(password_login(h, "Wrong-Password-1"))
    assert (await failure(password_login(h))).reason == "INVALID_CREDENTIALS"
    sms_ticket = await code_ticket(h, PHONE, common_pb2.PURPOSE_LOGIN)
    challenged = await stubs(h).auth.Login(
        auth_pb2.LoginRequest(sms_ticket=sms_ticket), metadata=h.metadata
    )
    assert challenged.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
    wrong = f"{(int(code_at(secret, h.clock.now())) + 1) % 1_000_000:06d}"
    assert (await failure(complete(h, challenged.mfa_ticket, wrong))).reason == (
        "INVALID_CREDENTIALS"
    )
    done = await complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now()))
    assert await auth_methods(h, done.session.access_token) == (True, ["sms", "otp"])


async def test_an_operator_cannot_remove_the_second_factor(h: Harness) -> None:
    """P5, D2: while the account holds the review role, DisableTotp with a right code is
    FAILED_PRECONDITION and the factor stays; once the role is revoked it works."""
    account_id, secret, _ = await enrolled_account(h)
    await h.container.operator_roles.grant(account_id, "review")
    challenged = await password_login(h)
    token = (await complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now()))).session
    h.clock.advance(STEP)
    d = await failure(
        stubs(h).accounts.DisableTotp(
            accounts_pb2.DisableTotpRequest(totp_code=code_at(secret, h.clock.now())),
            metadata=bearer(h, token.access_token),
        )
    )
    assert d.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "operator role" in d.message
    assert await h.container.totp.is_enrolled(account_id)
    await h.container.operator_roles.revoke(account_id, "review")
    await stubs(h).accounts.DisableTotp(
        accounts_pb2.DisableTotpRequest(totp_code=code_at(secret, h.clock.now())),
        metadata=bearer(h, token.access_token),
    )
    assert not await h.container.totp.is_enrolled(account_id)


async def test_a_password_reset_keeps_the_second_factor(h: Harness) -> None:
    """D3: ResetPassword sets a new password but leaves TOTP on: the next login still
    answers MFA_REQUIRED."""
    account_id, secret, _ = await enrolled_account(h)
    h.clock.advance(61)
    reset_ticket = await code_ticket(h, PHONE, common_pb2.PURPOSE_RESET_PASSWORD)
    await stubs(h).accounts.ResetPassword(
        accounts_pb2.ResetPasswordRequest(
            identifier=LOGIN_NAME, ticket=reset_ticket, new_password=NEW_PASSWORD, real_name="张伟"
        ),
        metadata=h.metadata,
    )
    assert await h.container.totp.is_enrolled(account_id)
    challenged = await password_login(h, NEW_PASSWORD)
    assert challenged.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
    done = await complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now()))
    assert done.session.account_id == account_id


async def test_sms_login_then_totp_gives_sms_and_otp(h: Harness) -> None:
    """D3: a login by SMS ticket also needs the second factor; amr is sms + otp."""
    _, secret, _ = await enrolled_account(h)
    h.clock.advance(61)
    sms_ticket = await code_ticket(h, PHONE, common_pb2.PURPOSE_LOGIN)
    challenged = await stubs(h).auth.Login(
        auth_pb2.LoginRequest(sms_ticket=sms_ticket), metadata=h.metadata
    )
    assert challenged.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
    assert not challenged.HasField("session")
    done = await complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now()))
    assert await auth_methods(h, done.session.access_token, "sms", "otp") == (
        True,
        ["sms", "otp"],
    )


async def test_the_ticket_is_bound_to_its_client(h: Harness) -> None:
    """C5: an MFA ticket works only for the client that logged in, and malformed requests
    are INVALID_ARGUMENT on the right field."""
    _, secret, _ = await enrolled_account(h)
    ticket = (await password_login(h)).mfa_ticket
    other = await h.client_metadata("auth")
    d = await failure(complete(h, ticket, code_at(secret, h.clock.now()), metadata=other))
    assert (d.reason, list(d.violations)) == ("TICKET_INVALID", ["mfa_ticket"])
    d = await failure(complete(h, ticket, "12345"))
    assert (d.code, list(d.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["totp_code"])
    d = await failure(complete(h, ticket))
    assert (d.code, list(d.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["factor"])
    d = await failure(complete(h, "", code_at(secret, h.clock.now())))
    assert list(d.violations) == ["mfa_ticket"]
    assert (await complete(h, ticket, code_at(secret, h.clock.now()))).session.access_token


async def test_enroll_rules_and_disable(h: Harness) -> None:
    """D3, H2: enrolment needs the password (a wrong one is a failed login); a second enrolment
    replaces the pending secret; enrolling while active is FAILED_PRECONDITION; DisableTotp
    needs a right code, removes the factor and its recovery codes, and notifies the phone."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    token = (await password_login(h)).session.access_token
    d = await failure(
        stubs(h).accounts.ConfirmTotp(
            accounts_pb2.ConfirmTotpRequest(code="123456"), metadata=bearer(h, token)
        )
    )
    assert d.code == grpc.StatusCode.FAILED_PRECONDITION  # nothing to confirm yet
    d = await failure(
        stubs(h).accounts.EnrollTotp(
            accounts_pb2.EnrollTotpRequest(password="Wrong-Password-1"), metadata=bearer(h, token)
        )
    )
    assert d.reason == "INVALID_CREDENTIALS"
    d = await failure(
        stubs(h).accounts.EnrollTotp(accounts_pb2.EnrollTotpRequest(), metadata=h.metadata)
    )
    assert d.code == grpc.StatusCode.UNAUTHENTICATED  # no access token
    old_secret, _ = await enroll(h, token)
    new_secret, _ = await enroll(h, token)
    assert old_secret != new_secret
    d = await failure(
        stubs(h).accounts.ConfirmTotp(
            accounts_pb2.ConfirmTotpRequest(code=code_at(old_secret, h.clock.now())),
            metadata=bearer(h, token),
        )
    )
    assert d.reason == "INVALID_CREDENTIALS"
    await stubs(h).accounts.ConfirmTotp(
        accounts_pb2.ConfirmTotpRequest(code=code_at(new_secret, h.clock.now())),
        metadata=bearer(h, token),
    )
    d = await failure(
        stubs(h).accounts.EnrollTotp(
            accounts_pb2.EnrollTotpRequest(password=PASSWORD), metadata=bearer(h, token)
        )
    )
    assert d.code == grpc.StatusCode.FAILED_PRECONDITION
    d = await failure(
        stubs(h).accounts.DisableTotp(
            accounts_pb2.DisableTotpRequest(totp_code="000000"), metadata=bearer(h, token)
        )
    )
    assert d.reason == "INVALID_CREDENTIALS"
    assert await h.container.totp.is_enrolled(account_id)
    h.clock.advance(STEP)
    await stubs(h).accounts.DisableTotp(
        accounts_pb2.DisableTotpRequest(totp_code=code_at(new_secret, h.clock.now())),
        metadata=bearer(h, token),
    )
    assert not await h.container.totp.is_enrolled(account_id)
    assert await h.container.totp.recovery_codes_left(account_id) == 0
    assert (await password_login(h)).next_step == auth_pb2.NEXT_STEP_NONE
    lines = await wait_for_outbox(h, 3, "sms")  # register code, two notices
    notices = [m for m in lines if m["purpose"] == "NOTICE"]
    assert [("两步验证" in m["text"], m["to"]) for m in notices] == [(True, PHONE)] * 2
    d = await failure(
        stubs(h).accounts.DisableTotp(
            accounts_pb2.DisableTotpRequest(totp_code="000000"), metadata=bearer(h, token)
        )
    )
    assert d.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_confirm_is_all_or_nothing(h: Harness) -> None:
    """D3: confirming writes the factor, its recovery codes, the notice and the audit record in
    one transaction: when the notice cannot be queued, the factor stays pending, no recovery
    code is stored, and the next try succeeds."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    token = (await password_login(h)).session.access_token
    secret, _ = await enroll(h, token)
    confirm = accounts_pb2.ConfirmTotpRequest(code=code_at(secret, h.clock.now()))
    async with failing_writes(h.container.database, "outbox"):
        with pytest.raises(grpc.aio.AioRpcError):
            await stubs(h).accounts.ConfirmTotp(confirm, metadata=bearer(h, token))
    assert not await h.container.totp.is_enrolled(account_id)
    assert await h.container.totp.recovery_codes_left(account_id) == 0
    confirmed = await stubs(h).accounts.ConfirmTotp(confirm, metadata=bearer(h, token))
    assert len(confirmed.recovery_codes) == 10
    assert await h.container.totp.recovery_codes_left(account_id) == 10


async def test_disable_is_all_or_nothing(h: Harness) -> None:
    """D3: disabling spends the code, removes the factor and its recovery codes, queues the
    notice and audits in one transaction: when the notice cannot be queued, TOTP
    stays on with every recovery code, and the same recovery code still works after."""
    account_id, _, recovery = await enrolled_account(h)
    token = await complete(h, (await password_login(h)).mfa_ticket, recovery_code=recovery[0])
    bearer_md = bearer(h, token.session.access_token)
    disable = accounts_pb2.DisableTotpRequest(recovery_code=recovery[1])
    async with failing_writes(h.container.database, "outbox"):
        with pytest.raises(grpc.aio.AioRpcError):
            await stubs(h).accounts.DisableTotp(disable, metadata=bearer_md)
    assert await h.container.totp.is_enrolled(account_id)
    assert await h.container.totp.recovery_codes_left(account_id) == 9
    await stubs(h).accounts.DisableTotp(disable, metadata=bearer_md)
    assert not await h.container.totp.is_enrolled(account_id)


async def test_secrets_codes_and_tickets_never_reach_the_logs(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """C4, D3: the secret, the codes, the recovery codes and the MFA ticket appear in no log
    record, at any level, through enrolment, a wrong and a right code, and disabling."""
    caplog.set_level(logging.DEBUG)
    _, secret, recovery = await enrolled_account(h)
    ticket = (await password_login(h)).mfa_ticket
    code = code_at(secret, h.clock.now())
    await failure(complete(h, ticket, "000000"))
    done = await complete(h, ticket, code)
    await stubs(h).accounts.DisableTotp(
        accounts_pb2.DisableTotpRequest(recovery_code=recovery[0]),
        metadata=bearer(h, done.session.access_token),
    )
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__}" for r in caplog.records)
    assert caplog.records  # the server did log (access log, audit)
    for value in (secret, ticket, ticket.removeprefix("mt1."), *recovery, PASSWORD):
        assert value not in logged
    # Six digits could sit inside a timestamp or an id by chance: only a standalone one counts.
    assert re.search(rf"(?<![0-9]){code}(?![0-9])", logged) is None
