"""What `xiaohe-identity serve` writes to its log: JSON lines only, worker indexes, access lines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import ServedProcess, start_serve

ISSUE = "/xiaohe.identity.v1.CodeService/IssueCode"
PHONES = [f"+861390000{i:04d}" for i in range(8)]


def _records(served: ServedProcess) -> list[dict[str, Any]]:
    """Every log line, parsed; a line that is not a JSON object fails the test (grpc noise)."""
    records = []
    for line in served.log_text().splitlines():
        if line.strip():
            record = json.loads(line)
            assert isinstance(record, dict), line
            records.append(record)
    return records


def _wait_workers(served: ServedProcess, count: int, timeout: float = 90.0) -> None:
    """Block until `count` workers have logged that they serve (the first may be well ahead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.log_text().count('"msg": "worker serving"') >= count:
            return
        time.sleep(0.2)
    raise AssertionError(served.log_text()[-4000:])


def _issue(served: ServedProcess, phones: list[str]) -> None:
    """One IssueCode per phone, each over its own connection (so both workers get some)."""
    for phone in phones:
        served.issue_code(phone, timeout=20)


def test_two_workers_log_their_index_and_one_access_line_per_rpc(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    served = start_serve(tmp_path / "var", XIAOHE_IDENTITY_WORKERS="2")
    serve_factory.append(served)
    _wait_workers(served, 2)
    _issue(served, PHONES)
    assert served.stop() == 0

    records = _records(served)
    serving = [r for r in records if r["msg"] == "worker serving"]
    assert sorted(r["worker"] for r in serving) == [0, 1]
    # Only workers carry an index, and it is never a process id.
    assert {r["worker"] for r in records if "worker" in r} == {0, 1}
    access = [r for r in records if r["logger"] == "xiaohe.identity.access"]
    assert len(access) == len(PHONES)
    for r in access:
        assert r["level"] == "INFO"
        assert r["worker"] in (0, 1)
        assert (r["extra"]["method"], r["extra"]["status"]) == (ISSUE, "OK")
        assert r["client_id"] == served.metadata[0][1]
        assert len(r["request_id"]) == 16
    assert len({r["request_id"] for r in access}) == len(PHONES)
    text = served.log_text()
    for phone in PHONES:
        assert phone[3:] not in text


def test_the_access_log_setting_turns_the_lines_off(
    tmp_path: Path, serve_factory: list[ServedProcess]
) -> None:
    served = start_serve(tmp_path / "var", XIAOHE_IDENTITY_ACCESS_LOG="false")
    serve_factory.append(served)
    _issue(served, PHONES[:2])
    assert served.stop() == 0

    records = _records(served)
    assert [r["worker"] for r in records if r["msg"] == "worker serving"] == [0]
    assert not [r for r in records if r["logger"] == "xiaohe.identity.access"]
