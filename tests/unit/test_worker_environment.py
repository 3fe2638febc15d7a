"""What the supervisor hands each worker: grpc's own logging quiet unless the operator says."""

from __future__ import annotations

from pathlib import Path

import pytest

from xiaohe.identity.server.config import Settings
from xiaohe.identity.server.supervisor import _worker_env
from xiaohe.identity.server.worker import WORKER_INDEX_ENV, worker_index


def test_workers_get_grpc_verbosity_error_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    monkeypatch.delenv("GRPC_TRACE", raising=False)
    env = _worker_env(Settings(data_dir=tmp_path), "redis://127.0.0.1:1", tmp_path / "metrics")
    assert env["GRPC_VERBOSITY"] == "ERROR"
    assert "GRPC_TRACE" not in env


def test_an_operators_grpc_verbosity_reaches_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRPC_VERBOSITY", "debug")
    monkeypatch.setenv("GRPC_TRACE", "http")
    env = _worker_env(Settings(data_dir=tmp_path), "redis://127.0.0.1:1", tmp_path / "metrics")
    assert (env["GRPC_VERBOSITY"], env["GRPC_TRACE"]) == ("debug", "http")


@pytest.mark.parametrize(("value", "index"), [("0", 0), ("3", 3), ("", None), ("x", None)])
def test_the_worker_index_is_read_from_the_supervisors_variable(
    value: str, index: int | None
) -> None:
    assert worker_index({WORKER_INDEX_ENV: value}) == index
