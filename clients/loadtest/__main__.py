"""`python -m clients.loadtest --target HOST:PORT …` (what `make loadtest` runs).

Steps, each bounded in time: read the client's credentials; seed test accounts
through the API (codes from the dev outbox); measure the generator's ceiling against
a local echo server; run Locust against the target for the given duration with a
live progress table; sign the sessions out; write the report. Nothing is sent
anywhere but the target and the echo server this process starts on loopback.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from clients.loadtest.ceiling import Ceiling, measure_ceiling
from clients.loadtest.locustrun import REPO_ROOT, LocustRun
from clients.loadtest.outbox import OutboxReader
from clients.loadtest.report import RunFacts, write_report
from clients.loadtest.rpc import ClientCredentials
from clients.loadtest.scenarios import DESCRIPTIONS, parse_weights
from clients.loadtest.seed import seed_accounts
from clients.loadtest.testdata import PHONE_BLOCK, RunData, new_run_id

MAX_SECONDS = 3600
"""The longest run accepted: a load test is bounded."""


def _duration(raw: str) -> int:
    """`90`, `90s`, `5m` or `1h` as whole seconds (1..MAX_SECONDS)."""
    units = {"s": 1, "m": 60, "h": 3600}
    value = raw.strip().lower()
    factor = units.get(value[-1:], 0)
    number = value[:-1] if factor else value
    try:
        seconds = int(float(number) * (factor or 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a duration like 60, 60s or 5m") from None
    if not 1 <= seconds <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"the duration must be 1 s to {MAX_SECONDS} s")
    return seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; see `--help`."""
    parser = argparse.ArgumentParser(
        prog="python -m clients.loadtest",
        description="Load-test a running Xiaohe Identity deployment with Locust.",
    )
    parser.add_argument(
        "--target",
        required=True,
        help="host:port of the deployment (plaintext), or host:port,host:port,… of its hosts",
    )
    parser.add_argument("--users", type=int, default=20, help="concurrent Locust users")
    parser.add_argument("--duration", type=_duration, default=60, help="e.g. 60, 90s, 5m")
    parser.add_argument("--spawn-rate", type=float, default=0.0, help="users started per second")
    parser.add_argument("--processes", type=int, default=1, help="Locust worker processes here")
    parser.add_argument(
        "--expect-workers",
        type=int,
        default=0,
        help="run as master and wait for this many `--worker` processes on other machines",
    )
    parser.add_argument(
        "--scenarios",
        default="",
        help="scenario:weight,… of " + ", ".join(DESCRIPTIONS) + " (default: the standard mix)",
    )
    parser.add_argument("--think", type=float, default=0.0, help="mean pause between flows, s")
    parser.add_argument("--accounts", type=int, default=0, help="test accounts to seed")
    parser.add_argument(
        "--client-file",
        type=Path,
        help="JSON with client_id and client_secret (`clients create` output); "
        "else XIAOHE_LOADTEST_CLIENT_ID/_SECRET",
    )
    parser.add_argument(
        "--outbox", type=Path, help="the deployment's dev SMS outbox file (codes for sign-ups)"
    )
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results")
    parser.add_argument("--ceiling-seconds", type=int, default=5, help="0 skips the ceiling")
    parser.add_argument("--channels", type=int, default=8, help="gRPC channels per process")
    parser.add_argument("--web", action="store_true", help="Locust's web UI on 127.0.0.1:8089")
    args = parser.parse_args(argv)
    if args.users < 1 or args.processes < 1 or args.channels < 1:
        parser.error("--users, --processes and --channels must be at least 1")
    if not 0 <= args.ceiling_seconds <= 60:
        parser.error("--ceiling-seconds must be 0 to 60")
    if not 0 <= args.accounts <= 5000:
        parser.error("--accounts must be 0 to 5000")
    return args


def _credentials(args: argparse.Namespace) -> ClientCredentials:
    if args.client_file is not None:
        return ClientCredentials.from_file(args.client_file)
    from_env = ClientCredentials.from_env()
    if from_env is None:
        raise SystemExit(
            "no client credentials: pass --client-file or set "
            "XIAOHE_LOADTEST_CLIENT_ID and XIAOHE_LOADTEST_CLIENT_SECRET"
        )
    return from_env


def main(argv: list[str] | None = None) -> int:
    """Run the whole load test; 0 when the report was written."""
    args = parse_args(argv)
    # Every flow sends SMS codes to the run's test numbers, which are real, allocated
    # numbers: only a deployment whose SMS go to its dev outbox file may receive them.
    # The file appears with the server's first message; its data directory must exist.
    if args.outbox is None or not args.outbox.parent.parent.is_dir():
        raise SystemExit(
            "xiaohe-identity load test: --outbox must name the dev SMS outbox of the target "
            "(its data directory must exist); without it the run would text real numbers"
        )
    outbox_path = args.outbox.resolve()
    credentials = _credentials(args)
    try:
        weights = parse_weights(args.scenarios, codes=True)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    started = datetime.now(UTC)
    results = args.results.resolve() / f"loadtest-{started:%Y%m%dT%H%M%SZ}"
    results.mkdir(parents=True, exist_ok=False)
    data = RunData(new_run_id(), credentials.client_secret)
    slots = args.expect_workers or args.processes
    notes = [
        f"Accounts of this run: login names starting {data.login_prefix}, "
        f"phone numbers in {PHONE_BLOCK}xxxxxxx, end users from 198.18.0.0/15.",
    ]

    accounts = args.accounts or min(max(args.users, 5), 200)
    seeded_made, skipped, seeded_at = 0, [], 0.0
    if accounts:
        print(f"seeding {accounts} test accounts …", flush=True)
        seeded = seed_accounts(
            args.target,
            credentials,
            data,
            OutboxReader(outbox_path),
            accounts,
            deadline_seconds=max(60.0, accounts * 0.5),
        )
        seeded_made, skipped, seeded_at = seeded.made, seeded.skipped, time.time()
        print(f"seeded {seeded.made} in {seeded.seconds:.1f} s", flush=True)
        for reason, count in seeded.failures.items():
            print(f"  not seeded: {count} × {reason}", flush=True)
    if not seeded_made:
        accounts = 0
        notes.append(
            "No test account could be seeded (no outbox, or no code reached it): "
            "only IssueCode traffic ran."
        )
        weights = {k: v for k, v in weights.items() if k == "issue_code"}

    run = LocustRun(
        host=args.target,
        user_class="IdentityUser",
        users=args.users,
        spawn_rate=args.spawn_rate or float(args.users),
        seconds=args.duration,
        csv_prefix=results / "locust",
        processes=args.processes,
        expect_workers=args.expect_workers,
        web=args.web,
        options={
            "xh-run-id": data.run_id,
            "xh-accounts": str(accounts),
            "xh-skip": ",".join(str(i) for i in skipped),
            "xh-seeded-at": f"{seeded_at:.0f}",
            "xh-slots": str(slots),
            "xh-outbox": str(outbox_path),
            "xh-scenarios": ",".join(f"{k}:{v}" for k, v in weights.items()) or "issue_code:0",
            "xh-think": f"{args.think:g}",
            "xh-channels": str(args.channels),
        },
        env=credentials.to_env(),
    )

    if args.ceiling_seconds:
        print(f"measuring the generator's ceiling for {args.ceiling_seconds} s …", flush=True)
        ceiling = measure_ceiling(run, args.ceiling_seconds, results / "ceiling")
        print(f"generator ceiling: {ceiling.calls_per_second:.0f} calls/s", flush=True)
    else:
        ceiling = Ceiling(0.0, 0, args.users, args.processes)

    print(f"running {args.users} users against {args.target} for {args.duration} s …", flush=True)
    began = time.monotonic()
    code = run.run()
    print(f"Locust ended after {time.monotonic() - began:.0f} s (exit {code})", flush=True)
    if not Path(f"{run.csv_prefix}_stats.csv").exists():
        print("Locust wrote no statistics: no report", file=sys.stderr)
        return 1

    notes += [
        "Sessions the users held were signed out at the end of the run.",
        "The API has no RPC that deletes an account, so the test accounts remain: "
        "point load tests at a deployment whose data may be thrown away.",
    ]
    facts = RunFacts(
        target=args.target,
        users=args.users,
        seconds=args.duration,
        processes=args.expect_workers or args.processes,
        weights=weights,
        accounts_seeded=seeded_made,
        accounts_skipped=len(skipped),
        login_prefix=data.login_prefix,
        started_utc=f"{started:%Y-%m-%d %H:%M:%S}",
        notes=tuple(notes),
    )
    report, line = write_report(results, run.csv_prefix, facts, ceiling)
    print(line, flush=True)
    print(f"report: {report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
