"""`xiaohe-identity serve` and its metrics endpoint, as an operator meets them."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import CLI, ServedProcess, free_port, start_serve

P = "XIAOHE_IDENTITY_"


def _serve_env(data_dir: Path, metrics_listen: str) -> dict[str, str]:
    """The environment of a one-worker `serve` on a free gRPC port and the given metrics address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(P)}
    env.update(
        {
            f"{P}LISTEN": f"127.0.0.1:{free_port()}",
            f"{P}METRICS_LISTEN": metrics_listen,
            f"{P}DATA_DIR": str(data_dir),
            f"{P}WORKERS": "1",
            f"{P}ARGON2_MEMORY_KIB": "64",
            f"{P}ARGON2_TIME_COST": "1",
        }
    )
    return env


def _processes_mentioning(text: str) -> list[int]:
    """Pids of running processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_a_busy_metrics_port_stops_serve_with_one_line_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    """One stderr line naming the address and that it is in use, exit 1, embedded Redis stopped."""
    data_dir = tmp_path / "var"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        done = subprocess.run(
            [CLI, "serve"],
            env=_serve_env(data_dir, address),
            capture_output=True,
            timeout=90,
            check=False,
        )
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 1, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert address in lines[0]
    assert "in use" in lines[0]
    assert "Traceback" not in stderr
    # The embedded Redis was started before the metrics port was tried, and is gone again.
    redis_dir = data_dir / "redis"
    assert (redis_dir / "redis.conf").exists()
    assert _processes_mentioning(str(redis_dir)) == []


def _scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    """Status and body of GET `path` on the metrics port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_show_each_process_and_the_build_on_metrics_only(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    """Two workers: process_* for the supervisor and both slots, build info, 404 off /metrics."""
    served = start_serve(tmp_path / "var", **{f"{P}WORKERS": "2"})
    serve_factory.append(served)
    status, body = _scrape(served.metrics_port)
    assert status == 200
    rss = {}
    build = []
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "process_resident_memory_bytes":
                rss[sample.labels["process"]] = sample.value
            if sample.name == "xiaohe_identity_build_info":
                build.append(sample)
    assert set(rss) == {"supervisor", "worker-0", "worker-1"}
    assert all(value > 0 for value in rss.values())
    assert len(build) == 1
    assert build[0].value == 1.0
    assert build[0].labels["version"] not in ("", "unknown")
    assert _scrape(served.metrics_port, "/")[0] == 404
    assert _scrape(served.metrics_port, "/favicon.ico")[0] == 404
