"""Two hosts behind one address behave as one service (deploy/local-cluster/).

Two network namespaces on this machine, each a host running `xiaohe-identity serve`
with 2 workers, share one PostgreSQL schema (through its Unix socket) and one Redis
Cluster of 3 masters and 3 replicas (at this machine's end of host 1's link); the
client balances over both with gRPC round-robin. Before the load: a logout on one host is
honoured on the other within one second, and codes to one number requested at
once on both hosts stay within that number's limit. Then a bounded registration
load runs across both, one host is killed mid-run, and afterwards every
registration the client saw acknowledged can log in through the survivor, which
kept serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from tests.conftest import POSTGRES_URL
from tests.e2e.conftest import CLI, wait_serving
from tests.redis_cluster import LocalRedisCluster
from xiaohe.identity.server.storage.database import create_engine
from xiaohe.identity.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    codes_pb2,
    codes_pb2_grpc,
    common_pb2,
)

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local-cluster" / "local-cluster.sh"
PG_SOCKET_DIR = "/var/run/postgresql"
PASSWORD = "Shuangxi-Liangan-2026"
REGISTRATIONS = 36
"""Registrations attempted under load; the kill comes after a third of them."""
Metadata = tuple[tuple[str, str], ...]

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not POSTGRES_URL, reason="XIAOHE_TEST_POSTGRES_URL is not set"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2's `ip` is not installed"),
    pytest.mark.skipif(
        not Path(PG_SOCKET_DIR, ".s.PGSQL.5432").exists(),
        reason="the hosts reach PostgreSQL through its Unix socket, not found",
    ),
]


def _socket_url(schema: str) -> str:
    """The test database's URL through the Unix socket, in the schema made for this test."""
    user_and_db = re.match(r"^[a-z+]+://([^@/]*)@[^/]*/([^?]+)", POSTGRES_URL)
    assert user_and_db is not None, "XIAOHE_TEST_POSTGRES_URL is not user@host/db"
    user, db = user_and_db.groups()
    return f"postgresql://{user}@/{db}?host={PG_SOCKET_DIR}&schema={schema}"


async def _admin(statement: str) -> None:
    engine = create_engine(POSTGRES_URL, statement_timeout_ms=0)
    async with engine.begin() as conn:
        await conn.execute(text(statement))
    await engine.dispose()


@dataclass
class LocalCluster:
    """The hosts the script started, and the settings to reach their stores."""

    env: dict[str, str]
    targets: list[str]
    run_dir: Path

    def script(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run local-cluster.sh with this cluster's settings."""
        return subprocess.run(
            ["bash", str(SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def cli(self, *args: str) -> str:
        """Run the operator CLI against the shared stores; its standard output."""
        done = subprocess.run(
            [CLI, *args], env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def outbox_codes(self, phone: str) -> list[str]:
        """Every code the hosts' dev providers wrote to `phone`, oldest first per host."""
        codes = []
        for host in sorted(self.run_dir.glob("host-*/outbox/sms.jsonl")):
            written = host.read_text().rpartition("\n")[0]
            for line in written.splitlines():
                message = json.loads(line)
                found = re.search(r"\d{6}", message["text"])
                if message["to"] == phone and found:
                    codes.append(found.group(0))
        return codes

    def log_tail(self) -> str:
        """The end of every host's log, for a failure message."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.run_dir.glob("host-*.log"))
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Two hosts, 2 workers each, on one PostgreSQL schema and one Redis Cluster; removed
    after."""
    schema = f"t_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE SCHEMA "{schema}"'))
    run_dir = tmp_path / "run"
    subnet = f"10.{200 + secrets.randbelow(50)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_IDENTITY_")}
    env.update(
        {
            "RUN_DIR": str(run_dir),
            "HOSTS": "2",
            "WORKERS": "2",
            # Unique per run: another test run on this machine may hold the defaults.
            "NAME": f"xh{secrets.token_hex(3)}",
            "SUBNET": subnet,
            "XIAOHE_IDENTITY_DATABASE_URL": _socket_url(schema),
            "XIAOHE_IDENTITY_REDIS_CLUSTER": "true",
            "XIAOHE_IDENTITY_KEYRING_FILE": str(tmp_path / "keyring.json"),
            "XIAOHE_IDENTITY_DATA_DIR": str(tmp_path / "cli"),
            "XIAOHE_IDENTITY_ARGON2_MEMORY_KIB": "64",
            "XIAOHE_IDENTITY_ARGON2_TIME_COST": "1",
            "XIAOHE_IDENTITY_CODE_PER_IP_HOUR": "1000",
            "XIAOHE_IDENTITY_LOG_LEVEL": "WARNING",
        }
    )
    made = LocalCluster(env, [], run_dir)
    redis_cluster = LocalRedisCluster(tmp_path / "redis", host=f"{subnet}.1.1")
    try:
        networked = made.script("net")
        assert networked.returncode == 0, networked.stderr
        env["XIAOHE_IDENTITY_REDIS_URL"] = redis_cluster.start()
        made.cli("keys", "init")
        started = made.script("start")
        assert started.returncode == 0, started.stderr
        made.targets = started.stdout.split()
        assert len(made.targets) == 2
        for target in made.targets:
            try:
                wait_serving(target, timeout=90)
            except AssertionError:
                raise AssertionError(made.log_tail()) from None
        yield made
    finally:
        made.script("down")
        redis_cluster.stop()
        asyncio.run(_admin(f'DROP SCHEMA "{schema}" CASCADE'))


class Client:
    """Stubs over one channel (both hosts, round-robin, or one host)."""

    def __init__(self, channel: grpc.Channel, metadata: Metadata) -> None:
        self.metadata = metadata
        self.codes = codes_pb2_grpc.CodeServiceStub(channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.accounts = accounts_pb2_grpc.AccountServiceStub(channel)

    def md(self, end_user_ip: str) -> Metadata:
        """The client's credentials, forwarding one end user's address."""
        return (*self.metadata, ("x-end-user-ip", end_user_ip))

    def login(self, login_name: str) -> auth_pb2.LoginResponse:
        """Password login; raises grpc.RpcError when refused."""
        return self.auth.Login(
            auth_pb2.LoginRequest(
                password=auth_pb2.PasswordCredential(identifier=login_name, password=PASSWORD)
            ),
            metadata=self.metadata,
            timeout=10,
        )

    def validate(self, token: str) -> bool:
        """Whether ValidateToken says the token is valid."""
        return self.auth.ValidateToken(
            auth_pb2.ValidateTokenRequest(access_token=token), metadata=self.metadata, timeout=5
        ).valid


def _round_robin(targets: list[str]) -> grpc.Channel:
    return grpc.insecure_channel(
        "ipv4:" + ",".join(targets),
        options=[("grpc.lb_policy_name", "round_robin"), ("grpc.enable_retries", 0)],
    )


def _phone(i: int) -> str:
    """The number of the load's `i`-th registration."""
    return f"+86139{77000000 + i:08d}"


def _register(client: Client, cluster: LocalCluster, i: int) -> str | None:
    """Register one account through whichever hosts answer; its login name, or None if any
    step failed (a registration the client never saw acknowledged)."""
    phone = _phone(i)
    ip = f"10.9.{i // 250}.{i % 250 + 1}"
    common = {"channel": common_pb2.CHANNEL_SMS, "destination": phone}
    purpose = common_pb2.PURPOSE_REGISTER
    try:
        client.codes.IssueCode(
            codes_pb2.IssueCodeRequest(**common, purpose=purpose), metadata=client.md(ip), timeout=5
        )
        deadline = time.monotonic() + 10
        while not (codes := cluster.outbox_codes(phone)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not codes:
            return None
        ticket = client.codes.VerifyCode(
            codes_pb2.VerifyCodeRequest(**common, purpose=purpose, code=codes[-1]),
            metadata=client.md(ip),
            timeout=5,
        ).ticket
        login_name = f"host.load.{i}"
        client.accounts.Register(
            accounts_pb2.RegisterRequest(
                subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
                login_name=login_name,
                password=PASSWORD,
                phone=phone,
                phone_ticket=ticket,
                accepted_policy_version=1,
            ),
            metadata=client.md(ip),
            timeout=5,
        )
    except grpc.RpcError:
        return None
    return login_name


def test_two_hosts_behave_as_one_service(cluster: LocalCluster) -> None:
    created = json.loads(cluster.cli("clients", "create", "two-hosts", "--grant", "*"))
    metadata = (
        ("x-client-id", created["client_id"]),
        ("x-client-secret", created["client_secret"]),
    )
    first, second = cluster.targets

    # A logout on one host is honoured on the other within one second.
    with grpc.insecure_channel(first) as a, grpc.insecure_channel(second) as b:
        on_a, on_b = Client(a, metadata), Client(b, metadata)
        assert _register(on_a, cluster, 0) == "host.load.0"
        session = on_a.login("host.load.0").session
        assert on_b.validate(session.access_token)
        on_a.auth.Logout(
            auth_pb2.LogoutRequest(refresh_token=session.refresh_token),
            metadata=metadata,
            timeout=5,
        )
        logged_out = time.monotonic()
        while on_b.validate(session.access_token):
            assert time.monotonic() - logged_out < 1.0, "host 2 still accepts the token"
            time.sleep(0.05)

    # Ten requests for one number at once, spread over both hosts: one code goes out.
    phone = "+8613977999999"
    with _round_robin(cluster.targets) as channel:
        client = Client(channel, metadata)
        answers: list[grpc.StatusCode] = []

        def issue(i: int) -> None:
            try:
                client.codes.IssueCode(
                    codes_pb2.IssueCodeRequest(
                        channel=common_pb2.CHANNEL_SMS,
                        destination=phone,
                        purpose=common_pb2.PURPOSE_REGISTER,
                    ),
                    metadata=client.md(f"10.8.0.{i + 1}"),
                    timeout=5,
                )
                answers.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                answers.append(exc.code())

        with ThreadPoolExecutor(10) as pool:
            list(pool.map(issue, range(10)))
        assert sorted(answers, key=str) == sorted(
            [grpc.StatusCode.OK] + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 9, key=str
        )
        time.sleep(1.0)  # let the dispatcher deliver what was queued
        assert len(cluster.outbox_codes(phone)) == 1

        # A bounded load across both hosts; host 1 dies a third of the way in.
        acknowledged: list[str] = []
        done = threading.Semaphore(0)

        def register(i: int) -> None:
            name = _register(client, cluster, i)
            if name is not None:
                acknowledged.append(name)
            done.release()

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(register, i) for i in range(1, REGISTRATIONS + 1)]
            for _ in range(REGISTRATIONS // 3):
                done.acquire(timeout=60)
            killed = cluster.script("kill", "1")
            assert killed.returncode == 0, killed.stderr
            for future in futures:
                future.result(timeout=120)
        assert len(acknowledged) >= REGISTRATIONS // 2, cluster.log_tail()
        # Both hosts took part before the kill (each delivered codes of the load).
        load_phones = {_phone(i) for i in range(1, REGISTRATIONS + 1)}
        for host in ("host-1", "host-2"):
            outbox = (cluster.run_dir / host / "outbox" / "sms.jsonl").read_text()
            delivered = {json.loads(line)["to"] for line in outbox.splitlines() if line}
            assert delivered & load_phones, f"{host} served no registration of the load"

    # The survivor kept serving, and every acknowledged registration is there.
    wait_serving(second, timeout=10)
    with grpc.insecure_channel(second) as b:
        survivor = Client(b, metadata)
        for login_name in acknowledged:
            assert survivor.login(login_name).session.access_token
        assert _register(survivor, cluster, 900) == "host.load.900"
    status = cluster.script("status")
    assert "server stopped" in status.stdout.splitlines()[0]
    assert "server running" in status.stdout.splitlines()[1]
