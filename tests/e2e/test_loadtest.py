"""`python -m clients.loadtest` (what `make loadtest` runs) against `xiaohe-identity serve`.

A few seconds with a few users: the run seeds accounts through the API, measures the
generator's ceiling against the echo server, runs Locust in a subprocess and writes
`report.html` with its PNGs. The report must hold a row per RPC of the mix, the
ceiling, the error table, and no number, code or secret.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

from tests.e2e.conftest import ServedProcess, start_serve

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Tables(HTMLParser):
    """The rows of each `<table class=…>` in a page, as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._current: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._current = dict(attrs).get("class") or ""
            self.tables.setdefault(self._current, [])
        elif tag == "tr" and self._current is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._current is not None and self._row:
            self.tables[self._current].append(self._row)
            self._row = None
        elif tag == "table":
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_loadtest_writes_a_report_with_rpcs_ceiling_and_errors(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    """Acceptance: HTML + PNGs, a row per RPC, the generator's ceiling, errors by status code."""
    served = start_serve(tmp_path / "var")
    serve_factory.append(served)
    client_file = served.data_dir / "bootstrap-client.json"
    results = tmp_path / "results"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "clients.loadtest",
            "--target",
            served.target,
            "--users",
            "4",
            "--duration",
            "5s",
            "--accounts",
            "6",
            "--scenarios",
            "validate:30,refresh:15,password_login:10,issue_code:15,register:20,sms_login:10",
            "--ceiling-seconds",
            "2",
            "--client-file",
            str(client_file),
            "--outbox",
            str(served.data_dir / "outbox" / "sms.jsonl"),
            "--results",
            str(results),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "seeded 6 in" in output

    (folder,) = results.glob("loadtest-*")
    page = (folder / "report.html").read_text(encoding="utf-8")
    for png in ("throughput.png", "latency.png"):
        assert (folder / png).read_bytes().startswith(PNG_SIGNATURE)
    assert page.count('src="data:image/png;base64,') == 2

    ceiling = re.search(r"Generator ceiling: (\d+) calls/s", page)
    assert ceiling is not None
    assert int(ceiling.group(1)) > 0
    assert ceiling.group(0) in output  # also printed at the end of the run

    tables = Tables()
    tables.feed(page)
    facts = {row[0]: row[1] for row in tables.tables["run"]}
    assert facts["test accounts seeded"] == "6 (0 failed)"
    assert facts["target"] == served.target
    rpcs = {row[0]: row for row in tables.tables["rpcs"]}
    for rpc in ("IssueCode", "VerifyCode", "Register", "Login", "Refresh", "ValidateToken"):
        assert rpc in rpcs, sorted(rpcs)
        assert int(rpcs[rpc][1]) > 0
    for rpc in ("Login", "Refresh", "ValidateToken", "Register"):
        assert rpcs[rpc][2] == "0", rpcs[rpc]  # right passwords, live tokens: no failure
    assert "Aggregated" in rpcs

    # The error table is Locust's failures, by RPC and status code.
    with open(folder / "locust_failures.csv", newline="") as handle:
        failures = {(r["Name"], r["Error"]): r["Occurrences"] for r in csv.DictReader(handle)}
    shown = {(row[0], row[1]): row[2] for row in tables.tables["errors"] if row[0] != "—"}
    assert shown == failures
    assert all(re.fullmatch(r"[A-Z_]+( \(provoked\))?", status) for _rpc, status in shown)

    # Nothing personal or secret in the report or on the terminal.
    text = re.sub(r'src="data:image/png;base64,[^"]*"', "", page)
    secret = json.loads(client_file.read_text())["client_secret"]
    codes = {re.findall(r"\d{6}", line["text"])[0] for line in served.outbox()}
    assert codes
    for shown_text in (text, output):
        assert secret not in shown_text
        assert not re.search(r"1990\d{7}", shown_text)
        assert not codes & set(re.findall(r"\b\d{6}\b", shown_text))
