"""One worker process: serves gRPC on the shared port until SIGTERM/SIGINT.

The supervisor (`xiaohe-identity serve`) starts N of these with the same
settings in the environment; they share the listening port via SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
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


async def run_worker(settings: Settings, redis_url: str) -> None:
    """Serve until told to stop, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    multiproc = os.environ.get(MULTIPROC_ENV)
    metrics = Metrics.for_worker(Path(multiproc)) if multiproc else Metrics.in_memory()
    container = Container(settings, redis_url=redis_url, metrics=metrics)
    running = await start_server(container, settings.listen)
    log.info("worker serving", extra={"port": running.port})
    await stop.wait()
    log.info("worker stopping")
    await running.stop(settings.shutdown_grace_seconds)
    await container.close()


def main() -> int:
    """Entry point of a worker process (started by the supervisor)."""
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
    asyncio.run(run_worker(settings, redis_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
