"""The generator's own ceiling: the same Locust users against the bench's echo server.

Run in the same invocation as the real test, on the same machine, with the same
users, processes and channels, so that "the server managed N calls/s" is read
against "this generator can make at most M calls/s here": a run whose throughput is
near M measured the client, not the server. The echo server
(`benchmarks.harness.start_echo_server`) answers from a grpc.aio loop in a thread
of the driver; it does nothing per call, so its rate is what the client stack allows.
"""

from __future__ import annotations

import asyncio
import csv
import threading
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import start_echo_server
from clients.loadtest.locustrun import LocustRun


@dataclass(frozen=True)
class Ceiling:
    """Calls per second the generator made against the echo server."""

    calls_per_second: float
    seconds: int
    users: int
    processes: int


class EchoServerThread:
    """The bench's echo server on its own asyncio loop in a daemon thread."""

    def __init__(self) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="echo-server", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server, self.port = await start_echo_server()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop(0)

    def __enter__(self) -> EchoServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the echo server did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def total_rate(stats_csv: Path) -> float:
    """The Aggregated row's requests per second in a Locust `_stats.csv`."""
    with open(stats_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                return float(row["Requests/s"] or 0)
    return 0.0


def measure_ceiling(template: LocustRun, seconds: int, csv_prefix: Path) -> Ceiling:
    """Run `template`'s shape (users, processes, channels) as EchoUser for `seconds`."""
    with EchoServerThread() as echo:
        run = LocustRun(
            host=f"127.0.0.1:{echo.port}",
            user_class="EchoUser",
            users=template.users,
            spawn_rate=max(template.users, 1.0),
            seconds=seconds,
            csv_prefix=csv_prefix,
            processes=template.processes,
            options={k: v for k, v in template.options.items() if k == "xh-channels"},
        )
        run.run(log=Path(f"{csv_prefix}.log"))
    return Ceiling(total_rate(Path(f"{csv_prefix}_stats.csv")), seconds, run.users, run.processes)
