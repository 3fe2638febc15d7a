"""Prometheus metrics: own registry, bounded labels, and multi-process aggregation."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from xiaohe.identity.server.observability.metrics import (
    MULTIPROC_ENV,
    Metrics,
    MetricsListenError,
    bounded_label,
    collect_multiprocess,
    prepare_multiproc_dir,
    start_metrics_server,
)

ISSUE = "/xiaohe.identity.v1.CodeService/IssueCode"


def _value(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _sample(text: bytes, line_start: str) -> float:
    for line in text.decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start}")


def test_counters_move() -> None:
    m = Metrics.in_memory()
    m.rpc(ISSUE, "OK", 0.004)
    m.rpc(ISSUE, "OK", 0.2)
    m.rpc(ISSUE, "RESOURCE_EXHAUSTED", 0.001)
    m.code_issued("SMS", "LOGIN")
    m.code_verified("SMS", "LOGIN", "invalid")
    m.code_verified("SMS", "LOGIN", "ok")
    m.code_verified("SMS", "LOGIN", "ok")
    m.limit_rejected("code.issue.destination")
    m.delivery("file", "sent")
    m.login("password", "failed")
    m.undecodable_request("IssueCode")
    m.undecodable_request("IssueCode")
    assert _value(m, "xiaohe_rpc_requests_total", {"method": ISSUE, "code": "OK"}) == 2
    assert (
        _value(m, "xiaohe_rpc_requests_total", {"method": ISSUE, "code": "RESOURCE_EXHAUSTED"}) == 1
    )
    assert _value(m, "xiaohe_rpc_duration_seconds_count", {"method": ISSUE}) == 3
    assert _value(m, "xiaohe_rpc_duration_seconds_sum", {"method": ISSUE}) == pytest.approx(0.205)
    assert _value(m, "xiaohe_rpc_duration_seconds_bucket", {"method": ISSUE, "le": "0.005"}) == 2
    assert _value(m, "xiaohe_codes_issued_total", {"channel": "SMS", "purpose": "LOGIN"}) == 1
    labels = {"channel": "SMS", "purpose": "LOGIN", "outcome": "ok"}
    assert _value(m, "xiaohe_codes_verified_total", labels) == 2
    assert _value(m, "xiaohe_limit_rejections_total", {"policy": "code.issue.destination"}) == 1
    assert _value(m, "xiaohe_deliveries_total", {"provider": "file", "outcome": "sent"}) == 1
    assert _value(m, "xiaohe_logins_total", {"method": "password", "outcome": "failed"}) == 1
    assert _value(m, "xiaohe_undecodable_requests_total", {"method": "IssueCode"}) == 2


def test_exposition_contains_every_metric_name() -> None:
    m = Metrics.in_memory()
    m.rpc(ISSUE, "OK", 0.01)
    m.code_issued("EMAIL", "REGISTER")
    m.code_verified("EMAIL", "REGISTER", "ok")
    m.limit_rejected("ip.login")
    m.delivery("smtp", "failed")
    m.login("sms", "ok")
    m.undecodable_request("Login")
    text = m.render().decode()
    for name in (
        "xiaohe_rpc_requests_total",
        "xiaohe_rpc_duration_seconds_bucket",
        "xiaohe_codes_issued_total",
        "xiaohe_codes_verified_total",
        "xiaohe_limit_rejections_total",
        "xiaohe_deliveries_total",
        "xiaohe_logins_total",
        "xiaohe_undecodable_requests_total",
    ):
        assert f"\n{name}{{" in text
    assert 'xiaohe_logins_total{method="sms",outcome="ok"} 1.0' in text


def test_registries_are_independent() -> None:
    a, b = Metrics.in_memory(), Metrics.in_memory()
    a.login("password", "ok")
    assert _value(a, "xiaohe_logins_total", {"method": "password", "outcome": "ok"}) == 1
    assert _value(b, "xiaohe_logins_total", {"method": "password", "outcome": "ok"}) == 0
    assert Metrics(CollectorRegistry()).render().count(b"xiaohe_logins_total{") == 0


@pytest.mark.parametrize(
    "value",
    ["13812345678", "+8613812345678", "zhang@example.com", "123456", "code 654321", "", "a" * 120],
)
def test_personal_data_never_becomes_a_label(value: str) -> None:
    """[C4] Codes and personal data never appear in metrics; odd label values become `other`."""
    m = Metrics.in_memory()
    m.code_verified("SMS", value, value)
    m.limit_rejected(value)
    text = m.render().decode()
    if value:
        assert value not in text
    assert 'xiaohe_limit_rejections_total{policy="other"} 1.0' in text


def test_bounded_label_keeps_names() -> None:
    for name in (ISSUE, "OK", "RESOURCE_EXHAUSTED", "code.issue.destination", "carrier:cmcc"):
        assert bounded_label(name) == name


def _worker_main(directory: str, logins: int, env_preset: bool) -> None:
    """A worker process: enable multi-process mode, then count some logins."""
    if env_preset:
        assert os.environ.get(MULTIPROC_ENV) == str(Path(directory).resolve())
    m = Metrics.for_worker(Path(directory))
    for _ in range(logins):
        m.login("password", "ok")
    m.rpc(ISSUE, "OK", 0.01)


def test_multiprocess_values_are_aggregated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two worker processes write counts; the supervisor's collector sums them."""
    directory = tmp_path / "metrics"
    (directory).mkdir()
    (directory / "counter_999999.db").write_bytes(b"stale")  # left over from an earlier run
    ctx = multiprocessing.get_context("spawn")
    # Worker 1 starts as the supervisor would start it (env already exported by
    # prepare_multiproc_dir); worker 2 starts without the variable and must cope.
    with monkeypatch.context() as patch:
        patch.setenv(MULTIPROC_ENV, "placeholder")  # restored (removed) when the block ends
        prepare_multiproc_dir(directory)
        first = ctx.Process(target=_worker_main, args=(str(directory), 3, True))
        first.start()
    second = ctx.Process(target=_worker_main, args=(str(directory), 4, False))
    second.start()
    assert MULTIPROC_ENV not in os.environ
    for proc in (first, second):
        proc.join(30)
        assert proc.exitcode == 0
    assert not (directory / "counter_999999.db").exists()
    text = collect_multiprocess(directory)
    assert _sample(text, 'xiaohe_logins_total{method="password",outcome="ok"}') == 7
    assert _sample(text, f'xiaohe_rpc_requests_total{{code="OK",method="{ISSUE}"}}') == 2
    assert _sample(text, f'xiaohe_rpc_duration_seconds_count{{method="{ISSUE}"}}') == 2

    server = start_metrics_server("127.0.0.1:0", directory)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            served = resp.read()
    finally:
        server.close()
    assert _sample(served, 'xiaohe_logins_total{method="password",outcome="ok"}') == 7


def test_for_worker_refuses_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "one"))
    with pytest.raises(ValueError, match=MULTIPROC_ENV):
        Metrics.for_worker(tmp_path / "two")


def test_metrics_server_close_frees_the_port(tmp_path: Path) -> None:
    server = start_metrics_server("127.0.0.1:0", tmp_path)
    port = server.port
    server.close()
    again = start_metrics_server(f"127.0.0.1:{port}", tmp_path)
    again.close()
    with pytest.raises(ValueError, match="host:port"):
        start_metrics_server("nonsense", tmp_path)


def test_a_busy_address_is_one_line_naming_it(tmp_path: Path) -> None:
    """A port another process holds: MetricsListenError naming the address, no thread left."""
    threads_before = threading.active_count()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(MetricsListenError) as caught:
            start_metrics_server(address, tmp_path)
    message = str(caught.value)
    assert message == f"{address} is in use by another process"
    assert "\n" not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert threading.active_count() == threads_before


def test_an_address_of_another_host_is_one_line_naming_it(tmp_path: Path) -> None:
    """192.0.2.1 (TEST-NET-1) is no address of this host."""
    with pytest.raises(
        MetricsListenError, match=r"^192\.0\.2\.1:0 is not an address of this host$"
    ):
        start_metrics_server("192.0.2.1:0", tmp_path)
