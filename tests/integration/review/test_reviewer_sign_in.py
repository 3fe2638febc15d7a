"""A reviewer signs in as a reviewer does: password, then the TOTP code (SECURITY D2, P5).

No session is made by hand here: the account enrols TOTP through EnrollTotp and
ConfirmTotp, signs in with Login (MFA_REQUIRED) and CompleteMfa, and the token
that comes out is the one ReviewService accepts; the password-only token of the
same account before enrolment is refused.
"""

from __future__ import annotations

import grpc
import pytest

from tests.integration.auth.test_totp_rpc import complete, enrolled_account, password_login
from tests.integration.conftest import Harness
from tests.integration.flows import LOGIN_NAME, PHONE, register
from tests.integration.review.steps import review_stub
from tests.rpc_errors import details_of
from xiaohe.identity.server.totp.codes import code_at
from xiaohe.identity.v1 import auth_pb2, review_pb2


def console(h: Harness, token: str) -> tuple[tuple[str, str], ...]:
    """The console's client credentials and the reviewer's token."""
    return (*h.metadata, ("authorization", f"Bearer {token}"))


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
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await review_stub(h).ListCases(
            review_pb2.ListCasesRequest(), metadata=console(h, signed_in.session.access_token)
        )
    d = details_of(caught.value)
    assert d.code == grpc.StatusCode.PERMISSION_DENIED
    assert "TOTP" in d.message
