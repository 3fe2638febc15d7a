"""The Node client (clients/node) passes its `node --test` suite against `xiaohe-identity serve`.

The TypeScript example and test are compiled with the pinned tsc (`make node-deps`
installs it), then Node's test runner runs them against a served instance with
default limits, reached through XIAOHE_TARGET with the bootstrap client's
credentials; codes come from the dev SMS outbox (XIAOHE_OUTBOX). The suite logs in,
validates a token, looks an identity up in the directory and decodes the
google.rpc details of INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED and a
RESOURCE_EXHAUSTED (RetryInfo, QuotaFailure).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ServedProcess, start_serve

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
TSC = NODE_DIR / "node_modules" / "typescript" / "bin" / "tsc"
SUITE = "build/test/identity.test.js"
TESTS = 5
"""How many tests the suite holds: all of them must pass, none be skipped."""


@pytest.mark.timeout(300)  # tsc alone takes 10-30 s on a busy machine
def test_node_suite_passes_against_serve(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is not installed"
    assert TSC.exists(), "the Node client's packages are not installed: run `make node-deps`"
    built = subprocess.run(
        [node, str(TSC), "-p", "tsconfig.json"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr

    served = start_serve(tmp_path / "var")
    serve_factory.append(served)
    saved = json.loads((served.data_dir / "bootstrap-client.json").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_")}
    env.update(
        {
            "XIAOHE_TARGET": served.target,
            "XIAOHE_CLIENT_ID": saved["client_id"],
            "XIAOHE_CLIENT_SECRET": saved["client_secret"],
            "XIAOHE_OUTBOX": str(served.data_dir / "outbox" / "sms.jsonl"),
        }
    )
    ran = subprocess.run(
        [node, "--test", "--test-reporter=tap", SUITE],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output[-6000:]
    counts = dict(re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", output, re.M))
    assert counts == {
        "pass": str(TESTS),
        "fail": "0",
        "skipped": "0",
        "todo": "0",
        "cancelled": "0",
    }, output[-6000:]
