"""`xiaohe-identity retention sweep` as an operator runs it (issue 14, part 5)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.e2e.test_cli import Cli

KINDS = {
    "sessions",
    "outbox",
    "review_cases",
    "documents",
    "document_files",
    "holder_consents",
    "disclosures",
    "audit_log",
}


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """A CLI on a data directory that does not exist yet."""
    return Cli(data_dir=tmp_path / "var", cwd=tmp_path)


def add_old_message(database_file: Path, message_id: str) -> None:
    """A sent message created in 2001, long past the outbox's seven days."""
    old = "2001-01-01 00:00:00.000000"
    with sqlite3.connect(database_file) as conn:
        conn.execute(
            "INSERT INTO outbox (message_id, channel, purpose, status, attempts,"
            " next_attempt_at, created_at, expires_at) VALUES (?, 'sms', 'login', 'sent', 1,"
            " ?, ?, ?)",
            (message_id, old, old, old),
        )


def messages(database_file: Path) -> list[str]:
    with sqlite3.connect(database_file) as conn:
        return [row[0] for row in conn.execute("SELECT message_id FROM outbox")]


def test_dry_run_counts_and_the_sweep_removes(cli: Cli) -> None:
    """--dry-run counts what is due per kind and deletes nothing; the sweep then removes it,
    a second sweep finds nothing, and the audit chain still verifies."""
    cli.ok("migrate")
    add_old_message(cli.database_file, "msg_old")

    dry = cli.ok("retention", "sweep", "--dry-run").json()
    assert dry["dry_run"] is True
    assert set(dry["counts"]) == KINDS
    assert dry["counts"]["outbox"] == 1
    assert messages(cli.database_file) == ["msg_old"]

    swept = cli.ok("retention", "sweep").json()
    assert (swept["dry_run"], swept["counts"]["outbox"], swept["failed"]) == (False, 1, [])
    assert messages(cli.database_file) == []
    again = cli.ok("retention", "sweep").json()
    assert set(again["counts"].values()) == {0}
    assert cli.ok("audit", "verify").json()["intact"] is True
