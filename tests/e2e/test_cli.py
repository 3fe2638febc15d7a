"""The operator commands of `xiaohe-identity`, run as an operator would: the script, a subprocess.

Each test gets its own data directory through XIAOHE_IDENTITY_DATA_DIR and no
other XIAOHE_IDENTITY_* variable from the environment, so the commands use
their defaults: SQLite and the key ring file inside the data directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sqlite3
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.e2e.conftest import CLI
from xiaohe.identity.server.audit.checkpoints import Checkpoint, anchor_text
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.callers.registry import ClientRegistry
from xiaohe.identity.server.clock import SystemClock
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.storage.database import Database

ACCESS_TOKEN_TTL = 600
SIGNING_KEY_EXTRA_KEEP = 3600


@dataclass(frozen=True)
class Result:
    """One finished CLI run."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout parsed as JSON (the commands print nothing else there)."""
        return json.loads(self.stdout)

    def messages(self) -> list[str]:
        """stderr lines meant for the operator: everything but the JSON log records."""
        lines = []
        for line in self.stderr.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                lines.append(line)
                continue
            if not (isinstance(record, dict) and "level" in record):
                lines.append(line)
        return lines


@dataclass(frozen=True)
class Cli:
    """Runs `xiaohe-identity` against one data directory."""

    data_dir: Path
    cwd: Path

    @property
    def database_file(self) -> Path:
        """The SQLite file the commands use by default."""
        return self.data_dir / "identity.db"

    @property
    def keyring_file(self) -> Path:
        """The key ring file the commands use by default."""
        return self.data_dir / "keyring.json"

    def run(self, *args: str) -> Result:
        """Run one command to completion."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_IDENTITY_")}
        env["XIAOHE_IDENTITY_DATA_DIR"] = str(self.data_dir)
        done = subprocess.run(
            [CLI, *args], env=env, cwd=self.cwd, capture_output=True, text=True, timeout=60
        )
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str) -> Result:
        """Run a command that must succeed."""
        result = self.run(*args)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        return result

    def keyring(self) -> dict[str, Any]:
        """The key ring file's content."""
        document = json.loads(self.keyring_file.read_text())
        assert isinstance(document, dict)
        return document


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """A CLI on a data directory that does not exist yet."""
    return Cli(data_dir=tmp_path / "var", cwd=tmp_path)


def mode_of(path: Path) -> int:
    """Permission bits of a file."""
    return stat.S_IMODE(path.stat().st_mode)


def one_line_error(result: Result) -> str:
    """The single operator-facing error line of a failed command."""
    assert result.returncode != 0
    assert result.stdout == ""
    messages = result.messages()
    assert len(messages) == 1, result.stderr
    assert messages[0].startswith("xiaohe-identity: "), messages
    return messages[0]


def test_migrate_creates_the_schema_and_can_run_again(cli: Cli) -> None:
    """`migrate` creates the database in a private data directory; a second run is a no-op."""
    first = cli.ok("migrate")
    assert "up to date" in first.stdout
    assert cli.database_file.exists()
    assert mode_of(cli.data_dir) == 0o700
    with sqlite3.connect(cli.database_file) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"accounts", "identifiers", "sessions", "clients", "audit_log"} <= tables
    cli.ok("migrate")


def test_clients_create_list_and_revoke(cli: Cli) -> None:
    """The secret is printed once at creation, never listed; revocation shows in the list."""
    created = cli.ok("clients", "create", "web", "--grant", "codes", "--grant", "auth").json()
    client_id, secret = created["client_id"], created["client_secret"]
    assert client_id.startswith("xhc_")
    assert secret.startswith("xhs_")
    assert sorted(created["grants"]) == ["auth", "codes"]

    # The printed secret is the one the server will accept.
    async def authenticate() -> frozenset[str]:
        database = Database.from_url(f"sqlite:///{cli.database_file}")
        try:
            client = await ClientRegistry(database, SystemClock()).authenticate(client_id, secret)
        finally:
            await database.close()
        return client.grants

    assert asyncio.run(authenticate()) == {"auth", "codes"}

    listing = cli.ok("clients", "list")
    assert secret not in listing.stdout
    assert "sha256$" not in listing.stdout
    listed = {c["client_id"]: c for c in listing.json()}
    assert set(listed) == {client_id}
    assert listed[client_id]["name"] == "web"
    assert listed[client_id]["revoked"] is False
    assert "client_secret" not in listed[client_id]

    revoked = cli.ok("clients", "revoke", client_id).json()
    assert revoked == {"client_id": client_id, "revoked": True}
    assert cli.ok("clients", "list").json()[0]["revoked"] is True

    assert cli.ok("clients", "revoke", client_id).json()["revoked"] is True  # idempotent
    unknown = cli.run("clients", "revoke", "xhc_000000000000000000000000")
    assert unknown.returncode == 1
    assert "client" in one_line_error(unknown)


def test_an_unknown_grant_fails_with_one_line_and_creates_nothing(cli: Cli) -> None:
    """`--grant nonsense` is refused before anything is stored."""
    result = cli.run("clients", "create", "x", "--grant", "nonsense")
    message = one_line_error(result)
    assert result.returncode == 1
    assert "nonsense" in message
    assert cli.ok("clients", "list").json() == []


def test_a_second_client_with_a_live_name_is_refused_in_one_line(cli: Cli) -> None:
    """`clients create web` twice: the second says which client holds the name, makes nothing."""
    first = cli.ok("clients", "create", "web", "--grant", "codes").json()
    result = cli.run("clients", "create", "web", "--grant", "auth")
    message = one_line_error(result)
    assert result.returncode == 1
    assert "already named 'web'" in message
    assert first["client_id"] in message
    assert first["client_secret"] not in result.stdout + result.stderr
    assert [c["client_id"] for c in cli.ok("clients", "list").json()] == [first["client_id"]]


def test_policy_publish_numbers_versions_and_refuses_the_same_text(
    cli: Cli, tmp_path: Path
) -> None:
    """The packaged policy is version 1; a new text becomes 2; the same text again is refused."""
    text = "# 小禾企服隐私政策（第二版）\n\n我们如何收集和使用您的个人信息。\n"
    policy = tmp_path / "policy-v2.md"
    policy.write_text(text, encoding="utf-8")
    published = cli.ok("policy", "publish", str(policy)).json()
    assert published == {
        "version": 2,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "purposes_changed": True,
    }

    again = cli.run("policy", "publish", str(policy))
    assert again.returncode == 1
    assert "identical" in one_line_error(again)

    policy.write_text(text + "\n第三版新增条款。\n", encoding="utf-8")
    assert cli.ok("policy", "publish", str(policy)).json()["version"] == 3

    missing = cli.run("policy", "publish", str(tmp_path / "absent.md"))
    assert missing.returncode == 1
    assert "cannot read" in one_line_error(missing)
    with sqlite3.connect(cli.database_file) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM policy_versions")]
    assert sorted(versions) == [1, 2, 3]


# -- issue 14: notify-only policy versions --
def test_policy_publish_notify_only(cli: Cli, tmp_path: Path) -> None:
    """`policy publish FILE --notify-only` publishes a version that changes no purpose."""
    policy = tmp_path / "policy-v2.md"
    policy.write_text("# 小禾企服隐私政策（第二版）\n\n仅修订联系方式。\n", encoding="utf-8")
    published = cli.ok("policy", "publish", str(policy), "--notify-only").json()
    assert (published["version"], published["purposes_changed"]) == (2, False)


# -- end notify-only policy versions --


def test_key_rotation_commands(cli: Cli) -> None:
    """`keys rotate` and `keys rotate-signing` add keys, keep the old ones, keep the file 0600;
    `rotate-signing --stage` publishes the next signing key, which the next rotation activates."""
    master = cli.ok("keys", "rotate").json()
    assert master["data_keys_rewrapped"] == 0  # no accounts yet
    ring = cli.keyring()
    assert mode_of(cli.keyring_file) == 0o600
    master_ids = [k["id"] for k in ring["master_keys"]]
    assert len(master_ids) == 2
    assert ring["active_master_key_id"] == master["active_master_key"] == master_ids[-1]
    assert master_ids[0] != master_ids[-1]
    first_kid = ring["active_signing_kid"]

    second = cli.ok("keys", "rotate").json()
    assert second["active_master_key"] not in master_ids
    assert len(cli.keyring()["master_keys"]) == 3

    signing = cli.ok("keys", "rotate-signing").json()
    new_kid = signing["active_signing_key"]
    assert new_kid != first_kid
    ring = cli.keyring()
    assert mode_of(cli.keyring_file) == 0o600
    assert ring["active_signing_kid"] == new_kid
    by_kid = {k["kid"]: k for k in ring["signing_keys"]}
    assert set(by_kid) == {first_kid, new_kid}
    retired = by_kid[first_kid]
    assert retired["retired_at"] is not None
    assert retired["drop_after"] == pytest.approx(
        retired["retired_at"] + ACCESS_TOKEN_TTL + SIGNING_KEY_EXTRA_KEEP
    )
    assert by_kid[new_kid]["retired_at"] is None
    # The master keys were left alone by the signing rotation.
    assert ring["active_master_key_id"] == second["active_master_key"]

    # Staged: published, not signing; staging again changes nothing; rotating activates it.
    staged = cli.ok("keys", "rotate-signing", "--stage").json()
    assert staged["active_signing_key"] == new_kid
    assert staged["staged_signing_key"] not in {first_kid, new_kid}
    assert cli.ok("keys", "rotate-signing", "--stage").json() == staged
    ring = cli.keyring()
    assert ring["active_signing_kid"] == new_kid
    assert {k["kid"]: k["retired_at"] for k in ring["signing_keys"]}[
        staged["staged_signing_key"]
    ] is None
    third = cli.ok("keys", "rotate-signing").json()["active_signing_key"]
    assert third == staged["staged_signing_key"]
    assert {k["kid"] for k in cli.keyring()["signing_keys"]} == {first_kid, new_kid, third}


def test_rotate_without_rewrap_then_rewrap(cli: Cli) -> None:
    """A staged rotation: the new key is only added (every copy of the ring can unwrap
    under it before anything is wrapped under it); `keys rewrap` activates it and re-wraps."""
    cli.ok("migrate")
    cli.ok("keys", "rotate")  # the ring exists now (embedded store)
    before = cli.keyring()["active_master_key_id"]
    staged = cli.ok("keys", "rotate", "--no-rewrap").json()
    assert staged["active_master_key"] == before
    assert staged["staged_master_key"] != before
    ring = cli.keyring()
    assert ring["active_master_key_id"] == before  # nothing is wrapped under it yet
    assert len(ring["master_keys"]) == 3
    assert mode_of(cli.keyring_file) == 0o600

    rewrap = cli.ok("keys", "rewrap").json()
    assert rewrap == {"active_master_key": staged["staged_master_key"], "data_keys_rewrapped": 0}
    assert cli.keyring()["active_master_key_id"] == staged["staged_master_key"]
    assert len(cli.keyring()["master_keys"]) == 3


EMPTY_REPORT = {
    "intact": True,
    "records_checked": 0,
    "first_broken_seq": 0,
    "checkpoints_checked": 0,
    "last_checkpoint_seq": 0,
    "truncated": False,
    "first_bad_checkpoint_seq": 0,
    "legacy_records": 0,
    "pruned_through": 0,
}


def append_audit_records(cli: Cli, count: int, *, checkpoint: bool = False) -> Checkpoint | None:
    """Append records the way the server does, keyed by the CLI's own key ring."""

    async def append() -> Checkpoint | None:
        keys = KeyRing.load_or_create(cli.keyring_file, SystemClock()).audit_keys
        database = Database.from_url(f"sqlite:///{cli.database_file}")
        try:
            log = AuditLog(database, SystemClock(), keys)
            for n in range(count):
                await log.record(
                    "client.create", f"xhc_{n:024d}", "ok", actor_client="cli", request_id=f"r{n}"
                )
            return await log.checkpoint() if checkpoint else None
        finally:
            await database.close()

    return asyncio.run(append())


def test_audit_verify_detects_a_tampered_row(cli: Cli) -> None:
    """I7: `audit verify` exits 0 on an intact chain and 1, naming the row, after an edit."""
    empty = cli.ok("audit", "verify").json()
    assert empty == EMPTY_REPORT

    append_audit_records(cli, 3)
    intact = cli.ok("audit", "verify").json()
    assert intact == {**EMPTY_REPORT, "records_checked": 3}

    with sqlite3.connect(cli.database_file) as conn:
        changed = conn.execute("UPDATE audit_log SET outcome = 'denied' WHERE seq = 2").rowcount
    assert changed == 1
    broken = cli.run("audit", "verify")
    assert broken.returncode == 1
    report = broken.json()
    assert report["intact"] is False
    assert report["first_broken_seq"] == 2


def test_audit_verify_reports_checkpoints_truncation_and_anchors(cli: Cli) -> None:
    """I7: `audit verify` prints the checkpoints it checked; rows cut off after a checkpoint are
    truncation (exit 1); `--anchor-seq/--anchor-mac` check an anchor saved from the log."""
    cli.ok("migrate")
    first = append_audit_records(cli, 4, checkpoint=True)
    second = append_audit_records(cli, 2, checkpoint=True)
    assert first is not None
    assert second is not None
    logged_mac = anchor_text(second.mac)  # as the INFO line shows it
    report = cli.ok("audit", "verify", "--anchor-seq", "6", "--anchor-mac", logged_mac).json()
    assert report == {
        **EMPTY_REPORT,
        "records_checked": 6,
        "checkpoints_checked": 2,
        "last_checkpoint_seq": 6,
    }

    with sqlite3.connect(cli.database_file) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq >= 4")
    truncated = cli.run("audit", "verify")
    assert truncated.returncode == 1
    assert truncated.json() == {
        **EMPTY_REPORT,
        "intact": False,
        "records_checked": 3,
        "first_broken_seq": 4,
        "checkpoints_checked": 2,
        "last_checkpoint_seq": 6,
        "truncated": True,
    }

    # The checkpoints deleted as well: only the anchor from the log still shows the cut.
    with sqlite3.connect(cli.database_file) as conn:
        conn.execute("DELETE FROM audit_checkpoints")
    assert cli.ok("audit", "verify").json()["intact"] is True
    anchored = cli.run("audit", "verify", "--anchor-seq", "6", "--anchor-mac", logged_mac)
    assert anchored.returncode == 1
    assert anchored.json()["truncated"] is True

    bad = cli.run("audit", "verify", "--anchor-seq", "2")
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.messages() == ["xiaohe-identity: --anchor-mac: must be 64 hex digits"]


def test_an_unreachable_database_is_one_line_and_leaves_the_ring_alone(tmp_path: Path) -> None:
    """An operator's wrong database URL: each command says so in one line (no traceback),
    and `keys rotate` does not rotate a ring it could not re-wrap under."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens once the socket is closed
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOHE_IDENTITY_")}
    env |= {
        "XIAOHE_IDENTITY_DATA_DIR": str(tmp_path / "var"),
        "XIAOHE_IDENTITY_DATABASE_URL": f"postgresql://identity@127.0.0.1:{closed}/identity",
        "XIAOHE_IDENTITY_KEYRING_FILE": str(tmp_path / "keyring.json"),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    assert run("keys", "init").returncode == 0
    ring_before = (tmp_path / "keyring.json").read_text()
    for command in (["migrate"], ["keys", "rotate"], ["keys", "rewrap"], ["clients", "list"]):
        done = run(*command)
        assert done.returncode == 1, (command, done.stderr[-2000:])
        lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
        assert len(lines) == 1, (command, done.stderr[-2000:])
        assert lines[0].startswith("xiaohe-identity: "), lines
        assert "Traceback" not in done.stderr
    assert (tmp_path / "keyring.json").read_text() == ring_before


# -- operator roles (issue 12: reviewers) ----------------------------------------------


def create_account(cli: Cli, login_name: str, *, totp: bool = True) -> str:
    """An account in the CLI's database, created as registration stores one, with a confirmed
    TOTP factor unless `totp` is False; its id."""
    from xiaohe.identity.server.accounts.models import NewAccount, SubjectType
    from xiaohe.identity.server.config import Settings
    from xiaohe.identity.server.container import Container
    from xiaohe.identity.server.totp.codes import code_at

    async def create() -> str:
        settings = Settings(data_dir=cli.data_dir)
        container = Container(settings, redis_url="redis://127.0.0.1:0")
        try:
            accounts = container.accounts
            account_id = accounts.new_account_id()
            async with container.database.begin():
                await accounts.create(
                    NewAccount(
                        account_id=account_id,
                        subject_type=SubjectType.NATURAL_PERSON,
                        login_name=login_name,
                        password_hash="$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
                        accepted_policy_version=1,
                    ),
                    [accounts.key("login_name", login_name)],
                )
            if totp:
                enrolment = await container.totp.start_enrolment(account_id, login_name)
                query = parse_qs(urlparse(enrolment.otpauth_uri).query)
                code = code_at(query["secret"][0], container.clock.now())
                assert await container.totp.activate(account_id, code)
            return account_id
        finally:
            await container.close()

    return asyncio.run(create())


def audit_rows(cli: Cli, action_prefix: str) -> list[tuple[str, str, str]]:
    """(action, target, outcome) of the audit rows whose action starts with the prefix."""
    with sqlite3.connect(cli.database_file) as conn:
        rows = conn.execute(
            "SELECT action, target, outcome FROM audit_log WHERE action LIKE ? ORDER BY seq",
            (action_prefix + "%",),
        ).fetchall()
    return [tuple(r) for r in rows]


def test_operators_grant_list_and_revoke_the_review_role(cli: Cli) -> None:
    """D2, P5: `operators grant|revoke LOGIN_NAME review` changes who reviews, audited; `list`
    names the holders; an account without TOTP, or an unknown login name, is one line and
    changes nothing."""
    cli.ok("migrate")
    account_id = create_account(cli, "shen.pingshen")
    assert cli.ok("operators", "list", "review").json() == []

    granted = cli.ok("operators", "grant", "shen.pingshen", "review").json()
    assert granted == {"account_id": account_id, "role": "review", "changed": True}
    again = cli.ok("operators", "grant", "Shen.Pingshen", "review").json()
    assert again["changed"] is False
    (holder,) = cli.ok("operators", "list").json()
    assert (holder["login_name"], holder["account_id"], holder["role"]) == (
        "shen.pingshen",
        account_id,
        "review",
    )
    assert holder["granted_at"]

    create_account(cli, "no.totp", totp=False)
    refused = cli.run("operators", "grant", "no.totp", "review")
    assert "no confirmed TOTP second factor" in one_line_error(refused)

    unknown = cli.run("operators", "grant", "nobody.here", "review")
    assert unknown.returncode == 1
    assert "no account has that login name" in one_line_error(unknown)

    bad_role = cli.run("operators", "grant", "shen.pingshen", "admin")
    assert bad_role.returncode == 2
    assert "invalid choice" in bad_role.stderr

    revoked = cli.ok("operators", "revoke", "shen.pingshen", "review").json()
    assert revoked["changed"] is True
    assert cli.ok("operators", "list", "review").json() == []
    assert audit_rows(cli, "operator.role.") == [
        ("operator.role.grant", account_id, "review"),
        ("operator.role.grant", account_id, "unchanged"),
        ("operator.role.revoke", account_id, "review"),
    ]


def test_clients_grants_replaces_field_and_purpose_grants_and_audits(cli: Cli) -> None:
    """`clients grants` sets field grants and purposes (issue 13); unknown ones are refused."""
    created = cli.ok("clients", "create", "orders", "--grant", "validate").json()
    client_id = created["client_id"]
    changed = cli.ok(
        "clients", "grants", client_id,
        "--grant", "directory", "--grant", "field:phone", "--grant", "purpose:delivery",
    ).json()  # fmt: skip
    assert changed == {
        "client_id": client_id,
        "grants": ["directory", "field:phone", "purpose:delivery"],
    }
    assert cli.ok("clients", "list").json()[0]["grants"] == changed["grants"]
    with sqlite3.connect(cli.database_file) as conn:
        audited = conn.execute(
            "SELECT COUNT(*) FROM audit_log WHERE action = 'client.grants' AND target = ?",
            (client_id,),
        ).fetchone()[0]
    assert audited == 1

    refused = cli.run("clients", "grants", client_id, "--grant", "field:shoe_size")
    assert "field:shoe_size" in one_line_error(refused)
    assert cli.ok("clients", "list").json()[0]["grants"] == changed["grants"]
