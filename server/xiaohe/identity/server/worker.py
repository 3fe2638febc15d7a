"""One worker process: serves gRPC on the shared port until SIGTERM/SIGINT.

The supervisor (`xiaohe-identity serve`) starts N of these with the same
settings in the environment; they share the listening port via SO_REUSEPORT.
Each one tells the supervisor it is ready by writing `ready` to the pipe given
as `--ready-fd`, the first time its health reports SERVING (started, and its
stores answer): the supervisor's "serving" line waits for every worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from xiaohe.identity.server.app import start_server
from xiaohe.identity.server.config import Settings, SettingsError, load_settings
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.observability.logging import configure_logging
from xiaohe.identity.server.observability.metrics import Metrics

log = logging.getLogger("xiaohe.identity.worker")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The worker's index (0..N-1), set by the supervisor; not a setting, so no XIAOHE_IDENTITY_ prefix.
WORKER_INDEX_ENV = "XIAOHE_WORKER_INDEX"


def worker_index(env: Mapping[str, str]) -> int | None:
    """The index the supervisor gave this worker, or None when started some other way."""
    text = env.get(WORKER_INDEX_ENV, "").strip()
    return int(text) if text.isdigit() else None


async def _announce_ready(ready: asyncio.Event, ready_fd: int | None, port: int) -> None:
    """Once `ready` is set: log it and tell the supervisor (one line on the pipe)."""
    await ready.wait()
    log.info("worker serving", extra={"port": port})
    if ready_fd is not None:
        with contextlib.suppress(OSError):  # a supervisor that is gone has nobody to tell
            os.write(ready_fd, b"ready\n")
        os.close(ready_fd)


async def run_worker(settings: Settings, redis_url: str, ready_fd: int | None = None) -> None:
    """Serve until told to stop, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    multiproc = os.environ.get(MULTIPROC_ENV)
    metrics = Metrics.for_worker(Path(multiproc)) if multiproc else Metrics.in_memory()
    container = Container(settings, redis_url=redis_url, metrics=metrics)
    running = await start_server(container, settings.listen)
    announce = asyncio.create_task(
        _announce_ready(running.reporter.first_serving, ready_fd, running.port)
    )
    await stop.wait()
    announce.cancel()
    log.info("worker stopping")
    await running.stop(settings.shutdown_grace_seconds)
    await container.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process (started by the supervisor)."""
    parser = argparse.ArgumentParser(prog="xiaohe-identity worker")
    parser.add_argument("--ready-fd", type=int, help="pipe to write `ready` to once serving")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"xiaohe-identity: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        settings.log_level,
        file=settings.log_file,
        worker=worker_index(os.environ),
        access_log=settings.access_log,
    )
    redis_url = settings.redis_url
    if not redis_url:
        print("xiaohe-identity worker: no Redis URL from the supervisor", file=sys.stderr)
        return 2
    asyncio.run(run_worker(settings, redis_url, args.ready_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
