"""One access-log line per RPC: method, status, duration, client and request id; no request data."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import Harness, HarnessFactory, wait_for_outbox
from tests.rpc_errors import details_of
from xiaohe.identity.server.observability.logging import JsonFormatter, RedactionFilter
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.v1 import admin_pb2, admin_pb2_grpc, codes_pb2, codes_pb2_grpc, common_pb2

ACCESS_LOGGER = (
    "xiaohe.identity.access"  # operators filter on this name: it is part of the contract
)
PHONE = "+8613912345678"
EMAIL = "li.na@example.com"
WRONG_CODE = "314159"
ISSUE = "/xiaohe.identity.v1.CodeService/IssueCode"
VERIFY = "/xiaohe.identity.v1.CodeService/VerifyCode"
LIST_CLIENTS = "/xiaohe.identity.v1.AdminService/ListClients"


@pytest.fixture
def access_lines(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """The access log as the server writes it: redacted JSON lines, formatted as emitted."""
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter(worker=3))
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    yield buffer
    logger.removeHandler(handler)


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def _request_id(call_trailers: Any) -> str:
    return next(v for k, v in call_trailers if k == "x-request-id")


async def test_each_rpc_writes_one_line_with_its_outcome_and_no_request_data(
    h: Harness, access_lines: io.StringIO
) -> None:
    codes = codes_pb2_grpc.CodeServiceStub(h.channel)
    client_id = dict(h.metadata)["x-client-id"]
    secret = dict(h.metadata)["x-client-secret"]

    call = codes.IssueCode(
        codes_pb2.IssueCodeRequest(
            channel=common_pb2.CHANNEL_SMS,
            destination=PHONE,
            purpose=common_pb2.PURPOSE_REGISTER,
        ),
        metadata=h.metadata,
    )
    await call
    issued_id = _request_id(await call.trailing_metadata())
    await codes.IssueCode(
        codes_pb2.IssueCodeRequest(
            channel=common_pb2.CHANNEL_EMAIL, destination=EMAIL, purpose=common_pb2.PURPOSE_REGISTER
        ),
        metadata=h.metadata,
    )
    sent_codes = [re.findall(r"\d{6}", line["text"]) for line in await wait_for_outbox(h, 1)]
    assert sent_codes
    assert all(sent_codes)

    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await codes.VerifyCode(
            codes_pb2.VerifyCodeRequest(
                channel=common_pb2.CHANNEL_SMS,
                destination=PHONE,
                purpose=common_pb2.PURPOSE_REGISTER,
                code=WRONG_CODE,
            ),
            metadata=h.metadata,
        )
    narrow = await h.client_metadata("codes")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await admin_pb2_grpc.AdminServiceStub(h.channel).ListClients(
            admin_pb2.ListClientsRequest(), metadata=narrow
        )
    stranger = (("x-client-id", client_id), ("x-client-secret", "xhs_wrong"))
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await codes.IssueCode(codes_pb2.IssueCodeRequest(destination=PHONE), metadata=stranger)
    # Health checks (load balancers poll them) are not access-logged.
    await health_pb2_grpc.HealthStub(h.channel).Check(health_pb2.HealthCheckRequest())

    lines = _lines(access_lines)
    assert [(x["extra"]["method"], x["extra"]["status"]) for x in lines] == [
        (ISSUE, "OK"),
        (ISSUE, "OK"),
        (VERIFY, "INVALID_ARGUMENT"),
        (LIST_CLIENTS, "PERMISSION_DENIED"),
        (ISSUE, "UNAUTHENTICATED"),
    ]
    assert [x["request_id"] for x in lines] == [
        issued_id,
        lines[1]["request_id"],
        details_of(wrong.value).request_id,
        details_of(denied.value).request_id,
        details_of(unknown.value).request_id,
    ]
    assert len({x["request_id"] for x in lines}) == 5
    # The client id once authenticated; a claimed id that failed to authenticate is not logged.
    assert [x["client_id"] for x in lines] == [client_id] * 3 + [dict(narrow)["x-client-id"], ""]
    for x in lines:
        assert x["logger"] == ACCESS_LOGGER
        assert x["level"] == "INFO"
        assert x["worker"] == 3
        assert 0 <= x["extra"]["duration_ms"] < 60_000
        assert set(x["extra"]) == {"method", "status", "duration_ms"}
    text = access_lines.getvalue()
    for private in ("13912345678", "li.na", "example.com", WRONG_CODE, secret, "xhs_wrong"):
        assert private not in text, private
    for codes_in_message in sent_codes:
        assert not any(code in text for code in codes_in_message)


async def test_a_call_the_caller_gave_up_on_is_logged_as_cancelled(
    tmp_path: Path, harness_factory: HarnessFactory, access_lines: io.StringIO
) -> None:
    """Redis paused, the caller's deadline passes first: the line says CANCELLED, never OK."""
    redis_server = EmbeddedRedis(tmp_path / "redis")
    redis_url = redis_server.start()
    assert redis_server._process is not None
    try:
        h = await harness_factory(redis_url=redis_url, redis_op_timeout_seconds=10)
        await h.container.revocations.wait_ready()
        os.kill(redis_server._process.pid, signal.SIGSTOP)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await codes_pb2_grpc.CodeServiceStub(h.channel).IssueCode(
                codes_pb2.IssueCodeRequest(
                    channel=common_pb2.CHANNEL_SMS,
                    destination=PHONE,
                    purpose=common_pb2.PURPOSE_REGISTER,
                ),
                metadata=h.metadata,
                timeout=0.5,
            )
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(100):  # the server notices the cancellation a moment later
            if access_lines.getvalue():
                break
            await asyncio.sleep(0.05)
        (line,) = _lines(access_lines)
        assert (line["extra"]["method"], line["extra"]["status"]) == (ISSUE, "CANCELLED")
        assert line["client_id"] == dict(h.metadata)["x-client-id"]
    finally:
        os.kill(redis_server._process.pid, signal.SIGCONT)
        redis_server.stop()
