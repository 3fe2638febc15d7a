"""The SDK's TOTP methods against the real server: enrol, confirm, MFA login, disable (D3)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from tests.integration.conftest import Harness
from tests.integration.flows import LOGIN_NAME, PASSWORD, PHONE, register
from tests.integration.sdk.test_identity_client import client_for
from xiaohe.identity.client import FailedPrecondition, InvalidCredentials, TicketInvalid
from xiaohe.identity.server.totp.codes import code_at
from xiaohe.identity.v1 import auth_pb2


async def test_the_sdk_enrols_signs_in_with_a_second_factor_and_disables(h: Harness) -> None:
    """D3: enroll_totp → confirm_totp → login answers MFA_REQUIRED → complete_mfa (typed errors
    for a wrong code and a spent ticket) → validate_token(required_auth_methods) → disable_totp."""
    await register(h, LOGIN_NAME, PHONE)
    async with client_for(h) as identity:
        token = (await identity.login_with_password(LOGIN_NAME, PASSWORD)).session.access_token
        enrolment = await identity.enroll_totp(token, PASSWORD)
        secret = parse_qs(urlparse(enrolment.otpauth_uri).query)["secret"][0]
        recovery = await identity.confirm_totp(token, code_at(secret, h.clock.now()))
        assert len(recovery) == 10
        with pytest.raises(FailedPrecondition):
            await identity.enroll_totp(token, PASSWORD)
        h.clock.advance(30)

        challenged = await identity.login_with_password(LOGIN_NAME, PASSWORD)
        assert challenged.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
        with pytest.raises(InvalidCredentials):
            await identity.complete_mfa(challenged.mfa_ticket, totp_code="000000")
        with pytest.raises(ValueError, match="exactly one"):
            await identity.complete_mfa(challenged.mfa_ticket)
        done = await identity.complete_mfa(
            challenged.mfa_ticket, totp_code=code_at(secret, h.clock.now())
        )
        with pytest.raises(TicketInvalid):
            await identity.complete_mfa(challenged.mfa_ticket, recovery_code=recovery[0])
        checked = await identity.validate_token(
            done.session.access_token, required_auth_methods=["otp"]
        )
        assert checked.valid
        assert list(checked.auth_methods) == ["pwd", "otp"]
        assert not (await identity.validate_token(token, required_auth_methods=["otp"])).valid

        await identity.disable_totp(done.session.access_token, recovery_code=recovery[0])
        again = await identity.login_with_password(LOGIN_NAME, PASSWORD)
        assert again.next_step == auth_pb2.NEXT_STEP_NONE
