"""The serving status a worker reports: gRPC health (`grpc.health.v1`) and the HTTP `/healthz`.

NOT_SERVING from the moment the port opens until the worker is fully started and
its stores answer; then the stores are checked every `interval` seconds, and the
status follows them both ways (NOT_SERVING while a check fails, SERVING again
once one passes), for the whole server ("") and every service name alike. A
readiness probe therefore never sends calls to a worker that would fail them
for want of a store, and the supervisor's "serving" line (sent when every
worker first reports SERVING) agrees with the probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

log = logging.getLogger("xiaohe.identity.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

StoreProblems = Callable[[], Awaitable[list[str]]]
"""A check of the stores: what cannot serve now, one phrase each; empty when all can."""


class HealthReporter:
    """Sets the health of `services` from periodic store checks; see the module docstring."""

    def __init__(
        self,
        servicer: HealthServicer,
        services: Sequence[str],
        problems: StoreProblems,
        interval: float,
    ) -> None:
        self._servicer = servicer
        self._services = ("", *services)
        self._problems = problems
        self._interval = interval
        self._on_change: list[Callable[[bool], None]] = []
        self._serving: bool | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.first_serving = asyncio.Event()
        """Set the first time the worker reports SERVING (its readiness)."""

    def on_change(self, notify: Callable[[bool], None]) -> None:
        """Call `notify(serving)` on every change from now on (the HTTP `/healthz`)."""
        self._on_change.append(notify)
        if self._serving is not None:
            notify(self._serving)

    @property
    def serving(self) -> bool:
        """Whether the last report was SERVING."""
        return bool(self._serving)

    async def not_serving(self) -> None:
        """Report NOT_SERVING (before start-up completes, and when stopping)."""
        await self._report(False)

    async def check(self) -> bool:
        """Check the stores once and report the outcome; returns whether it is SERVING."""
        problems = await self._problems()
        if problems and self._serving is not False:
            log.warning("stores cannot serve: %s; health NOT_SERVING", ", ".join(problems))
        elif not problems and self._serving is False:
            log.info("stores answer; health SERVING")
        await self._report(not problems)
        return not problems

    def start(self) -> None:
        """Check every `interval` seconds in the background until `stop`."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop checking, then report NOT_SERVING for good."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._serving = None  # a report cut short by the cancellation is redone in full
        await self.not_serving()

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self._interval)
            if self._stop.is_set():
                return
            try:
                await self.check()
            except Exception as exc:  # a check that cannot run is a failed check
                log.warning("store check failed: %s", type(exc).__name__)
                await self._report(False)

    async def _report(self, serving: bool) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        for name in self._services:
            await self._servicer.set(name, SERVING if serving else NOT_SERVING)
        for notify in self._on_change:
            notify(serving)
        if serving:
            self.first_serving.set()


__all__ = ["NOT_SERVING", "SERVING", "HealthReporter", "StoreProblems"]
