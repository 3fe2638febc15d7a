"""Turn Locust's CSV output into `report.html` with plots (also saved as PNG files).

Locust's `--csv-full-history` writes, once a second, each RPC's running totals and
its latency percentiles over the last ~10 seconds; throughput over time is the
difference of the totals between rows. The report names RPCs and status codes only:
Locust's rows carry nothing else, because every call records just those.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from clients.loadtest.ceiling import Ceiling

CLIENT_BOUND_SHARE = 0.7
"""A run above this share of the ceiling may have measured the generator, not the server."""

_PERCENTILES = ("50%", "95%", "99%")


@dataclass(frozen=True)
class RpcSummary:
    """One RPC's totals over the run."""

    name: str
    requests: int
    failures: int
    per_second: float
    p50: float
    p95: float
    p99: float
    max_ms: float


@dataclass(frozen=True)
class ErrorCount:
    """How many calls of an RPC ended with one status code."""

    rpc: str
    status: str
    count: int


@dataclass
class Series:
    """One RPC's time series: seconds since start, calls/s and latency percentiles."""

    seconds: list[float] = field(default_factory=list)
    per_second: list[float] = field(default_factory=list)
    percentiles: dict[str, list[float]] = field(
        default_factory=lambda: {p: [] for p in _PERCENTILES}
    )


@dataclass(frozen=True)
class RunFacts:
    """What the run was: printed at the top of the report."""

    target: str
    users: int
    seconds: int
    processes: int
    weights: dict[str, int]
    accounts_seeded: int
    accounts_skipped: int
    login_prefix: str
    started_utc: str
    notes: tuple[str, ...] = ()


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0


def read_summaries(stats_csv: Path) -> tuple[list[RpcSummary], RpcSummary | None]:
    """Per-RPC rows and the Aggregated row of `_stats.csv`."""
    rows: list[RpcSummary] = []
    total: RpcSummary | None = None
    with open(stats_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            summary = RpcSummary(
                name=row["Name"],
                requests=int(_number(row["Request Count"])),
                failures=int(_number(row["Failure Count"])),
                per_second=_number(row["Requests/s"]),
                p50=_number(row["50%"]),
                p95=_number(row["95%"]),
                p99=_number(row["99%"]),
                max_ms=_number(row["Max Response Time"]),
            )
            if row["Name"] == "Aggregated":
                total = summary
            else:
                rows.append(summary)
    return rows, total


def read_failures(failures_csv: Path) -> list[ErrorCount]:
    """RPC failures by status code."""
    with open(failures_csv, newline="") as handle:
        errors = [
            ErrorCount(row["Name"], row["Error"], int(_number(row["Occurrences"])))
            for row in csv.DictReader(handle)
        ]
    return sorted(errors, key=lambda e: (e.rpc, -e.count))


def read_skipped(skipped_json: Path) -> list[ErrorCount]:
    """Flows that could not run, by scenario and reason (written by the locustfile)."""
    if not skipped_json.exists():
        return []
    counts: dict[str, int] = json.loads(skipped_json.read_text())
    entries = []
    for key, count in counts.items():
        scenario, _, reason = key.partition("\t")
        entries.append(ErrorCount(scenario, reason, count))
    return sorted(entries, key=lambda e: (e.rpc, -e.count))


def read_history(history_csv: Path) -> dict[str, Series]:
    """Each RPC's series (and `Aggregated`) from `_stats_history.csv`."""
    series: dict[str, Series] = defaultdict(Series)
    last: dict[str, tuple[float, float]] = {}
    start: float | None = None
    with open(history_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            name = row["Name"]
            stamp = _number(row["Timestamp"])
            total = _number(row["Total Request Count"])
            start = stamp if start is None else min(start, stamp)
            previous = last.get(name)
            last[name] = (stamp, total)
            if previous is None or stamp <= previous[0]:
                continue
            entry = series[name]
            entry.seconds.append(stamp)
            entry.per_second.append((total - previous[1]) / (stamp - previous[0]))
            for p in _PERCENTILES:
                # N/A (no call in the window) leaves a gap in the plot rather than a 0.
                entry.percentiles[p].append(_number(row[p]) if row[p] != "N/A" else math.nan)
    for entry in series.values():
        entry.seconds = [s - (start or 0.0) for s in entry.seconds]
    return dict(series)


def plot_throughput(series: dict[str, Series], path: Path) -> None:
    """Calls per second of each RPC (and in total) over time."""
    figure, axes = plt.subplots(figsize=(10, 4.5))
    for name, entry in sorted(series.items()):
        if name == "Aggregated":
            axes.plot(entry.seconds, entry.per_second, label="all RPCs", color="black", lw=2)
        else:
            axes.plot(entry.seconds, entry.per_second, label=name)
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("calls per second")
    axes.set_title("Throughput per RPC")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_latency(series: dict[str, Series], path: Path) -> None:
    """p50, p95 and p99 of each RPC over time, one panel per RPC."""
    names = sorted(n for n in series if n != "Aggregated") or ["Aggregated"]
    columns = 2
    rows = (len(names) + columns - 1) // columns
    figure, grid = plt.subplots(rows, columns, figsize=(10, 2.8 * rows), squeeze=False)
    for index, name in enumerate(names):
        axes = grid[index // columns][index % columns]
        entry = series.get(name, Series())
        for p in _PERCENTILES:
            axes.plot(entry.seconds, entry.percentiles[p], label=f"p{p.rstrip('%')}")
        axes.set_title(name, fontsize="medium")
        axes.set_ylabel("ms")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small", loc="upper left")
    for index in range(len(names), rows * columns):
        grid[index // columns][index % columns].axis("off")
    figure.supxlabel("seconds since start (percentiles over the last ~10 s)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def ceiling_line(ceiling: Ceiling, total: RpcSummary | None) -> str:
    """The sentence that states the generator's ceiling and how close the run came to it."""
    reached = total.per_second if total is not None else 0.0
    if not ceiling.seconds:
        return (
            f"Generator ceiling: not measured (--ceiling-seconds 0). The run made "
            f"{reached:.0f} calls/s; without the ceiling nobody can tell a client limit "
            "from a server one."
        )
    share = reached / ceiling.calls_per_second if ceiling.calls_per_second else 0.0
    line = (
        f"Generator ceiling: {ceiling.calls_per_second:.0f} calls/s "
        f"(the same {ceiling.users} users in {ceiling.processes} process(es) against the "
        f"bench's echo server on this machine, {ceiling.seconds} s, in this run). "
        f"The run made {reached:.0f} calls/s, {share:.0%} of it"
    )
    if share >= CLIENT_BOUND_SHARE:
        return line + ": near the ceiling, so this measured the generator as much as the server."
    return line + ": well below it, so the figures are the server's."


def _table(headers: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _embed(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_report(
    results: Path, csv_prefix: Path, facts: RunFacts, ceiling: Ceiling
) -> tuple[Path, str]:
    """Write the PNGs and `report.html` under `results`; the HTML's path and the ceiling line."""
    summaries, total = read_summaries(Path(f"{csv_prefix}_stats.csv"))
    errors = read_failures(Path(f"{csv_prefix}_failures.csv"))
    skipped = read_skipped(Path(f"{csv_prefix}_skipped.json"))
    series = read_history(Path(f"{csv_prefix}_stats_history.csv"))
    throughput_png, latency_png = results / "throughput.png", results / "latency.png"
    plot_throughput(series, throughput_png)
    plot_latency(series, latency_png)
    line = ceiling_line(ceiling, total)

    def ms(value: float) -> str:
        return f"{value:.0f}"

    rpc_rows = [
        [
            s.name,
            str(s.requests),
            str(s.failures),
            f"{s.per_second:.1f}",
            ms(s.p50),
            ms(s.p95),
            ms(s.p99),
            ms(s.max_ms),
        ]
        for s in [*summaries, *([total] if total else [])]
    ]
    error_rows = [[e.rpc, e.status, str(e.count)] for e in errors] or [["—", "none", "0"]]
    weights = ", ".join(f"{name} {weight}" for name, weight in facts.weights.items())
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>Xiaohe Identity load test</title><style>",
        "body{font-family:sans-serif;max-width:1080px;margin:2em auto;color:#222}",
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;",
        "padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}",
        ".ceiling{background:#f4f4d8;padding:.8em;border-left:4px solid #b8a400}",
        "img{max-width:100%}</style></head><body>",
        "<h1>Xiaohe Identity load test</h1>",
        f'<p class="ceiling" id="ceiling">{html.escape(line)}</p>',
        _table(
            ["run", ""],
            [
                ["target", facts.target],
                ["started (UTC)", facts.started_utc],
                ["users", str(facts.users)],
                ["duration", f"{facts.seconds} s"],
                ["Locust processes", str(facts.processes)],
                ["scenario weights", weights],
                [
                    "test accounts seeded",
                    f"{facts.accounts_seeded} ({facts.accounts_skipped} failed)",
                ],
            ],
            "run",
        ),
        "<h2>Per RPC</h2>",
        "<p>Latency in milliseconds over the whole run; requests/s over the run's duration.</p>",
        _table(
            ["RPC", "requests", "failures", "req/s", "p50", "p95", "p99", "max"],
            rpc_rows,
            "rpcs",
        ),
        "<h2>Errors by status code</h2>",
        "<p>“(provoked)” marks refusals the mix causes on purpose: a resend inside the "
        "cooldown, a mistyped number, a refresh or sign-out of a session that a password "
        "reset of this run had ended.</p>",
        _table(["RPC", "status code", "count"], error_rows, "errors"),
    ]
    if skipped:
        parts += [
            "<h2>Flows that could not run</h2>",
            _table(
                ["scenario", "reason", "count"],
                [[e.rpc, e.status, str(e.count)] for e in skipped],
                "skipped",
            ),
        ]
    parts += [
        "<h2>Throughput over time</h2>",
        _embed(throughput_png, "throughput per RPC"),
        "<h2>Latency over time (p50, p95, p99)</h2>",
        _embed(latency_png, "latency percentiles per RPC"),
        "<h2>Test data and clean-up</h2><ul>",
        *(f"<li>{html.escape(note)}</li>" for note in facts.notes),
        "</ul><p>Raw data: <code>locust_stats.csv</code>, <code>locust_stats_history.csv</code>, "
        "<code>locust_failures.csv</code>, <code>locust_skipped.json</code> beside this page.</p>",
        "</body></html>",
    ]
    report = results / "report.html"
    report.write_text("\n".join(parts), encoding="utf-8")
    return report, line
