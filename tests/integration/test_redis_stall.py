"""A Redis that stops answering (paused with SIGSTOP): every RPC that needs it fails closed, fast.

The server gets its own embedded redis-server, so pausing it affects no other test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.integration.conftest import Harness, harness_settings, wait_for_outbox
from tests.integration.flows import LOGIN_NAME, PASSWORD, PHONE, register, stubs
from tests.rpc_errors import details_of
from xiaohe.identity.server.app import start_server
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.migrate import upgrade_async
from xiaohe.identity.v1 import accounts_pb2, auth_pb2, codes_pb2, common_pb2

OP_TIMEOUT = 0.5
CALL_DEADLINE = 10.0
"""Far above the bound: a call that waited for Redis would end in DEADLINE_EXCEEDED instead."""


@pytest.fixture
async def stalling(
    tmp_path: Path, clock: FakeClock
) -> AsyncIterator[tuple[Harness, EmbeddedRedis]]:
    """A started server whose embedded Redis this test alone may pause."""
    redis_server = EmbeddedRedis(tmp_path / "redis")
    redis_url = redis_server.start()
    settings = harness_settings(tmp_path / "var", redis_op_timeout_seconds=OP_TIMEOUT)
    settings.data_dir.mkdir(parents=True)
    await upgrade_async(settings.effective_database_url)
    container = Container(settings, redis_url=redis_url, clock=clock)
    running = await start_server(container, settings.listen)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    client, secret = await container.clients.create("integration", ["*"])
    metadata = (("x-client-id", client.client_id), ("x-client-secret", secret))
    await container.revocations.wait_ready()
    harness = Harness(channel, metadata, container, running, clock, settings.data_dir)
    try:
        yield harness, redis_server
    finally:
        assert redis_server._process is not None
        os.kill(redis_server._process.pid, signal.SIGCONT)
        await channel.close()
        await running.stop(0)
        await container.close()
        redis_server.stop()


def _pause(redis_server: EmbeddedRedis, sig: signal.Signals) -> None:
    assert redis_server._process is not None
    os.kill(redis_server._process.pid, sig)


async def _sms_login_ticket(h: Harness) -> str:
    s = stubs(h)
    before = len(h.outbox_lines())
    await s.codes.IssueCode(
        codes_pb2.IssueCodeRequest(
            channel=common_pb2.CHANNEL_SMS, destination=PHONE, purpose=common_pb2.PURPOSE_LOGIN
        ),
        metadata=h.metadata,
    )
    line = (await wait_for_outbox(h, before + 1))[-1]
    code = re.search(r"\d{6}", line["text"])
    assert code is not None
    verified = await s.codes.VerifyCode(
        codes_pb2.VerifyCodeRequest(
            channel=common_pb2.CHANNEL_SMS,
            destination=PHONE,
            purpose=common_pb2.PURPOSE_LOGIN,
            code=code.group(0),
        ),
        metadata=h.metadata,
    )
    return verified.ticket


async def test_a_paused_redis_fails_closed_within_the_bound_and_recovers(
    stalling: tuple[Harness, EmbeddedRedis], caplog: pytest.LogCaptureFixture
) -> None:
    """F1, F4: with Redis paused, IssueCode, VerifyCode, Login and Register answer
    UNAVAILABLE with RetryInfo (not the caller's deadline); nothing is sent; the
    outage is logged once; after SIGCONT all answer normally without a restart."""
    h, redis_server = stalling
    s = stubs(h)
    await register(h, LOGIN_NAME, PHONE)
    h.clock.advance(61)
    ticket = await _sms_login_ticket(h)
    h.clock.advance(61)
    sent_before = len(h.outbox_lines())
    caplog.set_level(logging.INFO, logger="xiaohe.identity.redis")

    calls = {
        "IssueCode": lambda: s.codes.IssueCode(
            codes_pb2.IssueCodeRequest(
                channel=common_pb2.CHANNEL_SMS,
                destination="+8613900001111",
                purpose=common_pb2.PURPOSE_REGISTER,
            ),
            metadata=h.metadata,
            timeout=CALL_DEADLINE,
        ),
        "VerifyCode": lambda: s.codes.VerifyCode(
            codes_pb2.VerifyCodeRequest(
                channel=common_pb2.CHANNEL_SMS,
                destination=PHONE,
                purpose=common_pb2.PURPOSE_LOGIN,
                code="123456",
            ),
            metadata=h.metadata,
            timeout=CALL_DEADLINE,
        ),
        "Login(password)": lambda: s.auth.Login(
            auth_pb2.LoginRequest(
                password=auth_pb2.PasswordCredential(identifier=LOGIN_NAME, password=PASSWORD)
            ),
            metadata=h.metadata,
            timeout=CALL_DEADLINE,
        ),
        "Login(sms)": lambda: s.auth.Login(
            auth_pb2.LoginRequest(sms_ticket=ticket), metadata=h.metadata, timeout=CALL_DEADLINE
        ),
        "Register": lambda: s.accounts.Register(
            accounts_pb2.RegisterRequest(
                subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
                login_name="wang.fang",
                password=PASSWORD,
                phone="+8613900002222",
                phone_ticket=ticket,
                accepted_policy_version=1,
            ),
            metadata=h.metadata,
            timeout=CALL_DEADLINE,
        ),
    }

    _pause(redis_server, signal.SIGSTOP)
    for name, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        d = details_of(caught.value)
        assert (d.code, d.reason) == (grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"), name
        assert d.retry_after is not None, name
    # A second round is refused at once too (the outage is known), and still logged once.
    for name, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, name
    await h.drain_outbox()
    assert len(h.outbox_lines()) == sent_before
    started = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(started) == 1

    _pause(redis_server, signal.SIGCONT)
    answered = None
    refusals: set[grpc.StatusCode] = set()
    for _ in range(100):
        try:
            answered = await calls["Login(password)"]()
            break
        except grpc.aio.AioRpcError as exc:
            refusals.add(exc.code())
            await asyncio.sleep(0.1)
    assert refusals <= {grpc.StatusCode.UNAVAILABLE}
    assert answered is not None
    assert answered.session.access_token
    issued = await calls["IssueCode"]()
    assert issued.expires_in_seconds > 0
    assert any("answers again" in r.getMessage() for r in caplog.records)
