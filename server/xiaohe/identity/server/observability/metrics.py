"""Prometheus metrics, written by every worker process and served by the supervisor.

Every metric lives in a `CollectorRegistry` owned by one `Metrics` object; nothing
touches prometheus_client's global default registry, so tests build their own.

Multi-process mode. The server runs N worker processes and one supervisor that
serves `/metrics` (default 127.0.0.1:9464). Workers cannot share memory, so each
writes its values to memory-mapped files in a shared directory and the supervisor
merges them on every scrape (`MultiProcessCollector`). prometheus_client decides
between in-memory and file-backed values through the environment variable
`PROMETHEUS_MULTIPROC_DIR`, read when `prometheus_client` is first imported and
again whenever a value file is opened. The procedure is therefore:

1. The supervisor calls `prepare_multiproc_dir(path)` before spawning workers: it
   creates the directory, deletes files left by an earlier run (otherwise old
   counts would be added to the new ones) and sets the environment variable, which
   the workers inherit.
2. Each worker calls `Metrics.for_worker(path)`. It sets the variable if the
   worker was started without it, refuses a variable that names another
   directory, and switches prometheus_client to file-backed values if it had
   already been imported without the variable. Metrics created afterwards in that
   process are file-backed (the library's choice is per process, so this includes
   any `Metrics.in_memory()` created there later; those still render correctly).
3. The supervisor calls `start_metrics_server(listen, path)`, which serves the
   merged view of the directory.

Only counters and histograms are used; both are summed across processes, and the
files of exited workers stay so counters never go backwards.

Label values must come from bounded sets (RPC method names, status code names,
enum outcomes, policy names), never from request data. As a guard, a value that
does not look like such a name (e.g. it starts with a digit or `+`, contains `@`
or a run of five or more digits) is recorded as `other`, so a phone number or a
code can never become a label and no caller can blow up the series count with it.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import MetricsHandler
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LABEL_OK = re.compile(r"/?[A-Za-z][A-Za-z0-9_./:-]{0,99}")
_LONG_DIGITS = re.compile(r"\d{5,}")
_OTHER = "other"

RPC_DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def bounded_label(value: str) -> str:
    """The value itself if it looks like a name from a bounded set, else `other`."""
    if _LABEL_OK.fullmatch(value) and not _LONG_DIGITS.search(value):
        return value
    return _OTHER


def prepare_multiproc_dir(multiproc_dir: Path) -> None:
    """Supervisor start-up: create and empty the metrics directory and export its path.

    Call before spawning workers, so they inherit `PROMETHEUS_MULTIPROC_DIR`.
    """
    multiproc_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in multiproc_dir.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(multiproc_dir.resolve())


def _enable_multiprocess_values(multiproc_dir: Path) -> None:
    """Make metrics created from now on in this process write to files in `multiproc_dir`."""
    wanted = str(multiproc_dir.resolve())
    current = os.environ.get(MULTIPROC_ENV)
    if current is None:
        os.environ[MULTIPROC_ENV] = wanted
    elif Path(current).resolve() != Path(wanted):
        raise ValueError(
            f"{MULTIPROC_ENV} points to another directory than the configured metrics directory"
        )
    multiproc_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not getattr(prometheus_values.ValueClass, "_multiprocess", False):
        # prometheus_client was imported before the variable was set; pick the class it
        # would have picked at import. Metric values read this attribute when created.
        prometheus_values.ValueClass = prometheus_values.MultiProcessValue()  # type: ignore[no-untyped-call]


class Metrics:
    """The server's counters and histograms, in one injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._rpc_requests = Counter(
            "xiaohe_rpc_requests",
            "RPCs handled, by full method name and status code name.",
            ["method", "code"],
            registry=registry,
        )
        self._rpc_duration = Histogram(
            "xiaohe_rpc_duration_seconds",
            "Time to handle an RPC, by full method name.",
            ["method"],
            buckets=RPC_DURATION_BUCKETS,
            registry=registry,
        )
        self._codes_issued = Counter(
            "xiaohe_codes_issued",
            "One-time codes issued, by channel and purpose.",
            ["channel", "purpose"],
            registry=registry,
        )
        self._codes_verified = Counter(
            "xiaohe_codes_verified",
            "One-time code verifications, by channel, purpose and outcome.",
            ["channel", "purpose", "outcome"],
            registry=registry,
        )
        self._limit_rejections = Counter(
            "xiaohe_limit_rejections",
            "Requests refused by a rate limit, by policy name.",
            ["policy"],
            registry=registry,
        )
        self._deliveries = Counter(
            "xiaohe_deliveries",
            "Message delivery attempts, by provider and outcome.",
            ["provider", "outcome"],
            registry=registry,
        )
        self._logins = Counter(
            "xiaohe_logins",
            "Login attempts, by method and outcome.",
            ["method", "outcome"],
            registry=registry,
        )
        # SMS-pumping defence (ratelimit/pumping.py); labels are reasons, never prefixes.
        self._prefix_blocks = Counter(
            "xiaohe_pumping_prefix_blocks",
            "Number prefixes throttled by the SMS-pumping watch, by reason.",
            ["reason"],
            registry=registry,
        )
        self._prefix_block_lifts = Counter(
            "xiaohe_pumping_prefix_block_lifts",
            "Prefix blocks lifted by an operator while in force.",
            registry=registry,
        )
        self._failed_receipts_watched = Counter(
            "xiaohe_pumping_failed_receipts",
            "Failed delivery receipts fed to the SMS-pumping watch.",
            registry=registry,
        )
        self._undecodable_requests = Counter(
            "xiaohe_undecodable_requests",
            "Requests whose bytes do not parse as the method's request message, by method.",
            ["method"],
            registry=registry,
        )

    @classmethod
    def in_memory(cls) -> Metrics:
        """Metrics in a fresh registry of their own (tests, single-process use)."""
        return cls(CollectorRegistry())

    @classmethod
    def for_worker(cls, multiproc_dir: Path) -> Metrics:
        """Metrics of a worker process, written to `multiproc_dir` for the supervisor to serve."""
        _enable_multiprocess_values(multiproc_dir)
        return cls(CollectorRegistry())

    def rpc(self, method: str, code: str, seconds: float) -> None:
        """Count one finished RPC and observe its duration."""
        m = bounded_label(method)
        self._rpc_requests.labels(method=m, code=bounded_label(code)).inc()
        self._rpc_duration.labels(method=m).observe(max(0.0, seconds))

    def code_issued(self, channel: str, purpose: str) -> None:
        """Count one issued code."""
        self._codes_issued.labels(
            channel=bounded_label(channel), purpose=bounded_label(purpose)
        ).inc()

    def code_verified(self, channel: str, purpose: str, outcome: str) -> None:
        """Count one code verification and its outcome."""
        self._codes_verified.labels(
            channel=bounded_label(channel),
            purpose=bounded_label(purpose),
            outcome=bounded_label(outcome),
        ).inc()

    def limit_rejected(self, policy: str) -> None:
        """Count one request refused by a rate-limit policy."""
        self._limit_rejections.labels(policy=bounded_label(policy)).inc()

    def delivery(self, provider: str, outcome: str) -> None:
        """Count one delivery attempt and its outcome."""
        self._deliveries.labels(
            provider=bounded_label(provider), outcome=bounded_label(outcome)
        ).inc()

    def login(self, method: str, outcome: str) -> None:
        """Count one login attempt and its outcome."""
        self._logins.labels(method=bounded_label(method), outcome=bounded_label(outcome)).inc()

    def prefix_blocked(self, reason: str) -> None:
        """Count one prefix throttled by the SMS-pumping watch."""
        self._prefix_blocks.labels(reason=bounded_label(reason)).inc()

    def prefix_block_lifted(self) -> None:
        """Count one prefix block lifted by an operator."""
        self._prefix_block_lifts.inc()

    def failed_receipt_watched(self) -> None:
        """Count one failed delivery receipt fed to the SMS-pumping watch."""
        self._failed_receipts_watched.inc()

    def undecodable_request(self, method: str) -> None:
        """Count one request refused because its bytes are not a message of its type."""
        self._undecodable_requests.labels(method=bounded_label(method)).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry (this process's values only)."""
        return bytes(generate_latest(self.registry))


def collect_multiprocess(multiproc_dir: Path) -> bytes:
    """The text exposition merged from every process's files in `multiproc_dir`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    return bytes(generate_latest(registry))


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@dataclass(frozen=True)
class MetricsServer:
    """The supervisor's `/metrics` HTTP server; `close()` stops it and frees the port."""

    host: str
    port: int
    _httpd: ThreadingHTTPServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving and release the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("metrics listen address must be host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def start_metrics_server(listen: str, multiproc_dir: Path) -> MetricsServer:
    """Serve the merged metrics of `multiproc_dir` on `listen` (host:port; port 0 picks one).

    A small threaded `http.server` with prometheus_client's handler; it answers GET
    on any path (Prometheus scrapes `/metrics`) and logs nothing.
    """
    host, port = _split_listen(listen)
    multiproc_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
    httpd = server_class((host, port), MetricsHandler.factory(registry))
    httpd.daemon_threads = True
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="metrics-http", daemon=True
    )
    thread.start()
    return MetricsServer(host=host, port=int(httpd.server_address[1]), _httpd=httpd, _thread=thread)


__all__ = [
    "MULTIPROC_ENV",
    "RPC_DURATION_BUCKETS",
    "Metrics",
    "MetricsServer",
    "bounded_label",
    "collect_multiprocess",
    "prepare_multiproc_dir",
    "start_metrics_server",
]
