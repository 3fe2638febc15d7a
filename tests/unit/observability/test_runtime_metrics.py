"""The supervisor's endpoint: `/metrics` only, build info, process_* per process, HELP texts."""

from __future__ import annotations

import platform
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from xiaohe.identity.server.codes.store import VerifyOutcome
from xiaohe.identity.server.delivery import dispatcher
from xiaohe.identity.server.observability.metrics import (
    Metrics,
    MetricsServer,
    start_metrics_server,
)
from xiaohe.identity.server.observability.runtime_metrics import running_version
from xiaohe.identity.server.ratelimit.pumping import REASON_CONVERSION, REASON_FAILED_RECEIPTS

PROCESS_METRICS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
    "process_max_fds",
)


def _get(server: MetricsServer, path: str) -> tuple[int, str]:
    """Status and body of GET `path` on the metrics server."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _help(text: str) -> dict[str, str]:
    """HELP text by family name."""
    return {f.name: f.documentation for f in text_string_to_metric_families(text)}


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two idle child processes standing in for workers; killed afterwards."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)
    ]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_only_the_metrics_path_is_served(tmp_path: Path) -> None:
    """`/metrics` (with a query) answers 200; every other path answers 404."""
    server = start_metrics_server("127.0.0.1:0", tmp_path)
    try:
        assert _get(server, "/metrics")[0] == 200
        assert _get(server, "/metrics?name[]=process_open_fds")[0] == 200
        for path in ("/", "/favicon.ico", "/metrics/", "/metricsx", "/debug/vars", "/x/metrics"):
            status, body = _get(server, path)
            assert status == 404, path
            assert "xiaohe" not in body
    finally:
        server.close()


def test_build_info_names_the_version_and_python(tmp_path: Path) -> None:
    server = start_metrics_server("127.0.0.1:0", tmp_path)
    try:
        _, body = _get(server, "/metrics")
    finally:
        server.close()
    labels = (("python", platform.python_version()), ("version", running_version()))
    assert _samples(body)[("xiaohe_identity_build_info", labels)] == 1.0
    assert running_version() != "unknown"
    assert "version" in _help(body)["xiaohe_identity_build_info"]


def test_process_metrics_of_the_supervisor_and_each_worker_slot(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    """process_* per process, labelled by slot; an exited worker has no samples."""
    workers = list(sleepers)
    server = start_metrics_server("127.0.0.1:0", tmp_path, lambda: [p.pid for p in workers])
    try:
        _, body = _get(server, "/metrics")
        samples = _samples(body)
        for process in ("supervisor", "worker-0", "worker-1"):
            key = (("process", process),)
            for name in PROCESS_METRICS:
                assert (name, key) in samples, (name, process)
            assert samples[("process_resident_memory_bytes", key)] > 0
            assert samples[("process_open_fds", key)] >= 1
        # Each worker's figures are its own: it started after the supervisor.
        own_start = samples[("process_start_time_seconds", (("process", "supervisor"),))]
        assert samples[("process_start_time_seconds", (("process", "worker-1"),))] >= own_start
        assert "by process" in _help(body)["process_resident_memory_bytes"]

        workers[1].kill()
        workers[1].wait()
        _, body = _get(server, "/metrics")
        samples = _samples(body)
        assert ("process_resident_memory_bytes", (("process", "worker-0"),)) in samples
        assert not [key for key in samples if ("process", "worker-1") in key[1]]
    finally:
        server.close()


def _metrics_help() -> dict[str, str]:
    """HELP of every metric the workers write."""
    return {f.name: f.documentation for f in Metrics.in_memory().registry.collect()}


def test_every_help_text_is_a_sentence_naming_its_labels() -> None:
    registry = Metrics.in_memory().registry
    for family in registry.collect():
        assert family.documentation.endswith("."), family.name
        assert family.documentation[0].isupper(), family.name
    # A label set must be explained in the text: each label's name, or the thing it names.
    for collector_name, labels in (
        ("xiaohe_rpc_requests", ("method", "code")),
        ("xiaohe_delivery_receipts", ("provider", "network", "state")),
        ("xiaohe_callback_requests", ("route",)),
    ):
        for label in labels:
            assert label in _metrics_help()[collector_name], (collector_name, label)


def test_rpc_help_says_method_name_as_the_interceptor_labels_it() -> None:
    """The interceptor labels with the method name alone (IssueCode), not the full path."""
    texts = _metrics_help()
    for name in (
        "xiaohe_rpc_requests",
        "xiaohe_rpc_duration_seconds",
        "xiaohe_undecodable_requests",
    ):
        assert "full method name" not in texts[name]
        assert "method name (IssueCode)" in texts[name]


def test_help_texts_list_the_label_values_the_code_records() -> None:
    texts = _metrics_help()
    outcomes = [v for k, v in vars(dispatcher).items() if k.startswith("OUTCOME_")]
    assert len(outcomes) >= 5
    for outcome in outcomes:
        assert outcome in texts["xiaohe_deliveries"], outcome
    for verify in VerifyOutcome:
        assert verify.value in texts["xiaohe_codes_verified"], verify
    for reason in ("duplicate", "unknown_message", "malformed", "invalid_json"):
        assert reason in texts["xiaohe_delivery_receipts_ignored"], reason
    for reason in (REASON_CONVERSION, REASON_FAILED_RECEIPTS):
        assert reason in texts["xiaohe_pumping_prefix_blocks"], reason
    # Only code issue and verify count refusals here; the text must not claim every limit.
    assert "Code issue and verify" in texts["xiaohe_limit_rejections"]
