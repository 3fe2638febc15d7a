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
3. The supervisor calls `start_metrics_server(listen, path, worker_pids)`, which
   serves the merged view of the directory on `/metrics` (any other path is 404),
   with the supervisor's own figures beside it: `process_*` of every process and
   the build (`runtime_metrics.py`).

Counters and histograms are summed across processes, and the files of exited
workers stay so counters never go backwards. The one gauge (overdue rights
requests) counts shared rows, so it is merged as the largest live value.

Label values must come from bounded sets (RPC method names, status code names,
enum outcomes, policy names), never from request data. As a guard, a value that
does not look like such a name (e.g. it starts with a digit or `+`, contains `@`
or a run of five or more digits) is recorded as `other`, so a phone number or a
code can never become a label and no caller can blow up the series count with it.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import MetricsHandler
from prometheus_client.multiprocess import MultiProcessCollector

from xiaohe.identity.server.observability.runtime_metrics import (
    BuildInfoCollector,
    ProcessesCollector,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"

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

RECEIPT_LATENCY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
"""Seconds from a provider's acceptance to the handset (most SMS arrive within 10 s)."""

_NETWORK = re.compile(r"(\d{1,3})-(\d{3})\d*")


def network_label(prefix: str) -> str:
    """The country code and 3-digit network prefix of a number prefix: "86-1381234" → "86-138".

    The 7-digit prefix (号段) has up to 10,000 values per country: too many series for
    Prometheus. Three digits name the network (138: China Mobile) and are bounded; the
    per-7-digit figures come from SQL (`xiaohe-identity delivery stats`).
    """
    match = _NETWORK.fullmatch(prefix)
    return f"{match.group(1)}-{match.group(2)}" if match else _OTHER


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
            "Calls to the identity services' RPCs (health and reflection not counted), "
            "by method name (IssueCode) and gRPC status code name (OK, INVALID_ARGUMENT, ...).",
            ["method", "code"],
            registry=registry,
        )
        self._rpc_duration = Histogram(
            "xiaohe_rpc_duration_seconds",
            "Seconds from an RPC's arrival to its answer, caller authentication included, "
            "by method name (IssueCode).",
            ["method"],
            buckets=RPC_DURATION_BUCKETS,
            registry=registry,
        )
        self._codes_issued = Counter(
            "xiaohe_codes_issued",
            "One-time codes issued (IssueCode answered OK, whether the message was queued or "
            "withheld), by channel (SMS, EMAIL) and purpose.",
            ["channel", "purpose"],
            registry=registry,
        )
        self._codes_verified = Counter(
            "xiaohe_codes_verified",
            "Code verifications, by channel, purpose and outcome "
            "(ok, mismatch, missing, exhausted, rate_limited).",
            ["channel", "purpose", "outcome"],
            registry=registry,
        )
        self._limit_rejections = Counter(
            "xiaohe_limit_rejections",
            "Code issue and verify requests refused by a rate limit or an SMS-pumping budget, "
            "by policy name (code.issue.destination, code.verify.ip, code.issue.prefix, ...).",
            ["policy"],
            registry=registry,
        )
        self._deliveries = Counter(
            "xiaohe_deliveries",
            "Outbox deliveries to a provider, by provider and outcome: final (sent, failed, "
            "expired, unknown) or retry (a failed attempt that will be tried again).",
            ["provider", "outcome"],
            registry=registry,
        )
        self._logins = Counter(
            "xiaohe_logins",
            "Login attempts, by method (password, sms) and outcome "
            "(ok, invalid_credentials, unknown_account, account_inactive, ...).",
            ["method", "outcome"],
            registry=registry,
        )
        # -- delivery receipts (issue 10) --
        self._receipts = Counter(
            "xiaohe_delivery_receipts",
            "Delivery receipts recorded, by provider, network (country code and 3-digit "
            "network prefix, 86-138) and state (delivered, failed, ...).",
            ["provider", "network", "state"],
            registry=registry,
        )
        self._receipt_latency = Histogram(
            "xiaohe_delivery_receipt_latency_seconds",
            "Seconds from our send to the handset's receipt (as the carrier reports it), "
            "by provider and network (86-138).",
            ["provider", "network"],
            buckets=RECEIPT_LATENCY_BUCKETS,
            registry=registry,
        )
        self._receipts_ignored = Counter(
            "xiaohe_delivery_receipts_ignored",
            "Delivery receipts that changed nothing, by source (provider) and reason "
            "(duplicate, unknown_message, malformed, invalid_json).",
            ["source", "reason"],
            registry=registry,
        )
        self._callback_requests = Counter(
            "xiaohe_callback_requests",
            "Requests to the delivery-receipt HTTP listener, by route and answer (ok, "
            "secret_refused, source_refused, too_large, invalid_json, unavailable, error).",
            ["route", "outcome"],
            registry=registry,
        )
        # -- end delivery receipts --
        # SMS-pumping defence (ratelimit/pumping.py); labels are reasons, never prefixes.
        self._prefix_blocks = Counter(
            "xiaohe_pumping_prefix_blocks",
            "Blocks placed on a number prefix by the SMS-pumping watch, by reason "
            "(conversion, failed_receipts).",
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
            "Requests whose bytes do not parse as the method's request message (refused as "
            "INVALID_ARGUMENT), by method name (IssueCode); health and reflection included.",
            ["method"],
            registry=registry,
        )
        # -- SMS providers: failover and circuit breakers (issue 10 §3) --
        self._provider_attempts = Counter(
            "xiaohe_provider_attempts",
            "Calls to a provider in a failover chain, by provider and outcome "
            "(accepted, failed, rejected, unknown, skipped, unsupported).",
            ["provider", "outcome"],
            registry=registry,
        )
        self._breaker_transitions = Counter(
            "xiaohe_provider_breaker_transitions",
            "Circuit-breaker state changes, by provider and new state (closed, open, "
            "half_open); each worker keeps its own breakers, the sum over workers is shown.",
            ["provider", "state"],
            registry=registry,
        )
        # -- issue 14: retention --
        self._retention_removed = Counter(
            "xiaohe_retention_removed",
            "Items the retention sweep removed, by kind (sessions, outbox, review_cases, "
            "documents, document_files, holder_consents, disclosures, audit_log).",
            ["kind"],
            registry=registry,
        )
        # -- end retention --

        # -- issue 14: rights requests --
        # A gauge, not a counter: every worker counts the same rows of the shared database,
        # so the merged view takes the largest value of the live workers ("livemax").
        self._requests_overdue = Gauge(
            "xiaohe_privacy_requests_overdue",
            "Rights requests (PrivacyService.FileRequest) still open after their due date "
            "(15 working days), as counted by the newest refresh of the live workers.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._calendar_missing = Counter(
            "xiaohe_privacy_calendar_missing_years",
            "Due dates computed across a year without a working-day calendar file (weekends "
            "only: install the year's file, see the operator guide).",
            registry=registry,
        )
        # -- end rights requests --

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

    # -- delivery receipts (issue 10) --

    def receipt(self, provider: str, prefix: str, state: str, latency: float | None) -> None:
        """Count one recorded receipt and observe its latency (seconds, when known)."""
        p, network = bounded_label(provider), network_label(prefix)
        self._receipts.labels(provider=p, network=network, state=bounded_label(state)).inc()
        if latency is not None:
            self._receipt_latency.labels(provider=p, network=network).observe(max(0.0, latency))

    def receipt_ignored(self, source: str, reason: str, count: int = 1) -> None:
        """Count receipts that changed nothing (duplicate, unknown message, malformed)."""
        if count > 0:
            self._receipts_ignored.labels(
                source=bounded_label(source), reason=bounded_label(reason)
            ).inc(count)

    def callback_request(self, route: str, outcome: str) -> None:
        """Count one HTTP callback request and how it was answered."""
        self._callback_requests.labels(
            route=bounded_label(route), outcome=bounded_label(outcome)
        ).inc()

    # -- end delivery receipts --
    def provider_attempt(self, provider: str, outcome: str) -> None:
        """Count one call (or skip) of a provider in a failover chain."""
        self._provider_attempts.labels(
            provider=bounded_label(provider), outcome=bounded_label(outcome)
        ).inc()

    def breaker_state(self, provider: str, state: str) -> None:
        """Count one circuit-breaker transition of a provider (per process)."""
        self._breaker_transitions.labels(
            provider=bounded_label(provider), state=bounded_label(state)
        ).inc()

    # -- issue 14: retention --
    def retention_removed(self, kind: str, count: int) -> None:
        """Count items of one kind removed by the retention sweep."""
        if count > 0:
            self._retention_removed.labels(kind=bounded_label(kind)).inc(count)

    # -- end retention --

    # -- issue 14: rights requests --
    def privacy_requests_overdue(self, count: int) -> None:
        """Set the number of open rights requests past their due date."""
        self._requests_overdue.set(count)

    def privacy_calendar_missing(self) -> None:
        """Count one due date computed partly without a calendar file."""
        self._calendar_missing.inc()

    # -- end rights requests --
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


class _MetricsOnlyHandler(MetricsHandler):
    """prometheus_client's handler on `/metrics` alone; any other path is 404."""

    def do_GET(self) -> None:
        """The exposition on `/metrics` (query parameters allowed), else 404."""
        if urlsplit(self.path).path == METRICS_PATH:
            super().do_GET()
            return
        body = f"not found: metrics are served on {METRICS_PATH}\n".encode()
        self.send_response(404)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


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


class MetricsListenError(Exception):
    """The metrics endpoint cannot listen on its address; the message is one line saying why."""


def _listen_failure(listen: str, exc: OSError) -> str:
    """One line for an operator: which address, and what is wrong with it."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host of {listen}"
    if exc.errno == errno.EADDRINUSE:
        return f"{listen} is in use by another process"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{listen} is not an address of this host"
    if exc.errno == errno.EACCES:
        return f"no permission to listen on {listen}"
    return f"cannot listen on {listen}: {exc.strerror or type(exc).__name__}"


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("metrics listen address must be host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def start_metrics_server(
    listen: str, multiproc_dir: Path, worker_pids: Callable[[], Sequence[int]] = tuple
) -> MetricsServer:
    """Serve the merged metrics of `multiproc_dir` on `listen` (host:port; port 0 picks one).

    Beside the workers' metrics: the build info and `process_*` of this process
    and of the workers `worker_pids()` names at scrape time, one per slot.
    A small threaded `http.server` with prometheus_client's handler; it answers GET
    on `/metrics` only (404 elsewhere) and logs nothing. An address that
    cannot be bound (in use, not local, no permission) raises MetricsListenError
    with one line naming it; nothing is left listening.
    """
    host, port = _split_listen(listen)
    multiproc_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    registry.register(BuildInfoCollector())
    registry.register(ProcessesCollector(worker_pids))
    server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
    try:
        # socketserver closes the socket itself when binding fails.
        httpd = server_class((host, port), _MetricsOnlyHandler.factory(registry))
    except OSError as exc:
        raise MetricsListenError(_listen_failure(listen, exc)) from None
    httpd.daemon_threads = True
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="metrics-http", daemon=True
    )
    thread.start()
    return MetricsServer(host=host, port=int(httpd.server_address[1]), _httpd=httpd, _thread=thread)


__all__ = [
    "METRICS_PATH",
    "MULTIPROC_ENV",
    "RECEIPT_LATENCY_BUCKETS",
    "RPC_DURATION_BUCKETS",
    "Metrics",
    "MetricsListenError",
    "MetricsServer",
    "bounded_label",
    "collect_multiprocess",
    "network_label",
    "prepare_multiproc_dir",
    "start_metrics_server",
]
