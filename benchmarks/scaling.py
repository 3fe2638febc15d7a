"""`make scaling`: throughput of the login and ValidateToken mixes as workers and hosts grow.

Every figure comes from the load-test client (`clients/loadtest`, Locust) against a
real `xiaohe-identity serve`:

- one server on loopback over the embedded stores with 1, 2 and 4 workers;
- one and two hosts (network namespaces, `deploy/local-cluster/`) of 2 workers each,
  sharing one PostgreSQL and one Redis Cluster, the client balancing over both hosts.

The table replaces the "Scaling" section of docs/performance.md (`make bench` keeps
it). Server settings are the defaults (OWASP Argon2id), so a login costs what it
costs in production. The hosts part needs root, iproute2, redis-cli and PostgreSQL
through its Unix socket; without them it says so and measures the workers only.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from benchmarks.__main__ import SCALING_SECTION as SECTION
from benchmarks.__main__ import machine
from tests.redis_cluster import LocalRedisCluster
from xiaohe.identity.server.storage.database import create_engine

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "xiaohe-identity")
SCRIPT = ROOT / "deploy" / "local-cluster" / "local-cluster.sh"
PG_SOCKET_DIR = "/var/run/postgresql"
MIXES = {"login": "password_login:1", "ValidateToken": "validate:1"}
"""The two mixes of the table: Locust scenario specs (clients/loadtest/scenarios.py)."""


@dataclass(frozen=True)
class Measured:
    """One load-test run: requests per second and the share that failed."""

    per_second: float
    failed: float


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_serving(target: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{target} did not serve within {timeout:g} s")


def loadtest(
    target: str, mix: str, client_file: Path, outbox: Path, work: Path, users: int, seconds: int
) -> Measured:
    """Run the load-test client once and read Locust's aggregated row."""
    results = work / f"results-{secrets.token_hex(4)}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "clients.loadtest",
            "--target",
            target,
            "--users",
            str(users),
            "--duration",
            f"{seconds}s",
            "--scenarios",
            mix,
            "--accounts",
            str(min(users, 20)),
            "--client-file",
            str(client_file),
            "--outbox",
            str(outbox),
            "--results",
            str(results),
            "--ceiling-seconds",
            "0",
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        timeout=seconds + 300,
    )
    stats = next(results.glob("loadtest-*/locust_stats.csv"))
    with stats.open() as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    total = rows["Aggregated"]
    requests = float(total["Request Count"]) or 1.0
    return Measured(float(total["Requests/s"]), float(total["Failure Count"]) / requests)


@contextmanager
def one_server(work: Path, workers: int) -> Iterator[tuple[str, Path, Path]]:
    """`serve` on loopback, embedded stores, `workers` workers: target, client file, outbox."""
    data = work / f"serve-{workers}"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_IDENTITY_")}
    env.update(
        {
            "XIAOHE_IDENTITY_LISTEN": f"127.0.0.1:{port}",
            "XIAOHE_IDENTITY_METRICS_LISTEN": f"127.0.0.1:{_free_port()}",
            "XIAOHE_IDENTITY_DATA_DIR": str(data),
            "XIAOHE_IDENTITY_WORKERS": str(workers),
            "XIAOHE_IDENTITY_LOG_LEVEL": "WARNING",
            "XIAOHE_IDENTITY_ACCESS_LOG": "false",
        }
    )
    log = (work / f"serve-{workers}.log").open("wb")
    process = subprocess.Popen([CLI, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        target = f"127.0.0.1:{port}"
        _wait_serving(target)
        yield target, data / "bootstrap-client.json", data / "outbox" / "sms.jsonl"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _hosts_missing() -> str:
    """Why the hosts part cannot run here, or '' when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "redis-cli"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if not Path(PG_SOCKET_DIR, ".s.PGSQL.5432").exists():
        return "PostgreSQL's Unix socket is not there"
    if not os.environ.get("XIAOHE_TEST_POSTGRES_URL"):
        return "XIAOHE_TEST_POSTGRES_URL (a PostgreSQL database to use) is not set"
    return ""


async def _admin(statement: str) -> None:
    engine = create_engine(os.environ["XIAOHE_TEST_POSTGRES_URL"], statement_timeout_ms=0)
    async with engine.begin() as conn:
        await conn.execute(text(statement))
    await engine.dispose()


@contextmanager
def hosts(work: Path, count: int) -> Iterator[tuple[str, Path, Path]]:
    """`count` hosts of 2 workers on PostgreSQL and a Redis Cluster: target(s), client, outbox."""
    schema = f"scale_{secrets.token_hex(5)}"
    asyncio.run(_admin(f'CREATE SCHEMA "{schema}"'))
    pg = os.environ["XIAOHE_TEST_POSTGRES_URL"]
    user, _, rest = pg.split("://", 1)[1].partition("@")
    database = rest.split("/", 1)[1].split("?", 1)[0]
    run_dir = work / f"hosts-{count}"
    subnet = f"10.{200 + secrets.randbelow(50)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_IDENTITY_")}
    env.update(
        {
            "RUN_DIR": str(run_dir),
            "HOSTS": str(count),
            "WORKERS": "2",
            "NAME": f"xs{secrets.token_hex(3)}",
            "SUBNET": subnet,
            "SHARED_OUTBOX": "1",
            "XIAOHE_IDENTITY_DATABASE_URL": (
                f"postgresql://{user}@/{database}?host={PG_SOCKET_DIR}&schema={schema}"
            ),
            "XIAOHE_IDENTITY_REDIS_CLUSTER": "true",
            "XIAOHE_IDENTITY_KEYRING_FILE": str(run_dir / "keyring.json"),
            "XIAOHE_IDENTITY_DATA_DIR": str(run_dir / "cli"),
            "XIAOHE_IDENTITY_LOG_LEVEL": "WARNING",
            "XIAOHE_IDENTITY_ACCESS_LOG": "false",
        }
    )
    cluster = LocalRedisCluster(work / f"redis-{count}", host=f"{subnet}.1.1")

    def script(*args: str) -> str:
        done = subprocess.run(
            ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"local-cluster.sh {args[0]}: {done.stderr.strip()}")
        return done.stdout

    try:
        run_dir.mkdir(parents=True)
        script("net")
        env["XIAOHE_IDENTITY_REDIS_URL"] = cluster.start()
        subprocess.run([CLI, "keys", "init"], env=env, check=True, capture_output=True)
        created = subprocess.run(
            [CLI, "clients", "create", "scaling", "--grant", "*"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        client_file = run_dir / "client.json"
        client_file.write_text(created.stdout)
        targets = script("start").split()
        for target in targets:
            _wait_serving(target)
        yield ",".join(targets), client_file, run_dir / "outbox" / "sms.jsonl"
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, check=False)
        cluster.stop()
        asyncio.run(_admin(f'DROP SCHEMA "{schema}" CASCADE'))


def _cell(m: Measured) -> str:
    failed = f" ({m.failed:.0%} failed)" if m.failed >= 0.005 else ""
    return f"{m.per_second:.0f}/s{failed}"


def write_section(
    path: Path, rows: list[tuple[str, dict[str, Measured]]], note: str, users: int, seconds: int
) -> None:
    """Replace (or add) the Scaling section of docs/performance.md."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        f"Written by `make scaling` ({now}).",
        f"Machine: {machine()}.",
        f"Each cell is one run of the load-test client (Locust, {users} users, {seconds} s,",
        "no think time) with one mix: `login` is password logins (Argon2id at the OWASP",
        "defaults), `ValidateToken` a business system validating its users' tokens.",
        "",
        "| deployment | login | ValidateToken |",
        "|---|---|---|",
        *(f"| {name} | {_cell(m['login'])} | {_cell(m['ValidateToken'])} |" for name, m in rows),
        "",
        f"Every row ran on the same {os.cpu_count()} cores as the load generator, Redis and",
        "PostgreSQL, so more workers or hosts here add no CPU: the rows show what",
        "coordination costs (more processes, network namespaces, a cluster instead of one",
        "Redis, PostgreSQL instead of SQLite), not how far it scales. A scale-out figure",
        "needs hosts with cores of their own; the same command measures it there.",
        "",
    ]
    if note:
        lines += [note, ""]
    section = "\n".join(lines)
    text_now = path.read_text() if path.exists() else ""
    head = text_now.split(SECTION, 1)[0].rstrip("\n")
    path.write_text(f"{head}\n\n{section}" if head else section)


def main(users: int, seconds: int, report: Path | None) -> None:
    """Measure every deployment shape and print (and write) the table."""
    rows: list[tuple[str, dict[str, Measured]]] = []
    with tempfile.TemporaryDirectory(prefix="xiaohe-scaling-") as tmp:
        work = Path(tmp)
        for workers in (1, 2, 4):
            with one_server(work, workers) as (target, client, outbox):
                measured = {
                    name: loadtest(target, mix, client, outbox, work, users, seconds)
                    for name, mix in MIXES.items()
                }
            rows.append((f"1 server, {workers} worker{'s' if workers > 1 else ''}", measured))
            print(rows[-1][0], {k: _cell(v) for k, v in measured.items()}, flush=True)
        missing = _hosts_missing()
        note = ""
        if missing:
            note = f"The hosts rows were not measured: {missing}."
            print(note, flush=True)
        else:
            for count in (1, 2):
                with hosts(work, count) as (target, client, outbox):
                    measured = {
                        name: loadtest(target, mix, client, outbox, work, users, seconds)
                        for name, mix in MIXES.items()
                    }
                plural = "s" if count > 1 else ""
                name = f"{count} host{plural} × 2 workers, PostgreSQL + Redis Cluster"
                rows.append((name, measured))
                print(name, {k: _cell(v) for k, v in measured.items()}, flush=True)
    if report is not None:
        write_section(report, rows, note, users, seconds)
        print(f"written to {report}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    main(args.users, args.seconds, args.report)
