"""The SDK's `deactivate` against the real server: typed errors, sessions end, sign-in cancels."""

from __future__ import annotations

import pytest

from tests.integration.accounts.channel_steps import OPEN_LIMITS, ticket
from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import LOGIN_NAME, PASSWORD, PHONE, register
from tests.integration.sdk.test_identity_client import client_for
from xiaohe.identity.client import TicketInvalid
from xiaohe.identity.v1 import common_pb2


async def test_the_sdk_deactivates_and_a_sign_in_cancels(harness_factory: HarnessFactory) -> None:
    """deactivate: a LOGIN ticket is TicketInvalid; a DEACTIVATE ticket ends the session and
    names the completion time; the next login says it cancelled the deactivation."""
    h: Harness = await harness_factory(**OPEN_LIMITS)
    await register(h, LOGIN_NAME, PHONE)
    async with client_for(h) as identity:
        token = (await identity.login_with_password(LOGIN_NAME, PASSWORD)).session.access_token
        with pytest.raises(TicketInvalid):
            await identity.deactivate(token, await ticket(h, PHONE, common_pb2.PURPOSE_LOGIN))
        answer = await identity.deactivate(
            token, await ticket(h, PHONE, common_pb2.PURPOSE_DEACTIVATE)
        )
        assert answer.sessions_ended == 1
        assert answer.completes_at.seconds == int(h.clock.now()) + 15 * 86400
        assert not (await identity.validate_token(token)).valid
        again = await identity.login_with_password(LOGIN_NAME, PASSWORD)
        assert again.deactivation_cancelled
