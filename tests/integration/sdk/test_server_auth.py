"""BearerAuthInterceptor on a real grpc.aio server: who gets in, with which status, which claims."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.integration.sdk.feed_server import ScriptedFeed, start_feed_server
from tests.integration.sdk.test_revocation_following import AUDIENCE, SEED, _jwks
from xiaohe.identity.client import IdentityClient, TokenVerifier
from xiaohe.identity.client.server_auth import BearerAuthInterceptor, current_claims
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.tokens.jwt import encode_eddsa

SERVICE = "xiaohe.test.Probe"


def claims_struct() -> Struct:
    claims = current_claims()
    out = Struct()
    out.update({"sub": claims.sub, "sid": claims.sid, "rn_level": claims.rn_level})
    return out


async def who(request: Struct, context: Any) -> Struct:
    return claims_struct()


async def who_streamed(request: Struct, context: Any) -> AsyncIterator[Struct]:
    for _ in range(2):
        yield claims_struct()


async def who_after_stream(requests: AsyncIterator[Struct], context: Any) -> Struct:
    async for _ in requests:
        pass
    return claims_struct()


def probe_handler() -> grpc.GenericRpcHandler:
    common: dict[str, Any] = {
        "request_deserializer": Struct.FromString,
        "response_serializer": Struct.SerializeToString,
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Who": grpc.unary_unary_rpc_method_handler(who, **common),
            "WhoStreamed": grpc.unary_stream_rpc_method_handler(who_streamed, **common),
            "WhoAfterStream": grpc.stream_unary_rpc_method_handler(who_after_stream, **common),
        },
    )


def token(clock: FakeClock, **overrides: Any) -> str:
    now = int(clock.now())
    claims: dict[str, Any] = {
        "iss": "https://id.xiaohe.test",
        "sub": "acc_1",
        "sid": "ses_1",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "amr": ["pwd"],
        "subject_type": "natural_person",
        "rn_level": 1,
        **overrides,
    }
    return encode_eddsa(claims, "k1", SEED)


class Probe:
    """A started server with the interceptor, and a channel to it."""

    def __init__(self, server: grpc.aio.Server, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.channel = channel

    async def call(self, method: str, jwt: str | None, header: str | None = None) -> Struct:
        metadata: tuple[tuple[str, str], ...] = ()
        if header is not None:
            metadata = (("authorization", header),)
        elif jwt is not None:
            metadata = (("authorization", f"Bearer {jwt}"),)
        path = f"/{SERVICE}/{method}"
        serialize, parse = Struct.SerializeToString, Struct.FromString
        if method == "WhoStreamed":
            stream = self.channel.unary_stream(path, serialize, parse)
            replies = [r async for r in stream(Struct(), metadata=metadata, timeout=5)]
            assert len(replies) == 2
            return replies[0]
        if method == "WhoAfterStream":
            upload = self.channel.stream_unary(path, serialize, parse)
            return await upload(iter([Struct(), Struct()]), metadata=metadata, timeout=5)
        unary = self.channel.unary_unary(path, serialize, parse)
        return await unary(Struct(), metadata=metadata, timeout=5)


async def start_probe(interceptor: BearerAuthInterceptor) -> Probe:
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((probe_handler(),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Probe(server, grpc.aio.insecure_channel(f"127.0.0.1:{port}"))


@pytest.fixture
async def probe(clock: FakeClock) -> AsyncIterator[Probe]:
    verifier = TokenVerifier(_jwks, audience=AUDIENCE, clock=clock.now)
    started = await start_probe(
        BearerAuthInterceptor(verifier, required_auth_methods=["pwd"], min_real_name_level=1)
    )
    yield started
    await started.channel.close()
    await started.server.stop(None)


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    return failed.value.code(), failed.value.details() or ""


@pytest.mark.parametrize("method", ["Who", "WhoStreamed", "WhoAfterStream"])
async def test_a_valid_token_gets_in_and_the_handler_sees_its_claims(
    probe: Probe, clock: FakeClock, method: str
) -> None:
    reply = await probe.call(method, token(clock))
    assert (reply["sub"], reply["sid"]) == ("acc_1", "ses_1")


@pytest.mark.parametrize("method", ["Who", "WhoStreamed", "WhoAfterStream"])
async def test_no_or_a_bad_token_is_unauthenticated_without_echoing_it(
    probe: Probe, clock: FakeClock, method: str
) -> None:
    code, details = await status_of(probe.call(method, None))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")
    code, _ = await status_of(probe.call(method, None, header=f"Basic {token(clock)}"))
    assert code == grpc.StatusCode.UNAUTHENTICATED

    wrong_audience = token(clock, aud="biz.other")
    code, details = await status_of(probe.call(method, wrong_audience))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid token: wrong_audience")
    expired = token(clock, iat=int(clock.now()) - 700, exp=int(clock.now()) - 100)
    code, details = await status_of(probe.call(method, expired))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid token: expired")
    assert expired not in details


async def test_requirements_not_met_are_permission_denied_naming_the_requirement(
    probe: Probe, clock: FakeClock
) -> None:
    code, details = await status_of(probe.call("Who", token(clock, rn_level=0)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "real-name level 1" in details
    code, details = await status_of(probe.call("Who", token(clock, amr=["sms"])))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details.endswith("signing in with: pwd")


async def test_public_methods_need_no_token(probe: Probe) -> None:
    reply = await health_pb2_grpc.HealthStub(probe.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_current_claims_outside_a_call_is_an_error() -> None:
    with pytest.raises(LookupError):
        current_claims()


async def test_revoked_and_stale_when_the_verifier_follows_revocations(clock: FakeClock) -> None:
    """Revoked: UNAUTHENTICATED (sign in again); feed stale: UNAVAILABLE (retry later)."""
    feed = ScriptedFeed(clock.now)
    feed_server, port = await start_feed_server(feed)
    identity = IdentityClient(f"127.0.0.1:{port}", client_id="cli_probe", client_secret="s")
    verifier = TokenVerifier(_jwks, audience=AUDIENCE, clock=clock.now)
    task = asyncio.create_task(verifier.follow_revocations(identity, max_staleness=15))
    probe = await start_probe(BearerAuthInterceptor(verifier))
    try:
        assert verifier.revocations is not None
        await asyncio.wait_for(verifier.revocations.ready.wait(), 5)
        jwt = token(clock)
        assert (await probe.call("Who", jwt))["sid"] == "ses_1"

        clock.advance(16)
        code, _ = await status_of(probe.call("Who", jwt))
        assert code == grpc.StatusCode.UNAVAILABLE

        feed.revoke("ses_1")  # also a message: the feed is current again
        for _ in range(100):
            if verifier.revocations.is_revoked("ses_1"):
                break
            await asyncio.sleep(0.01)
        code, details = await status_of(probe.call("Who", jwt))
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid token: revoked")
    finally:
        task.cancel()
        feed.end_streams()
        await probe.channel.close()
        await probe.server.stop(None)
        await identity.close()
        await feed_server.stop(None)


async def test_keys_that_cannot_be_fetched_are_unavailable_not_unauthenticated(
    clock: FakeClock,
) -> None:
    async def unreachable() -> str:
        raise ConnectionError("identity service unreachable")

    probe = await start_probe(
        BearerAuthInterceptor(TokenVerifier(unreachable, audience=AUDIENCE, clock=clock.now))
    )
    try:
        code, details = await status_of(probe.call("Who", token(clock)))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "retry later" in details
    finally:
        await probe.channel.close()
        await probe.server.stop(None)
