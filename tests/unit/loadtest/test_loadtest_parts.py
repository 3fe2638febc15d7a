"""The load test's own logic: scenario weights, test data, the outbox reader, the report's series.

These modules run in the driver (no gevent); the locustfile is exercised end to end
by tests/e2e/test_loadtest.py, in a Locust subprocess.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest

from clients.loadtest.ceiling import Ceiling
from clients.loadtest.outbox import OutboxReader
from clients.loadtest.report import RpcSummary, ceiling_line, read_history
from clients.loadtest.scenarios import DEFAULT_WEIGHTS, NEEDS_CODES, parse_weights
from clients.loadtest.testdata import RunData, end_user_ip
from xiaohe.identity.server.shared.identifiers import (
    normalize_login_name,
    normalize_phone,
    number_prefix,
)


def test_weights_default_and_override_and_without_codes() -> None:
    assert parse_weights("", codes=True) == DEFAULT_WEIGHTS
    assert parse_weights("validate:3, register:1,refresh:0", codes=True) == {
        "validate": 3,
        "register": 1,
    }
    without = parse_weights("", codes=False)
    assert without
    assert not NEEDS_CODES & without.keys()


@pytest.mark.parametrize("spec", ["teleport:1", "validate:x", "validate:-1"])
def test_weights_refuse_unknown_names_and_bad_numbers(spec: str) -> None:
    with pytest.raises(ValueError, match=r"scenario|weight"):
        parse_weights(spec, codes=True)


def test_test_numbers_are_valid_unique_and_spread_over_prefixes() -> None:
    data = RunData("0badcafe", "secret")
    phones = [data.phone(i) for i in range(2000)]
    assert len(set(phones)) == len(phones)
    assert all(normalize_phone(p) == p and p.startswith("+861990") for p in phones)
    # 2,000 consecutive accounts spread evenly over the prefixes (10,000 numbers each).
    per_prefix: dict[str, int] = {}
    for phone in phones:
        per_prefix[number_prefix(phone)] = per_prefix.get(number_prefix(phone), 0) + 1
    assert max(per_prefix.values()) <= 3  # the block has 1,000 prefixes


def test_login_names_and_passwords_are_derived_and_valid() -> None:
    data = RunData("0badcafe", "secret")
    name = data.seed_login_name(7)
    assert normalize_login_name(name) == name
    assert name.startswith("loadtest-0badcafe-")
    assert data.password(name) == RunData("0badcafe", "secret").password(name)
    assert data.password(name) != data.password(name, 1)
    assert data.password(name) != RunData("0badcafe", "other").password(name)
    assert "secret" not in repr(data)
    assert re.fullmatch(r"198\.1[89]\.\d+\.\d+", end_user_ip(random.Random(1)))


def test_outbox_reader_sees_only_new_whole_lines(tmp_path: Path) -> None:
    outbox = tmp_path / "sms.jsonl"
    old = {"to": "+8619900000001", "purpose": "LOGIN", "text": "验证码 111111"}
    outbox.write_text(json.dumps(old) + "\n")
    reader = OutboxReader(outbox)
    mark = reader.mark()
    assert reader.wait_code("+8619900000001", "LOGIN", mark, timeout=0) is None
    line = json.dumps({"to": "+8619900000001", "purpose": "LOGIN", "text": "验证码 222222"})
    with open(outbox, "a") as handle:
        handle.write(line[:10])  # half a line: not a message yet
        handle.flush()
        assert reader.wait_code("+8619900000001", "LOGIN", mark, timeout=0) is None
        handle.write(line[10:] + "\n")
    assert reader.wait_code("+8619900000001", "REGISTER", mark, timeout=0) is None
    assert reader.wait_code("+8619900000001", "LOGIN", mark, timeout=0) == "222222"


def test_history_gives_throughput_from_total_differences(tmp_path: Path) -> None:
    history = tmp_path / "h.csv"
    header = "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,95%,99%,Total Request Count"
    rows = [
        "100,1,grpc,Login,0,0,N/A,N/A,N/A,0",
        "101,1,grpc,Login,9,0,10,20,30,10",
        "103,1,grpc,Login,9,0,11,21,31,50",
    ]
    history.write_text("\n".join([header, *rows]) + "\n")
    series = read_history(history)["Login"]
    assert series.seconds == [1.0, 3.0]
    assert series.per_second == [10.0, 20.0]
    assert series.percentiles["99%"] == [30.0, 31.0]


def test_the_driver_does_not_import_gevent() -> None:
    """gevent's monkey-patching belongs to the Locust process, never to pytest's."""
    assert "gevent" not in sys.modules
    assert "locust" not in sys.modules


def test_ceiling_line_warns_near_the_ceiling_and_says_when_unmeasured() -> None:
    def total(per_second: float) -> RpcSummary:
        return RpcSummary("Aggregated", 100, 0, per_second, 1, 2, 3, 4)

    ceiling = Ceiling(1000.0, 5, 20, 1)
    assert "well below it" in ceiling_line(ceiling, total(100))
    near = ceiling_line(ceiling, total(800))
    assert near.startswith("Generator ceiling: 1000 calls/s")
    assert "80% of it" in near
    assert "measured the generator" in near
    assert "not measured" in ceiling_line(Ceiling(0.0, 0, 20, 1), total(100))


def test_a_run_without_the_dev_outbox_refuses_to_start(tmp_path: Path) -> None:
    """Its test numbers are real: without the target's dev outbox it would text strangers."""
    from clients.loadtest.__main__ import main

    for argv in (
        ["--target", "127.0.0.1:1"],
        ["--target", "127.0.0.1:1", "--outbox", str(tmp_path / "gone" / "outbox" / "sms.jsonl")],
    ):
        with pytest.raises(SystemExit) as refused:
            main(argv)
        assert "--outbox" in str(refused.value.code)
