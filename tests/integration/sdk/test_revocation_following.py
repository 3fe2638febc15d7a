"""TokenVerifier following WatchRevocations over a real grpc.aio channel (issue 13 §2, SDK part).

The server side is `ScriptedFeed`, a servicer of the stream's contract; the real
server's feed is exercised end to end in tests/e2e/test_business_service.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from nacl.signing import SigningKey

from tests.integration.sdk.feed_server import ScriptedFeed, start_feed_server
from xiaohe.identity.client import IdentityClient, InvalidToken, PermissionDenied, TokenVerifier
from xiaohe.identity.client.revocations import Revocations
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.tokens.jwt import encode_eddsa, jwk_from_public_key
from xiaohe.identity.v1 import directory_pb2

AUDIENCE = "biz.workbench"
SEED = bytes(range(32))
CLIENT_ID = "cli_feedtest"


async def _jwks() -> str:
    return json.dumps({"keys": [jwk_from_public_key("k1", bytes(SigningKey(SEED).verify_key))]})


def token(clock: FakeClock, sid: str = "ses_1", iat: float | None = None) -> str:
    issued = int(clock.now() if iat is None else iat)
    claims: dict[str, Any] = {
        "iss": "https://id.xiaohe.test",
        "sub": "acc_1",
        "sid": sid,
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + 600,
        "amr": ["pwd"],
        "subject_type": "natural_person",
        "rn_level": 1,
    }
    return encode_eddsa(claims, "k1", SEED)


@pytest.fixture
async def feed(clock: FakeClock) -> AsyncIterator[tuple[ScriptedFeed, IdentityClient]]:
    scripted = ScriptedFeed(clock.now)
    server, port = await start_feed_server(scripted)
    client = IdentityClient(f"127.0.0.1:{port}", client_id=CLIENT_ID, client_secret="s3cret")
    yield scripted, client
    scripted.end_streams()
    await client.close()
    await server.stop(None)


async def until(predicate: Any, limit: float = 5.0) -> float:
    """Poll `predicate` until true; the seconds it took (fails after `limit`)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > limit:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def refusal(verifier: TokenVerifier, jwt: str) -> str | None:
    """The InvalidToken reason `verify_cached_keys` gives, or None when the token verifies."""
    try:
        verifier.verify_cached_keys(jwt)
    except InvalidToken as exc:
        return exc.reason
    return None


async def following(
    verifier: TokenVerifier, client: IdentityClient, **kwargs: Any
) -> asyncio.Task[None]:
    task = asyncio.create_task(verifier.follow_revocations(client, **kwargs))
    await verifier.refresh_keys()
    assert verifier.revocations is not None
    await asyncio.wait_for(verifier.revocations.ready.wait(), 5)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_revoked_session_is_refused_within_a_second_and_others_are_not(
    clock: FakeClock, feed: tuple[ScriptedFeed, IdentityClient]
) -> None:
    """T3: a revoked session's token is refused locally within one second; others pass."""
    scripted, client = feed
    verifier = TokenVerifier(_jwks, audience=AUDIENCE, clock=clock.now)
    task = await following(verifier, client)
    mine, other = token(clock), token(clock, sid="ses_2")
    assert (await verifier.verify(mine)).sid == "ses_1"  # cached from here on

    scripted.revoke("ses_1")
    took = await until(lambda: refusal(verifier, mine) == "revoked")
    assert took < 1.0
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(mine)
    assert refused.value.reason == "revoked"
    assert refusal(verifier, other) is None
    assert verifier.revocations is not None
    assert verifier.revocations.cursor == "c1"
    # The stream carried the client's credentials, as every call of the SDK does.
    assert scripted.connections[0].metadata["x-client-id"] == CLIENT_ID
    assert scripted.connections[0].since_cursor == ""
    await stop(task)


async def test_reconnects_with_its_last_cursor_and_gets_what_it_missed(
    clock: FakeClock, feed: tuple[ScriptedFeed, IdentityClient]
) -> None:
    scripted, client = feed
    verifier = TokenVerifier(_jwks, audience=AUDIENCE, clock=clock.now)
    task = await following(verifier, client)
    scripted.revoke("ses_1")
    await until(lambda: verifier.revocations is not None and verifier.revocations.cursor == "c1")

    scripted.end_streams("fail")  # the server stops: UNAVAILABLE
    scripted.revoke("ses_2")  # announced while the follower is away
    await until(lambda: len(scripted.connections) == 2)
    assert scripted.connections[1].since_cursor == "c1"
    await until(lambda: refusal(verifier, token(clock, sid="ses_2")) == "revoked")
    assert refusal(verifier, token(clock, sid="ses_1")) == "revoked"
    assert refusal(verifier, token(clock, sid="ses_3")) is None
    await stop(task)


async def test_resync_refuses_tokens_issued_before_the_feed_was_whole_again(
    clock: FakeClock, feed: tuple[ScriptedFeed, IdentityClient]
) -> None:
    """Events beyond the retention window are lost: older tokens must be refreshed."""
    scripted, client = feed
    verifier = TokenVerifier(_jwks, audience=AUDIENCE, clock=clock.now)
    task = await following(verifier, client)
    scripted.revoke("ses_1")
    await until(lambda: verifier.revocations is not None and verifier.revocations.cursor == "c1")
    old = token(clock, sid="ses_old")
    assert refusal(verifier, old) is None

    clock.advance(5)
    scripted.floor = 5  # the follower's cursor c1 is no longer covered
    scripted.end_streams("fail")
    await until(lambda: len(scripted.connections) == 3)  # c1 → resync, then without a cursor
    assert [c.since_cursor for c in scripted.connections] == ["", "c1", ""]
    # The new stream's first heartbeat (the server's time) is the floor.
    await until(lambda: verifier.revocations is not None and verifier.revocations.cursor == "c1")
    assert refusal(verifier, old) == "revocation_resync"
    assert refusal(verifier, token(clock, sid="ses_at_resync")) == "revocation_resync"
    clock.advance(1)
    assert refusal(verifier, token(clock, sid="ses_new")) is None
    await stop(task)


async def test_a_silent_feed_makes_verification_fail_closed_until_it_is_back(
    clock: FakeClock, feed: tuple[ScriptedFeed, IdentityClient]
) -> None:
    scripted, client = feed
    verifier = TokenVerifier(_jwks, audience=AUDIENCE, clock=clock.now)
    jwt = token(clock)
    assert verifier.revocations is None
    task = asyncio.create_task(verifier.follow_revocations(client, max_staleness=15))
    await verifier.refresh_keys()
    assert refusal(verifier, jwt) == "revocations_stale"  # no heartbeat yet
    assert verifier.revocations is not None
    await asyncio.wait_for(verifier.revocations.ready.wait(), 5)
    assert refusal(verifier, jwt) is None

    clock.advance(16)  # three heartbeats missed
    assert refusal(verifier, jwt) == "revocations_stale"
    for connection in scripted.connections:
        connection.commands.put_nowait("heartbeat")
    await until(lambda: refusal(verifier, jwt) is None)
    await stop(task)


async def test_a_silent_stream_is_replaced(
    clock: FakeClock, feed: tuple[ScriptedFeed, IdentityClient]
) -> None:
    scripted, client = feed
    verifier = TokenVerifier(_jwks, audience=AUDIENCE, clock=clock.now)
    task = await following(verifier, client, reconnect_after_silence=0.3)
    await until(lambda: len(scripted.connections) >= 2)
    await stop(task)


async def test_a_client_without_the_grant_ends_the_task_with_the_typed_error(
    clock: FakeClock, feed: tuple[ScriptedFeed, IdentityClient]
) -> None:
    scripted, client = feed
    scripted.refuse_with = grpc.StatusCode.PERMISSION_DENIED
    verifier = TokenVerifier(_jwks, audience=AUDIENCE, clock=clock.now)
    with pytest.raises(PermissionDenied):
        await asyncio.wait_for(verifier.follow_revocations(client), 5)
    with pytest.raises(RuntimeError):
        verifier.follow_revocations(client).close()


def test_revoked_sessions_are_forgotten_once_their_tokens_have_expired(clock: FakeClock) -> None:
    """Bounded memory: a session is kept for max_token_lifetime + leeway, then dropped."""
    revocations = Revocations(clock=clock.now, leeway=30, max_token_lifetime=600)

    def revocation(sid: str) -> directory_pb2.WatchRevocationsResponse:
        return directory_pb2.WatchRevocationsResponse(
            cursor="c", revocation=directory_pb2.Revocation(session_id=sid)
        )

    revocations.receive(revocation("ses_1"))
    clock.advance(629)
    revocations.receive(revocation("ses_2"))
    assert revocations.is_revoked("ses_1")
    assert len(revocations) == 2
    clock.advance(2)
    assert not revocations.is_revoked("ses_1")
    revocations.receive(revocation("ses_3"))
    assert len(revocations) == 2  # ses_1 dropped
    assert revocations.is_revoked("ses_2")


async def test_a_kept_cursor_resumes_and_a_refused_one_restarts_from_now(
    clock: FakeClock, feed: tuple[ScriptedFeed, IdentityClient]
) -> None:
    scripted, client = feed
    scripted.revoke("ses_1")
    scripted.revoke("ses_2")
    resumed = TokenVerifier(_jwks, audience=AUDIENCE, clock=clock.now)
    task = await following(resumed, client, since_cursor="c1")
    assert scripted.connections[0].since_cursor == "c1"
    await until(lambda: refusal(resumed, token(clock, sid="ses_2")) == "revoked")
    assert refusal(resumed, token(clock, sid="ses_1")) is None  # before the kept cursor
    await stop(task)

    before = token(clock, sid="ses_3")
    refused = TokenVerifier(_jwks, audience=AUDIENCE, clock=clock.now)
    task = await following(refused, client, since_cursor="not-a-cursor")
    assert [c.since_cursor for c in scripted.connections[1:]] == ["not-a-cursor", ""]
    assert refusal(refused, before) == "revocation_resync"  # what it may have missed
    clock.advance(1)
    assert refusal(refused, token(clock, sid="ses_3")) is None
    await stop(task)


async def test_refuse_tokens_before_start_makes_every_user_refresh_once(
    clock: FakeClock, feed: tuple[ScriptedFeed, IdentityClient]
) -> None:
    _, client = feed
    before = token(clock)
    verifier = TokenVerifier(_jwks, audience=AUDIENCE, clock=clock.now)
    task = await following(verifier, client, refuse_tokens_before_start=True)
    assert refusal(verifier, before) == "revocation_resync"
    clock.advance(1)
    assert refusal(verifier, token(clock)) is None
    await stop(task)
