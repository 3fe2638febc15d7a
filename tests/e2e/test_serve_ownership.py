"""`serve` owns its port and data directory, says "serving" when it is; health follows the stores.

One instance (two workers) is started for the first three tests; a second `serve`
tries its port, then its data directory, and must stop at once with one line,
leaving the first untouched. Deleting a data directory needs an instance of its
own (on port 0, which must come out as one port the "serving" line names).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import CLI, ServedProcess, free_port
from xiaohe.identity.server.app import SERVICE_NAMES
from xiaohe.identity.v1 import codes_pb2, codes_pb2_grpc, common_pb2

SERVING_LINE = "xiaohe identity serving"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def serve_env(data_dir: Path, listen: str, **overrides: str) -> dict[str, str]:
    """The environment `start_serve` uses, with a listen address of our choosing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_IDENTITY_")}
    env.update(
        {
            "XIAOHE_IDENTITY_LISTEN": listen,
            "XIAOHE_IDENTITY_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "XIAOHE_IDENTITY_DATA_DIR": str(data_dir),
            "XIAOHE_IDENTITY_WORKERS": "1",
            "XIAOHE_IDENTITY_ARGON2_MEMORY_KIB": "64",
            "XIAOHE_IDENTITY_ARGON2_TIME_COST": "1",
        }
    )
    env.update(overrides)
    return env


def second_serve(env: dict[str, str]) -> tuple[int, str]:
    """Run another `serve`; (exit status, stderr). One still running after 30 s fails the test.

    It is stopped with SIGTERM then, so that it stops its workers and embedded Redis.
    """
    process = subprocess.Popen(
        [CLI, "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        pytest.fail("a second serve kept running")
    return process.returncode, stderr


def statuses(target: str, service: str = "", connections: int = 6) -> list[int]:
    """Health of `service` over this many fresh connections (each may reach another worker)."""
    found = []
    for _ in range(connections):
        with grpc.insecure_channel(target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2
                )
                found.append(reply.status)
            except grpc.RpcError as exc:
                found.append(-exc.code().value[0])  # refused or unavailable: not serving
    return found


@dataclass
class Announced:
    """A served instance and what its health said the moment it logged "serving"."""

    served: ServedProcess
    at_announcement: list[int]


def launch(data_dir: Path, listen: str, **overrides: str) -> Announced:
    """Start `serve`; as soon as it logs "serving", read health on the address it names."""
    log_path = data_dir.parent / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [CLI, "serve"],
            env=serve_env(data_dir, listen, **overrides),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    served = ServedProcess(process, listen, data_dir, 0, log_path)
    deadline = time.monotonic() + 90
    line = None
    while line is None and time.monotonic() < deadline and process.poll() is None:
        line = next((ln for ln in served.log_text().splitlines() if SERVING_LINE in ln), None)
        time.sleep(0.02)
    if line is None:
        served.stop()
        raise AssertionError(served.log_text()[-4000:])
    served.target = json.loads(line)["extra"]["listen"]
    return Announced(served, statuses(served.target))


@pytest.fixture(scope="module")
def announced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Announced]:
    """`serve` with two workers on a free port."""
    root = tmp_path_factory.mktemp("owner")
    first = launch(root / "var", f"127.0.0.1:{free_port()}", XIAOHE_IDENTITY_WORKERS="2")
    yield first
    first.served.stop()


def test_serving_is_logged_once_every_worker_answers(announced: Announced) -> None:
    """When "serving" is logged, every connection (either worker) already gets SERVING."""
    assert announced.at_announcement == [SERVING] * len(announced.at_announcement)
    for name in SERVICE_NAMES:
        assert set(statuses(announced.served.target, name, connections=2)) == {SERVING}


def test_a_second_serve_on_the_same_port_stops_with_one_line(
    announced: Announced, tmp_path: Path
) -> None:
    """Another data directory, the same port: refused, nothing started, the first one unharmed."""
    other = tmp_path / "other"
    status, stderr = second_serve(serve_env(other, announced.served.target))
    assert status == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "XIAOHE_IDENTITY_LISTEN" in lines[0]
    assert announced.served.target in lines[0]
    assert "in use" in lines[0]
    assert not (other / "redis").exists()
    assert not (other / "identity.db").exists()
    assert set(statuses(announced.served.target)) == {SERVING}


def test_a_second_serve_on_the_same_data_directory_stops_and_leaves_its_redis(
    announced: Announced,
) -> None:
    """The same data directory, another port: refused naming the directory; calls still work."""
    data_dir = announced.served.data_dir
    socket_path = data_dir / "redis" / "redis.sock"
    assert socket_path.is_socket()
    status, stderr = second_serve(serve_env(data_dir, f"127.0.0.1:{free_port()}"))
    assert status == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert str(data_dir.resolve()) in lines[0]
    assert socket_path.is_socket()
    with grpc.insecure_channel(announced.served.target) as channel:
        codes_pb2_grpc.CodeServiceStub(channel).IssueCode(
            codes_pb2.IssueCodeRequest(
                channel=common_pb2.CHANNEL_SMS,
                destination="+8613912340000",
                purpose=common_pb2.PURPOSE_REGISTER,
            ),
            metadata=announced.served.metadata,
            timeout=10,
        )


def test_deleting_the_data_directory_turns_health_not_serving(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    """Port 0 is resolved to one port; every service name goes NOT_SERVING without the directory."""
    started = launch(tmp_path / "var", "127.0.0.1:0", XIAOHE_IDENTITY_HEALTH_CHECK_SECONDS="0.2")
    served = started.served
    serve_factory.append(served)
    assert not served.target.endswith(":0")
    assert set(started.at_announcement) == {SERVING}
    shutil.rmtree(served.data_dir)
    deadline = time.monotonic() + 10
    while set(statuses(served.target, connections=2)) != {NOT_SERVING}:
        assert time.monotonic() < deadline, "health still SERVING without a data directory"
        time.sleep(0.2)
    for name in SERVICE_NAMES:
        assert set(statuses(served.target, name, connections=2)) == {NOT_SERVING}
    assert "health NOT_SERVING" in served.log_text()
