"""Outside the embedded default, `serve` refuses to start insecurely (SECURITY F5).

No plaintext on a routable address unless explicitly allowed; with an external
database no generated key ring and no bootstrap client, so every replica signs
with the same keys and clients are made only with the CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from tests.conftest import POSTGRES_URL
from tests.e2e.conftest import CLI, ServedProcess, free_port, start_serve, wait_serving
from xiaohe.identity.server.storage.database import create_engine
from xiaohe.identity.v1 import auth_pb2, auth_pb2_grpc

P = "XIAOHE_IDENTITY_"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(P)}
    return subprocess.run(
        [CLI, *args], env={**base, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def _operator_lines(stderr: str) -> list[str]:
    """stderr without the JSON log records."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]


def test_plaintext_on_all_interfaces_refuses_to_start(tmp_path: Path) -> None:
    """F5: `serve` on 0.0.0.0 without TLS stops with one line and creates nothing."""
    data_dir = tmp_path / "var"
    result = _run(
        ["serve"],
        {
            f"{P}LISTEN": f"0.0.0.0:{free_port()}",
            f"{P}METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            f"{P}DATA_DIR": str(data_dir),
        },
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{P}LISTEN" in lines[0]
    assert "TLS" in lines[0]
    assert not (data_dir / "bootstrap-client.json").exists()
    assert not (data_dir / "keyring.json").exists()


def test_plaintext_on_all_interfaces_when_allowed(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    """F5: behind a mesh that terminates TLS, plaintext is an explicit choice."""
    port, metrics_port = free_port(), free_port()
    data_dir = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith(P)}
    env.update(
        {
            f"{P}LISTEN": f"0.0.0.0:{port}",
            f"{P}ALLOW_PLAINTEXT": "true",
            f"{P}METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            f"{P}DATA_DIR": str(data_dir),
            f"{P}WORKERS": "1",
        }
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([CLI, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    served = ServedProcess(process, f"127.0.0.1:{port}", data_dir, metrics_port, log_path)
    serve_factory.append(served)
    wait_serving(served.target)
    assert (data_dir / "bootstrap-client.json").exists()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL on a schema of its own, dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip("XIAOHE_TEST_POSTGRES_URL is not set")
    schema = f"t_{secrets.token_hex(6)}"

    async def admin(statement: str) -> None:
        engine = create_engine(POSTGRES_URL)
        async with engine.begin() as conn:
            await conn.execute(text(statement))
        await engine.dispose()

    asyncio.run(admin(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}schema={schema}"
    asyncio.run(admin(f'DROP SCHEMA "{schema}" CASCADE'))


def _tables(postgres_url: str) -> list[str]:
    schema = postgres_url.rsplit("schema=", 1)[1]

    async def query() -> list[str]:
        engine = create_engine(POSTGRES_URL)
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": schema},
            )
            names = [str(r[0]) for r in rows]
        await engine.dispose()
        return names

    return asyncio.run(query())


@pytest.mark.postgres
def test_an_external_database_without_a_key_ring_refuses_to_start(
    tmp_path: Path, postgres_url: str
) -> None:
    """F5: with PostgreSQL, no key ring setting or a missing file: one line, nothing written."""
    env = {
        f"{P}DATA_DIR": str(tmp_path / "var"),
        f"{P}DATABASE_URL": postgres_url,
        f"{P}LISTEN": f"127.0.0.1:{free_port()}",
        f"{P}METRICS_LISTEN": f"127.0.0.1:{free_port()}",
    }
    unset = _run(["serve"], env)
    assert unset.returncode == 2
    assert len(unset.stderr.strip().splitlines()) == 1
    assert f"{P}KEYRING_FILE: required with an external database" in unset.stderr

    env[f"{P}KEYRING_FILE"] = str(tmp_path / "secrets" / "keyring.json")
    missing = _run(["serve"], env)
    assert missing.returncode == 2
    lines = _operator_lines(missing.stderr)
    assert len(lines) == 1
    assert "keys init" in lines[0]
    assert not (tmp_path / "secrets" / "keyring.json").exists()
    assert not (tmp_path / "var" / "bootstrap-client.json").exists()
    assert _tables(postgres_url) == []  # not even migrated: no client can exist


@pytest.mark.postgres
def test_replicas_on_one_database_share_the_key_ring_and_make_no_clients(
    tmp_path: Path, postgres_url: str, serve_factory: list[ServedProcess]
) -> None:
    """F5: `keys init` once; two replicas start without a bootstrap client, clients come
    from the CLI, and both replicas publish the same signing keys."""
    keyring = tmp_path / "secrets" / "keyring.json"
    env = {f"{P}DATABASE_URL": postgres_url, f"{P}KEYRING_FILE": str(keyring)}
    made = _run(["keys", "init"], {**env, f"{P}DATA_DIR": str(tmp_path / "cli")})
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout) == {"keyring_file": str(keyring)}
    again = _run(["keys", "init"], {**env, f"{P}DATA_DIR": str(tmp_path / "cli")})
    assert again.returncode == 2
    assert "exists already" in _operator_lines(again.stderr)[0]

    replicas = [start_serve(tmp_path / f"replica-{i}", **env) for i in range(2)]
    serve_factory.extend(replicas)
    for replica in replicas:
        assert not (replica.data_dir / "bootstrap-client.json").exists()
    listed = _run(["clients", "list"], {**env, f"{P}DATA_DIR": str(tmp_path / "cli")})
    assert json.loads(listed.stdout) == []

    created = _run(
        ["clients", "create", "front-end", "--grant", "auth", "--grant", "validate"],
        {**env, f"{P}DATA_DIR": str(tmp_path / "cli")},
    )
    client = json.loads(created.stdout)
    metadata = (("x-client-id", client["client_id"]), ("x-client-secret", client["client_secret"]))
    keys = []
    for replica in replicas:
        with grpc.insecure_channel(replica.target) as channel:
            reply = auth_pb2_grpc.AuthServiceStub(channel).GetSigningKeys(
                auth_pb2.GetSigningKeysRequest(), metadata=metadata, timeout=10
            )
        keys.append(json.loads(reply.jwks_json))
    assert keys[0] == keys[1]
