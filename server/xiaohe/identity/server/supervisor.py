"""`xiaohe-identity serve`: prepares the data dir and stores, then runs N worker processes.

Before anything else it takes what one instance owns alone (ownership.py): the
data directory's lock and its listening ports, so a second `serve` on either stops
with one line and starts nothing. Preparation then happens once, here, before any
worker starts: the embedded Redis (when no URL is set), the key ring, migrations,
the bootstrap client (embedded store only: with an external database clients are
made with the CLI) and the metrics endpoint. Workers share the gRPC port
(SO_REUSEPORT). "serving" is logged once every worker has said it serves (its
health is SERVING), so the line and readiness probes agree. SIGTERM/SIGINT stop
the workers gracefully, then the embedded Redis; the lock goes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from xiaohe.identity.server.callers.registry import ClientRegistry
from xiaohe.identity.server.clock import SystemClock
from xiaohe.identity.server.config import ENV_PREFIX, Settings
from xiaohe.identity.server.container import open_keyring
from xiaohe.identity.server.observability.metrics import (
    prepare_multiproc_dir,
    start_metrics_server,
)
from xiaohe.identity.server.ownership import DataDirLock, PortReservation, reserve_port
from xiaohe.identity.server.privacy.policies import PolicyStore
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.migrate import upgrade_async
from xiaohe.identity.server.worker import MULTIPROC_ENV, WORKER_INDEX_ENV

log = logging.getLogger("xiaohe.identity.supervisor")

BOOTSTRAP_FILE = "bootstrap-client.json"
WORKER_MODULE = "xiaohe.identity.server.worker"


def write_private_file(path: Path, text: str) -> None:
    """Write a file readable only by its owner (0600), atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


async def ensure_bootstrap_client(settings: Settings, database: Database) -> Path:
    """Create the all-grants bootstrap client once; its id and secret go to a 0600 file.

    Only when the file does not exist: an operator who revoked the bootstrap client
    must not get it back by restarting. To make a new one on purpose, revoke it and delete
    the file.
    """
    path = settings.data_dir / BOOTSTRAP_FILE
    if path.exists():
        return path
    registry = ClientRegistry(database, SystemClock())
    client, secret = await registry.create("bootstrap", ["*"])
    write_private_file(
        path,
        json.dumps(
            {
                "client_id": client.client_id,
                "client_secret": secret,
                "grants": sorted(client.grants),
                "target": settings.listen,
            },
            indent=2,
        )
        + "\n",
    )
    return path


async def prepare(settings: Settings) -> None:
    """Key ring, migrations and (embedded store only) the bootstrap client, before workers start.

    The key ring comes first: with an external database and no ring file, start-up
    stops before anything is written (SECURITY F5).
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    open_keyring(settings, SystemClock())
    url = settings.effective_database_url
    await upgrade_async(url, lock_file=settings.data_dir / ".migrate.lock")
    database = Database.from_url(url)
    try:
        await PolicyStore(database, SystemClock()).ensure_seeded()
        if settings.embedded_store:
            await ensure_bootstrap_client(settings, database)
    finally:
        await database.close()


def _worker_env(settings: Settings, redis_url: str, multiproc_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env[f"{ENV_PREFIX}REDIS_URL"] = redis_url
    env[f"{ENV_PREFIX}DATA_DIR"] = str(settings.data_dir.resolve())
    # The ports reserved (port 0 resolved), so that every worker listens on the same one.
    env[f"{ENV_PREFIX}LISTEN"] = settings.listen
    if settings.callback_listen:
        env[f"{ENV_PREFIX}CALLBACK_LISTEN"] = settings.callback_listen
    env[MULTIPROC_ENV] = str(multiproc_dir)
    env.setdefault("GRPC_VERBOSITY", "ERROR")  # grpc's own logging: quiet unless the operator says
    if settings.config_file:
        env[f"{ENV_PREFIX}CONFIG_FILE"] = settings.config_file
    return env


@dataclass
class Worker:
    """A worker process and whether it has said it serves (a line on its ready pipe)."""

    process: subprocess.Popen[bytes]
    ready: asyncio.Event

    @classmethod
    def spawn(cls, env: dict[str, str], index: int) -> Worker:
        """Start worker `index` with a pipe to say `ready` on; the event loop reads it.

        The index is on its log lines, and a restarted worker keeps it.
        """
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", WORKER_MODULE, "--ready-fd", str(write_fd)],
                env={**env, WORKER_INDEX_ENV: str(index)},
                pass_fds=(write_fd,),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        ready = asyncio.Event()

        def readable() -> None:
            try:
                said = os.read(read_fd, 64)
            except OSError:
                said = b""
            if said.startswith(b"ready"):
                ready.set()
            if not said or ready.is_set():
                loop.remove_reader(read_fd)
                os.close(read_fd)

        loop.add_reader(read_fd, readable)
        return cls(process, ready)


def _reserve_ports(settings: Settings) -> tuple[Settings, list[PortReservation]]:
    """Reserve the gRPC (and callback) ports; the settings carry the ports resolved."""
    grpc_port = reserve_port(settings.listen, f"{ENV_PREFIX}LISTEN")
    if not settings.callback_listen:
        return dataclasses.replace(settings, listen=grpc_port.listen), [grpc_port]
    try:
        callback_port = reserve_port(settings.callback_listen, f"{ENV_PREFIX}CALLBACK_LISTEN")
    except BaseException:
        grpc_port.release()
        raise
    resolved = dataclasses.replace(
        settings, listen=grpc_port.listen, callback_listen=callback_port.listen
    )
    return resolved, [grpc_port, callback_port]


async def serve(settings: Settings) -> int:
    """Run the whole server until SIGTERM/SIGINT; returns the exit status.

    Raises `AlreadyInUse` (nothing started) when another process holds the data
    directory or a listening port.
    """
    lock = DataDirLock.acquire(settings.data_dir)
    try:
        settings, reservations = _reserve_ports(settings)
    except BaseException:
        lock.release()
        raise
    try:
        return await _serve(settings)
    finally:
        for reservation in reservations:
            reservation.release()
        lock.release()


async def _serve(settings: Settings) -> int:
    embedded: EmbeddedRedis | None = None
    redis_url = settings.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(settings.data_dir / "redis")
        redis_url = await asyncio.to_thread(embedded.start)
    metrics_server = None
    workers: list[Worker] = []
    try:
        await prepare(settings)
        multiproc_dir = settings.data_dir / "metrics"
        prepare_multiproc_dir(multiproc_dir)
        metrics_server = start_metrics_server(
            settings.metrics_listen, multiproc_dir, lambda: [w.process.pid for w in workers]
        )
        env = _worker_env(settings, redis_url, multiproc_dir)
        count = settings.effective_workers
        workers = [Worker.spawn(env, i) for i in range(count)]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        announced = False
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0 if announced else 0.05)
            if not announced and all(w.ready.is_set() for w in workers):
                announced = True
                log.info(
                    "xiaohe identity serving",
                    extra={
                        "listen": settings.listen,
                        "workers": count,
                        "embedded_redis": bool(embedded),
                    },
                )
            for i, worker in enumerate(workers):
                if worker.process.poll() is not None and not stop.is_set():
                    log.error(
                        "worker exited; restarting", extra={"status": worker.process.returncode}
                    )
                    await asyncio.sleep(1.0)
                    workers[i] = Worker.spawn(env, i)
        return 0
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = settings.shutdown_grace_seconds + 5
        for worker in workers:
            try:
                await asyncio.to_thread(worker.process.wait, deadline)
            except subprocess.TimeoutExpired:
                worker.process.kill()
        if metrics_server is not None:
            metrics_server.close()
        if embedded is not None:
            embedded.stop()
        if workers:  # a start-up failure is the one line the CLI prints, nothing more
            log.info("xiaohe identity stopped")
