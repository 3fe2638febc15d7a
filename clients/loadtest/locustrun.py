"""Run Locust as a subprocess: the only process that imports gevent and the locustfile."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class LocustRun:
    """One bounded Locust run and where its CSV and HTML go."""

    host: str
    user_class: str
    users: int
    spawn_rate: float
    seconds: int
    csv_prefix: Path
    processes: int = 1
    expect_workers: int = 0
    web: bool = False
    options: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def command(self) -> list[str]:
        """The `python -m locust …` command line (no secret is ever on it)."""
        command = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--host",
            self.host,
            "--users",
            str(self.users),
            "--spawn-rate",
            f"{self.spawn_rate:g}",
            "--run-time",
            f"{self.seconds}s",
            "--stop-timeout",
            "3",
            "--csv",
            str(self.csv_prefix),
            "--csv-full-history",
            "--loglevel",
            "WARNING",
        ]
        if self.web:
            command += ["--autostart", "--autoquit", "0", "--web-host", "127.0.0.1"]
        else:
            command.append("--headless")
        if self.expect_workers:
            command += ["--master", "--expect-workers", str(self.expect_workers)]
        elif self.processes > 1:
            command += ["--processes", str(self.processes)]
        for name, value in self.options.items():
            command += [f"--{name}", value]
        command.append(self.user_class)
        return command

    def run(self, *, log: Path | None = None) -> int:
        """Run to the end (killed if it overstays its run time by a minute); the exit code.

        Output goes to `log` if given, else to this terminal (Locust's live table).

        Locust exits 1 when any request failed, which a load test expects (refused
        codes are part of the mix), so the caller decides from the CSVs instead.
        """
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with open(log, "wb") if log is not None else contextlib.nullcontext() as output:
            return self._wait(env, output)

    def _wait(self, env: dict[str, str], output: IO[bytes] | None) -> int:
        # The command is built from our own arguments; no shell is involved.
        process = subprocess.Popen(  # noqa: S603
            self.command(), env=env, cwd=REPO_ROOT, stdout=output, stderr=output
        )
        try:
            return process.wait(timeout=self.seconds + _GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return -9
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
