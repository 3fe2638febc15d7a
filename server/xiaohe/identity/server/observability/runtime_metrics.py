"""What the supervisor reports at scrape time about its processes and its build.

Process metrics. prometheus_client's own `process_*` collector describes the one
process it runs in, and its multiprocess mode does not carry it across processes:
the supervisor's figures would say nothing about the workers, which do the work.
Workers writing process gauges into the multiprocess directory would need a timer
in every worker and would leave the last values of a dead worker behind. Instead
the supervisor, which serves `/metrics`, reads `/proc/<pid>` of itself and of each
worker when it is scraped (the same files and the same arithmetic as
prometheus_client's `ProcessCollector`, which does the reading), and labels each
sample with `process`: `supervisor`, `worker-0`, `worker-1`, … A label names a
worker slot, not a pid, so a restarted worker continues its slot's series (its CPU
counter restarts, which `rate()` handles). A process that has exited has no
samples. Outside Linux (no `/proc`) there are none at all.

Build info: `xiaohe_identity_build_info{version, python} 1`, the usual Prometheus
idiom for attaching the running version to other series in a query.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import Metric
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

DISTRIBUTION = "xiaohe-identity"
BUILD_INFO = "xiaohe_identity_build_info"
PROCESS_LABEL = "process"
SUPERVISOR = "supervisor"

_PROCESS_HELP = {
    "process_cpu_seconds": "CPU time used by the process (user and system), in seconds",
    "process_resident_memory_bytes": "Resident memory of the process, in bytes",
    "process_virtual_memory_bytes": "Virtual memory size of the process, in bytes",
    "process_start_time_seconds": "Start time of the process, in seconds since the Unix epoch",
    "process_open_fds": "File descriptors the process has open",
    "process_max_fds": "The process's limit on open file descriptors",
}
_BY_PROCESS = ", by process (supervisor, worker-0, worker-1, ...)."


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


def running_version() -> str:
    """The installed xiaohe-identity version, or `unknown` when it is not installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class BuildInfoCollector(Collector):
    """`xiaohe_identity_build_info{version, python} 1`."""

    def __init__(self, version: str | None = None, python: str | None = None) -> None:
        self._version = version if version is not None else running_version()
        self._python = python if python is not None else platform.python_version()

    def collect(self) -> Iterable[Metric]:
        """The one build-info sample."""
        family = GaugeMetricFamily(
            BUILD_INFO,
            "Always 1; its labels name the running build: the xiaohe-identity version "
            "and the Python version.",
            labels=["version", "python"],
        )
        family.add_metric([self._version, self._python], 1.0)
        return [family]


class ProcessesCollector(Collector):
    """`process_*` of the supervisor and each worker slot, read from /proc at scrape time."""

    def __init__(
        self, worker_pids: Callable[[], Sequence[int]], proc: str = "/proc", own_pid: int = 0
    ) -> None:
        self._worker_pids = worker_pids
        self._proc = proc
        self._own_pid = own_pid or os.getpid()

    def _processes(self) -> list[tuple[str, int]]:
        named = [(SUPERVISOR, self._own_pid)]
        named.extend((f"worker-{slot}", pid) for slot, pid in enumerate(self._worker_pids()))
        return named

    def collect(self) -> Iterable[Metric]:
        """One family per process metric, one sample per live process."""
        families: dict[str, Metric] = {}
        for name, pid in self._processes():
            reader = ProcessCollector(pid=_constant(pid), proc=self._proc, registry=None)
            for family in reader.collect():
                merged = families.get(family.name)
                if merged is None:
                    base = _PROCESS_HELP.get(family.name, family.documentation.rstrip("."))
                    merged = Metric(family.name, base + _BY_PROCESS, family.type)
                    families[family.name] = merged
                for sample in family.samples:
                    merged.add_sample(
                        sample.name, {**sample.labels, PROCESS_LABEL: name}, sample.value
                    )
        return list(families.values())


__all__ = [
    "BUILD_INFO",
    "PROCESS_LABEL",
    "SUPERVISOR",
    "BuildInfoCollector",
    "ProcessesCollector",
    "running_version",
]
