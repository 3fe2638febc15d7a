"""A Redis that stops answering (paused with SIGSTOP): every RPC that needs it fails closed, fast.

The server gets its own embedded redis-server, so pausing it affects no other test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import LOGIN_NAME, PASSWORD, PHONE, code_ticket, register, stubs
from tests.rpc_errors import details_of
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.v1 import accounts_pb2, auth_pb2, codes_pb2, common_pb2

OP_TIMEOUT = 0.5
CALL_DEADLINE = 10.0
"""Far above the bound: a call that waited for Redis would end in DEADLINE_EXCEEDED instead."""


@pytest.fixture
async def stalling(
    tmp_path: Path, harness_factory: HarnessFactory
) -> AsyncIterator[tuple[Harness, EmbeddedRedis]]:
    """A started server whose embedded Redis this test alone may pause."""
    redis_server = EmbeddedRedis(tmp_path / "redis")
    redis_url = redis_server.start()
    try:
        h = await harness_factory(redis_url=redis_url, redis_op_timeout_seconds=OP_TIMEOUT)
        await h.container.revocations.wait_ready()
        yield h, redis_server
    finally:
        _pause(redis_server, signal.SIGCONT)
        redis_server.stop()


def _pause(redis_server: EmbeddedRedis, sig: signal.Signals) -> None:
    assert redis_server._process is not None
    os.kill(redis_server._process.pid, sig)


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
    ticket = await code_ticket(h, PHONE, common_pb2.PURPOSE_LOGIN)
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
