"""The SDK's follower against the real server's WatchRevocations (in process, real Redis)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.conftest import Harness
from tests.integration.flows import LOGIN_NAME, PHONE, login, register, stubs
from xiaohe.identity.client import IdentityClient, InvalidToken
from xiaohe.identity.v1 import auth_pb2


async def test_a_logout_is_refused_locally_within_a_second_and_the_session_alone(
    h: Harness,
) -> None:
    """T3: a business client with only `validate` follows the feed; logout shows in < 1 s."""
    credentials = dict(await h.client_metadata("validate"))
    await register(h, LOGIN_NAME, PHONE)
    leaving, staying = await login(h, LOGIN_NAME), await login(h, LOGIN_NAME)
    async with IdentityClient(
        f"127.0.0.1:{h.running.port}",
        client_id=credentials["x-client-id"],
        client_secret=credentials["x-client-secret"],
        channel=h.channel,
    ) as business:
        verifier = business.token_verifier("xiaohe-platform", clock=h.clock.now)
        follower = asyncio.create_task(verifier.follow_revocations(business))
        try:
            assert verifier.revocations is not None
            await asyncio.wait_for(verifier.revocations.ready.wait(), 5)
            assert verifier.revocations.cursor
            assert (await verifier.verify(leaving.access_token)).sid

            await stubs(h).auth.Logout(
                auth_pb2.LogoutRequest(refresh_token=leaving.refresh_token), metadata=h.metadata
            )
            logged_out = time.monotonic()
            while verifier.revocations.is_revoked(leaving.session_id) is False:
                assert time.monotonic() - logged_out < 1.0, "still accepted after a second"
                await asyncio.sleep(0.01)
            with pytest.raises(InvalidToken) as refused:
                verifier.verify_cached_keys(leaving.access_token)
            assert refused.value.reason == "revoked"
            assert (await verifier.verify(staying.access_token)).sid != leaving.session_id
        finally:
            follower.cancel()
            with pytest.raises(asyncio.CancelledError):
                await follower
