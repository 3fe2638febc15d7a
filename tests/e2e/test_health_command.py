"""`xiaohe-identity health`, the container health check, against a served instance."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI, ServedProcess, free_port, start_serve
from xiaohe.identity.server.probe import local_target


def _health(served_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_IDENTITY_")}
    env.update(served_env)
    return subprocess.run(
        [CLI, "health", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def served(tmp_path: Path, serve_factory: list[ServedProcess]) -> ServedProcess:
    """One running server with its own data dir."""
    process = start_serve(tmp_path / "data")
    serve_factory.append(process)
    return process


def test_health_exits_0_while_the_server_is_serving(served: ServedProcess) -> None:
    """With the server's own settings the probe finds it and reports SERVING."""
    result = _health({"XIAOHE_IDENTITY_LISTEN": served.target})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{served.target}: SERVING"


def test_health_names_a_service_and_refuses_an_unknown_one(served: ServedProcess) -> None:
    """A registered service is SERVING; one the server does not have is unhealthy."""
    env = {"XIAOHE_IDENTITY_LISTEN": served.target}
    known = _health(env, "--service", "xiaohe.identity.v1.AuthService")
    assert known.returncode == 0, known.stdout + known.stderr
    unknown = _health(env, "--service", "xiaohe.identity.v1.NoSuchService")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stdout


def test_health_exits_1_when_nothing_answers(served: ServedProcess) -> None:
    """A port without a server, and a stopped server, are unhealthy (never Docker's reserved 2)."""
    nobody = f"127.0.0.1:{free_port()}"
    result = _health({"XIAOHE_IDENTITY_LISTEN": nobody}, "--timeout", "1")
    assert result.returncode == 1
    assert result.stdout.startswith(f"{nobody}: ")
    assert "SERVING" not in result.stdout
    served.stop()
    after = _health({"XIAOHE_IDENTITY_LISTEN": served.target}, "--timeout", "1")
    assert after.returncode == 1


@pytest.mark.parametrize(
    ("listen", "target"),
    [
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        ("[::]:50051", "[::1]:50051"),
        (":50051", "127.0.0.1:50051"),
        ("10.0.0.7:50051", "10.0.0.7:50051"),
    ],
)
def test_a_wildcard_listen_address_is_probed_on_loopback(listen: str, target: str) -> None:
    """The probe runs beside the server, so a wildcard host becomes loopback."""
    assert local_target(listen) == target
