"""Start `xiaohe-identity serve` as a user would: a subprocess, real ports, its own data dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xiaohe.identity.v1 import codes_pb2, codes_pb2_grpc, common_pb2

CLI = str(Path(sys.executable).parent / "xiaohe-identity")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServedProcess:
    """A running `xiaohe-identity serve` and what a caller needs to reach it."""

    process: subprocess.Popen[bytes]
    target: str
    data_dir: Path
    metrics_port: int
    log_path: Path

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The bootstrap client's credentials."""
        saved = json.loads((self.data_dir / "bootstrap-client.json").read_text())
        return (("x-client-id", saved["client_id"]), ("x-client-secret", saved["client_secret"]))

    def program_env(self) -> dict[str, str]:
        """The environment of an example program calling this server as the bootstrap client:
        this process's, without its own XIAOHE_ settings, plus target and credentials."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_")}
        (_, client_id), (_, client_secret) = self.metadata
        env.update(
            XIAOHE_TARGET=self.target,
            XIAOHE_CLIENT_ID=client_id,
            XIAOHE_CLIENT_SECRET=client_secret,
            XIAOHE_OUTBOX=str(self.data_dir / "outbox" / "sms.jsonl"),
        )
        return env

    def outbox(self, channel: str = "sms") -> list[dict[str, str]]:
        """Lines the dev provider wrote."""
        path = self.data_dir / "outbox" / f"{channel}.jsonl"
        if not path.exists():
            return []
        written = path.read_text().rpartition("\n")[0]  # a line being written is not yet one
        return [json.loads(line) for line in written.splitlines() if line.strip()]

    def issue_code(self, phone: str, timeout: float = 10) -> None:
        """IssueCode (SMS, REGISTER) to `phone` over a connection of its own, so calls
        made one after another reach every worker."""
        with grpc.insecure_channel(self.target) as channel:
            codes_pb2_grpc.CodeServiceStub(channel).IssueCode(
                codes_pb2.IssueCodeRequest(
                    channel=common_pb2.CHANNEL_SMS,
                    destination=phone,
                    purpose=common_pb2.PURPOSE_REGISTER,
                ),
                metadata=self.metadata,
                timeout=timeout,
            )

    def log_text(self) -> str:
        """Everything the server logged."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM, then wait for a graceful exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_serving(target: str, timeout: float = 60.0) -> None:
    """Block until the gRPC health check says SERVING."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=2
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"server not SERVING within {timeout}s: {last}")


def start_serve(data_dir: Path, **env_overrides: str) -> ServedProcess:
    """Run `xiaohe-identity serve` with the given settings and wait until it serves."""
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_IDENTITY_")}
    env.update(
        {
            "XIAOHE_IDENTITY_LISTEN": f"127.0.0.1:{port}",
            "XIAOHE_IDENTITY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "XIAOHE_IDENTITY_DATA_DIR": str(data_dir),
            "XIAOHE_IDENTITY_WORKERS": "1",
            "XIAOHE_IDENTITY_ARGON2_MEMORY_KIB": "64",
            "XIAOHE_IDENTITY_ARGON2_TIME_COST": "1",
        }
    )
    env.update(env_overrides)
    log_path = data_dir.parent / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([CLI, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    served = ServedProcess(process, f"127.0.0.1:{port}", data_dir, metrics_port, log_path)
    try:
        wait_serving(served.target)
    except AssertionError:
        served.stop()
        raise AssertionError(served.log_text()[-4000:]) from None
    return served


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[list[ServedProcess]]:
    """Collects started servers and stops them after the test."""
    started: list[ServedProcess] = []
    yield started
    for served in started:
        served.stop()
