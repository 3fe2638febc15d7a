"""The dev file provider: one JSON line per message, private, never interleaved or duplicated."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.delivery.providers import (
    DeliveryError,
    JsonlFileProvider,
    OutgoingMessage,
)

CODE_TEXT = (
    "【小禾企服网】您正在登录小禾企服网，验证码：246810，5分钟内有效。请勿将验证码告知他人。"
)


def message(message_id: str = "m1", to: str = "+8613800138000") -> OutgoingMessage:
    return OutgoingMessage(
        message_id=message_id, channel="SMS", to=to, purpose="LOGIN", text=CODE_TEXT
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_one_line_with_exactly_the_six_fields(tmp_path: Path) -> None:
    clock = FakeClock(1_790_000_000.25)
    path = tmp_path / "var" / "outbox" / "sms.jsonl"
    provider = JsonlFileProvider(path, clock)
    await provider.send(message("m1"))
    clock.advance(1)
    await provider.send(message("m2", to="+8613900139000"))
    records = lines(path)
    assert len(records) == 2
    assert records[0] == {
        "to": "+8613800138000",
        "channel": "SMS",
        "purpose": "LOGIN",
        "text": CODE_TEXT,
        "message_id": "m1",
        "at": "2026-09-21T14:13:20.250Z",
    }
    assert records[1]["message_id"] == "m2"
    assert records[1]["to"] == "+8613900139000"
    assert records[1]["at"] == "2026-09-21T14:13:21.250Z"
    assert "小禾企服网".encode() in path.read_bytes()  # ensure_ascii=False: readable Chinese


async def test_line_separators_inside_the_text_stay_escaped(tmp_path: Path) -> None:
    path = tmp_path / "email.jsonl"
    text = "第一行\n第二行\u2028第三行\u2029第四行"
    odd = OutgoingMessage(
        message_id="m9", channel="EMAIL", to="a@example.com", purpose="LOGIN", text=text
    )
    await JsonlFileProvider(path, FakeClock()).send(odd)
    await JsonlFileProvider(path, FakeClock()).send(message("m10"))
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
    assert lines(path)[0]["text"] == text


async def test_file_is_0600_and_created_directory_is_0700(tmp_path: Path) -> None:
    path = tmp_path / "var" / "outbox" / "email.jsonl"
    await JsonlFileProvider(path, FakeClock()).send(message())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_an_existing_too_open_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "sms.jsonl"
    path.touch()
    path.chmod(0o644)
    await JsonlFileProvider(path, FakeClock()).send(message())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_duplicate_message_id_is_written_once(tmp_path: Path) -> None:
    path = tmp_path / "sms.jsonl"
    provider = JsonlFileProvider(path, FakeClock())
    await provider.send(message("dup"))
    await provider.send(message("dup"))
    await provider.send(message("other"))
    # A fresh provider (another worker process, or a restart) finds it in the file tail.
    await JsonlFileProvider(path, FakeClock()).send(message("dup"))
    await JsonlFileProvider(path, FakeClock()).send(message("other"))
    assert [r["message_id"] for r in lines(path)] == ["dup", "other"]


async def test_concurrent_sends_share_one_fsync_and_keep_every_line_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sms.jsonl"
    provider = JsonlFileProvider(path, FakeClock())
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counted_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counted_fsync)
    ids = [f"m{i}" for i in range(40)]
    # Each id twice, all at once: a retry racing its first attempt.
    await asyncio.gather(*(provider.send(message(i)) for i in ids + ids))
    assert sorted(r["message_id"] for r in lines(path)) == sorted(ids)
    assert 1 <= len(fsyncs) < len(ids)


async def test_an_id_that_is_a_prefix_of_a_written_one_is_still_written(tmp_path: Path) -> None:
    path = tmp_path / "sms.jsonl"
    await JsonlFileProvider(path, FakeClock()).send(message("abc1"))
    await JsonlFileProvider(path, FakeClock()).send(message("abc"))
    assert [r["message_id"] for r in lines(path)] == ["abc1", "abc"]


async def test_an_unwritable_location_is_a_retryable_error_without_data(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    provider = JsonlFileProvider(blocker / "outbox" / "sms.jsonl", FakeClock())
    with pytest.raises(DeliveryError) as info:
        await provider.send(message())
    assert info.value.retryable
    assert "13800138000" not in str(info.value)
    assert "246810" not in str(info.value)


def test_message_repr_hides_destination_and_text() -> None:
    shown = repr(message())
    assert "13800138000" not in shown
    assert "246810" not in shown
    assert "m1" in shown


def test_message_id_must_be_safe() -> None:
    with pytest.raises(ValueError, match="message id"):
        message('x"y')
    with pytest.raises(ValueError, match="message id"):
        message("")


_WRITER = """
import asyncio, sys
from pathlib import Path
from xiaohe.identity.server.clock import SystemClock
from xiaohe.identity.server.delivery.providers import JsonlFileProvider, OutgoingMessage

async def main(path: str, worker: int, count: int) -> None:
    provider = JsonlFileProvider(Path(path), SystemClock())
    for i in range(count):
        text = f"w{worker}-{i}:" + "验证码" * 3000  # ~27 KB per line, far above PIPE_BUF
        await provider.send(OutgoingMessage(
            message_id=f"w{worker}-{i}", channel="SMS", to=f"+86138{worker:04d}{i:04d}",
            purpose="LOGIN", text=text))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def test_four_processes_append_without_interleaving(tmp_path: Path) -> None:
    path = tmp_path / "outbox" / "sms.jsonl"
    count = 40
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w), str(count)], env=env)
        for w in range(4)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    records = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    assert len(records) == 4 * count
    ids = [r["message_id"] for r in records]
    assert sorted(ids) == sorted(f"w{w}-{i}" for w in range(4) for i in range(count))
    for r in records:
        assert set(r) == {"to", "channel", "purpose", "text", "message_id", "at"}
        assert r["text"] == f"{r['message_id']}:" + "验证码" * 3000
