"""`xiaohe-identity serve` as a subprocess: start-up, codes, limits across workers, shutdown."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from tests.e2e.conftest import CLI, ServedProcess, start_serve
from tests.rpc_errors import details_of
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.v1 import codes_pb2, codes_pb2_grpc, common_pb2

PHONE = "+8613912345678"


def wait_lines(served: ServedProcess, count: int, timeout: float = 10.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = served.outbox()
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    return served.outbox()


def register_request(phone: str = PHONE) -> codes_pb2.IssueCodeRequest:
    return codes_pb2.IssueCodeRequest(
        channel=common_pb2.CHANNEL_SMS, destination=phone, purpose=common_pb2.PURPOSE_REGISTER
    )


def test_serve_issues_and_verifies_codes_and_shuts_down_gracefully(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    """Acceptance: SERVING, one outbox line holding the code, a ticket, cooldown, no credentials."""
    served = start_serve(tmp_path / "var")
    serve_factory.append(served)
    bootstrap = served.data_dir / "bootstrap-client.json"
    assert bootstrap.stat().st_mode & 0o777 == 0o600
    assert (served.data_dir / "keyring.json").stat().st_mode & 0o777 == 0o600
    with grpc.insecure_channel(served.target) as channel:
        stub = codes_pb2_grpc.CodeServiceStub(channel)
        stub.IssueCode(register_request(), metadata=served.metadata, timeout=10)
        lines = wait_lines(served, 1)
        assert len(lines) == 1
        code = re.search(r"\d{6}", lines[0]["text"])
        assert code is not None
        verified = stub.VerifyCode(
            codes_pb2.VerifyCodeRequest(
                channel=common_pb2.CHANNEL_SMS,
                destination=PHONE,
                purpose=common_pb2.PURPOSE_REGISTER,
                code=code.group(0),
            ),
            metadata=served.metadata,
            timeout=10,
        )
        assert verified.ticket
        with pytest.raises(grpc.RpcError) as caught:
            stub.IssueCode(register_request(), metadata=served.metadata, timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as caught:
            stub.IssueCode(register_request("+8613700000001"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert "xiaohe_codes_issued_total" in metrics
    assert served.stop() == 0
    log = served.log_text()
    assert code.group(0) not in log
    assert "13912345678" not in log


def test_100_concurrent_issues_across_two_workers_send_exactly_one_message(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    """C6: 100 simultaneous IssueCode calls for one new number over 2 workers -> one outbox line."""
    served = start_serve(tmp_path / "var", XIAOHE_IDENTITY_WORKERS="2")
    serve_factory.append(served)

    async def burst() -> list[grpc.StatusCode]:
        channels = [grpc.aio.insecure_channel(served.target) for _ in range(4)]
        try:
            stubs = [codes_pb2_grpc.CodeServiceStub(c) for c in channels]

            async def one(i: int) -> grpc.StatusCode:
                try:
                    await stubs[i % 4].IssueCode(
                        register_request("+8613511112222"), metadata=served.metadata, timeout=20
                    )
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    return exc.code()

            return await asyncio.gather(*(one(i) for i in range(100)))
        finally:
            for c in channels:
                await c.close()

    codes = asyncio.run(burst())
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 99
    time.sleep(1.5)
    assert len(wait_lines(served, 1)) == 1


def test_redis_outage_fails_closed_and_recovers_without_restart(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    """F1: with Redis stopped codes are UNAVAILABLE and nothing is sent; then it recovers."""
    redis_server = EmbeddedRedis(tmp_path / "redis")
    redis_url = redis_server.start()
    try:
        served = start_serve(tmp_path / "var", XIAOHE_IDENTITY_REDIS_URL=redis_url)
        serve_factory.append(served)
        redis_server.stop()
        with grpc.insecure_channel(served.target) as channel:
            stub = codes_pb2_grpc.CodeServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.IssueCode(register_request(), metadata=served.metadata, timeout=20)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert details_of(caught.value).retry_after is not None  # type: ignore[arg-type]
            with pytest.raises(grpc.RpcError) as caught:
                stub.VerifyCode(
                    codes_pb2.VerifyCodeRequest(
                        channel=common_pb2.CHANNEL_SMS,
                        destination=PHONE,
                        purpose=common_pb2.PURPOSE_REGISTER,
                        code="123456",
                    ),
                    metadata=served.metadata,
                    timeout=20,
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            time.sleep(1.0)
            assert served.outbox() == []
            redis_server.start()
            deadline = time.monotonic() + 20
            recovered = False
            while not recovered and time.monotonic() < deadline:
                try:
                    stub.IssueCode(register_request(), metadata=served.metadata, timeout=10)
                    recovered = True
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    time.sleep(0.5)
            assert recovered, "no recovery after Redis came back"
        assert len(wait_lines(served, 1)) == 1
    finally:
        redis_server.stop()


def test_invalid_settings_stop_start_up_with_a_one_line_reason(tmp_path: Path) -> None:
    """Bad settings: exit status 2 and one line naming the setting."""
    result = subprocess.run(
        [CLI, "serve"],
        env={"XIAOHE_IDENTITY_LISTEN": "nowhere", "XIAOHE_IDENTITY_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "XIAOHE_IDENTITY_LISTEN" in lines[0]


def test_a_revoked_bootstrap_client_stays_revoked_after_a_restart(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    """Restarting never re-creates an all-grants client an operator revoked."""
    served = start_serve(tmp_path / "var")
    serve_factory.append(served)
    before = (served.data_dir / "bootstrap-client.json").read_text()
    client_id = dict(served.metadata)["x-client-id"]
    assert served.stop() == 0
    env = {"XIAOHE_IDENTITY_DATA_DIR": str(served.data_dir), "PATH": "/usr/bin:/bin"}
    revoked = subprocess.run(
        [CLI, "clients", "revoke", client_id], env=env, capture_output=True, text=True, check=True
    )
    assert '"revoked": true' in revoked.stdout
    again = start_serve(served.data_dir)
    serve_factory.append(again)
    assert (again.data_dir / "bootstrap-client.json").read_text() == before
    with grpc.insecure_channel(again.target) as channel, pytest.raises(grpc.RpcError) as caught:
        codes_pb2_grpc.CodeServiceStub(channel).IssueCode(
            register_request(), metadata=again.metadata, timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
