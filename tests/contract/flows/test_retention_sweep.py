"""The retention sweep removes exactly what docs/privacy.md says is due (SQLite, PostgreSQL).

Rows of every kind are written at known ages around each period's boundary (one
just past it, one just inside), with a fake clock; one sweep (batches of one row,
so every kind loops) must remove exactly the due ones, leave every other row and
file, count them per kind in its report, the metric and the audit log, leave an
audit chain that verifies, and find nothing more on a second run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.contract.faults import failing_writes
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.config import Settings
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.flows.retention import SWEEP_ACTION
from xiaohe.identity.server.storage import schema as s
from xiaohe.identity.server.storage.database import Database, utc

DAY = 86400.0
HOUR = 3600.0
ACCOUNT = "acct_retention"


def container_for(database: Database, tmp_path: Path, clock: FakeClock) -> Container:
    """A container on the test database, its key ring and document dir in `tmp_path`."""
    keyring = tmp_path / "keyring.json"
    KeyRing.create(keyring, clock)
    settings = Settings(
        database_url=database.url.render_as_string(hide_password=False),
        data_dir=tmp_path,
        keyring_file=str(keyring),
        document_dir=str(tmp_path / "documents"),
        retention_batch_size=1,
    )
    return Container(settings, redis_url="redis://127.0.0.1:1", clock=clock)


async def insert(database: Database, table: sa.Table, *rows: dict[str, Any]) -> None:
    async with database.begin() as conn:
        await conn.execute(table.insert(), list(rows))


async def ids(database: Database, column: sa.Column[Any]) -> set[str]:
    async with database.connect() as conn:
        return {str(v) for v in (await conn.execute(sa.select(column))).scalars()}


def ago(now: float, seconds: float) -> Any:
    return utc(now - seconds)


def session(now: float, session_id: str, **times: float) -> dict[str, Any]:
    """A session row; `times` are ages in seconds of revoked/idle/absolute (default: live)."""
    return {
        "session_id": session_id,
        "account_id": ACCOUNT,
        "audience": "xiaohe-platform",
        "amr": "pwd",
        "client_id": "bff",
        "ip_masked": "203.0.113.0/24",
        "user_agent": "test",
        "created_at": ago(now, 400 * DAY),
        "last_used_at": ago(now, 400 * DAY),
        "idle_expires_at": ago(now, times.get("idle", -DAY)),
        "absolute_expires_at": ago(now, times.get("absolute", -DAY)),
        "revoked_at": ago(now, times["revoked"]) if "revoked" in times else None,
        "revoke_reason": "signed_out" if "revoked" in times else None,
    }


def message(now: float, message_id: str, status: str, age: float) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "channel": "sms",
        "purpose": "login",
        "payload_enc": None,
        "status": status,
        "attempts": 1,
        "next_attempt_at": ago(now, age),
        "created_at": ago(now, age),
        "expires_at": ago(now, age - 300),
        "delivery": "delivered" if status == "sent" else None,
        "delivery_code": "DELIVRD" if status == "sent" else None,
    }


def case(
    now: float, case_id: str, state: str, decided_age: float | None, docs: list[str]
) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "kind": "recovery",
        "state": state,
        "account_id": ACCOUNT,
        "subject_type": "natural_person",
        "reference": "ref",
        "document_ids": json.dumps(docs),
        "data_key_wrapped": b"k",
        "fields_enc": b"f",
        "opened_at": ago(now, 400 * DAY),
        "decided_at": None if decided_age is None else ago(now, decided_age),
    }


def document(now: float, document_id: str, age: float, owner: str = ACCOUNT) -> dict[str, Any]:
    return {
        "document_id": document_id,
        "owner": owner,
        "kind": "id_scan",
        "content_type": "image/png",
        "size": 1,
        "file_name_enc": b"n",
        "storage_key": document_id,
        "data_key_wrapped": None,
        "created_at": ago(now, age),
    }


def holder_consent(now: float, consent_id: str, holder: str, age: float) -> dict[str, Any]:
    return {
        "consent_id": consent_id,
        "holder": holder,
        "policy_version": 1,
        "purpose": "sensitive_pi",
        "accepted_at": ago(now, age),
        "client_id": "bff",
        "channel": "app",
        "ip_masked": "",
    }


def disclosure(now: float, disclosure_id: str, age: float) -> dict[str, Any]:
    return {
        "disclosure_id": disclosure_id,
        "account_id": ACCOUNT,
        "client_id": "crm",
        "fields": "name",
        "masked": "",
        "purpose": "kyc",
        "disclosed_at": ago(now, age),
    }


def write_file(directory: Path, name: str, mtime: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"x")
    os.utime(directory / name, (mtime, mtime))


async def test_the_sweep_removes_exactly_what_is_due(
    database: Database, tmp_path: Path, clock: FakeClock
) -> None:
    """Acceptance (issue 14): each kind's due rows go and every other row stays."""
    container = container_for(database, tmp_path, clock)
    audit = container.audit
    try:
        # Audit records: three made 181 days before the sweep, two made 179 days before.
        for _ in range(3):
            await audit.record("account.login", ACCOUNT, "ok")
        clock.advance(2 * DAY)
        for _ in range(2):
            await audit.record("account.login", ACCOUNT, "ok")
        clock.advance(179 * DAY)
        now = clock.now()

        await insert(
            database,
            s.accounts,
            {
                "account_id": ACCOUNT,
                "subject_type": "natural_person",
                "login_name": "retention",
                "password_hash": "x",
                "status": "active",
                "accepted_policy_version": 1,
                "real_name_level": 0,
                "master_key_id": "mk-x",
                "created_at": ago(now, 500 * DAY),
                "updated_at": ago(now, 500 * DAY),
            },
        )
        await insert(
            database,
            s.sessions,
            session(now, "ses_revoked_old", revoked=181 * DAY),
            session(now, "ses_expired_old", absolute=181 * DAY, idle=190 * DAY),
            session(now, "ses_revoked_recent", revoked=179 * DAY),
            session(now, "ses_idle_recent", idle=179 * DAY),
            session(now, "ses_live"),
        )
        await insert(
            database,
            s.refresh_tokens,
            {"token_hash": "t_old", "session_id": "ses_revoked_old", "issued_at": ago(now, 0)},
            {"token_hash": "t_live", "session_id": "ses_live", "issued_at": ago(now, 0)},
        )
        await insert(
            database,
            s.outbox,
            message(now, "msg_sent_old", "sent", 8 * DAY),
            message(now, "msg_failed_old", "failed", 7 * DAY + 1),
            message(now, "msg_sent_recent", "sent", 7 * DAY - 1),
            message(now, "msg_pending_old", "pending", 30 * DAY),
        )
        await insert(
            database,
            s.review_cases,
            case(now, "case_decided_old", "APPROVED", 181 * DAY, ["doc_in_old_case"]),
            case(now, "case_decided_recent", "REJECTED", 179 * DAY, ["doc_in_recent_case"]),
            case(now, "case_open_old", "OPEN", None, ["doc_in_open_case"]),
        )
        await insert(
            database,
            s.review_decisions,
            {
                "decision_id": "dec_old",
                "case_id": "case_decided_old",
                "seq": 1,
                "reviewer_account_id": "acct_reviewer",
                "decision": "approve",
                "reason_enc": b"r",
                "at": ago(now, 181 * DAY),
            },
        )
        await insert(
            database,
            s.documents,
            document(now, "doc_in_old_case", 200 * DAY),
            document(now, "doc_in_recent_case", 200 * DAY, owner="phone:held"),
            document(now, "doc_in_open_case", 200 * DAY),
            document(now, "doc_submitted", 200 * DAY),
            document(now, "doc_loose_old", 31 * DAY),
            document(now, "doc_loose_recent", 29 * DAY),
        )
        await insert(
            database,
            s.real_name_submissions,
            {
                "submission_id": "sub_1",
                "account_id": ACCOUNT,
                "subject_type": "natural_person",
                "state": "VERIFIED",
                "reason_enc": b"r",
                "level": 1,
                "verifier": "rules",
                "claim": "claim_1",
                "details_enc": b"d",
                "document_ids": json.dumps(["doc_submitted"]),
                "submitted_at": ago(now, 200 * DAY),
            },
        )
        files = tmp_path / "documents"
        for name in (
            "doc_in_old_case",
            "doc_in_recent_case",
            "doc_in_open_case",
            "doc_submitted",
            "doc_loose_old",
            "doc_loose_recent",
        ):
            write_file(files, name, now - 200 * DAY)
        write_file(files, "doc_orphan_old", now - 25 * HOUR)
        write_file(files, ".doc_cut.0123456789abcdef.tmp", now - 25 * HOUR)
        write_file(files, "doc_orphan_recent", now - 23 * HOUR)
        await insert(
            database,
            s.holder_consents,
            holder_consent(now, "hc_old_no_document", "phone:gone", 181 * DAY),
            holder_consent(now, "hc_old_with_document", "phone:held", 181 * DAY),
            holder_consent(now, "hc_recent", "phone:gone2", 179 * DAY),
        )
        await insert(
            database,
            s.disclosures,
            disclosure(now, "dis_old", 181 * DAY),
            disclosure(now, "dis_recent", 179 * DAY),
        )

        expected = {
            "sessions": 2,
            "outbox": 2,
            "review_cases": 1,
            "documents": 2,
            "document_files": 2,
            "holder_consents": 1,
            "disclosures": 1,
            "audit_log": 3,
        }
        dry = await container.retention.dry_run()
        # Each kind counts alone: the document of the case still there is not yet free.
        assert dry.counts == {**expected, "documents": 1}
        assert await ids(database, s.sessions.c.session_id) >= {"ses_revoked_old"}

        report = await container.retention.sweep()
        assert report.counts == expected
        assert report.failed == ()

        assert await ids(database, s.sessions.c.session_id) == {
            "ses_revoked_recent",
            "ses_idle_recent",
            "ses_live",
        }
        assert await ids(database, s.refresh_tokens.c.token_hash) == {"t_live"}
        assert await ids(database, s.outbox.c.message_id) == {"msg_sent_recent", "msg_pending_old"}
        assert await ids(database, s.review_cases.c.case_id) == {
            "case_decided_recent",
            "case_open_old",
        }
        assert await ids(database, s.review_decisions.c.decision_id) == set()
        assert await ids(database, s.documents.c.document_id) == {
            "doc_in_recent_case",
            "doc_in_open_case",
            "doc_submitted",
            "doc_loose_recent",
        }
        assert {p.name for p in files.iterdir()} == {
            "doc_in_recent_case",
            "doc_in_open_case",
            "doc_submitted",
            "doc_loose_recent",
            "doc_orphan_recent",
        }
        assert await ids(database, s.holder_consents.c.consent_id) == {
            "hc_old_with_document",
            "hc_recent",
        }
        assert await ids(database, s.disclosures.c.disclosure_id) == {"dis_recent"}

        # The audit log: the three old records gone, the two younger ones kept, the chain
        # verifying from its preserved base; one sweep record per kind with removals.
        records = await audit.query(limit=1000)
        assert [r.seq for r in records if r.action == "account.login"] == [4, 5]
        sweeps = {r.target: r.outcome for r in records if r.action == SWEEP_ACTION}
        assert sweeps == {k: f"removed:{n}" for k, n in expected.items()}
        chain = await audit.verify_chain()
        assert chain.intact, chain
        assert chain.pruned_through == 3

        metrics = container.metrics.render().decode()
        assert 'xiaohe_retention_removed_total{kind="sessions"} 2.0' in metrics
        assert 'xiaohe_retention_removed_total{kind="audit_log"} 3.0' in metrics

        again = await container.retention.sweep()
        assert again.counts == dict.fromkeys(expected, 0)
        assert (await audit.verify_chain()).intact
    finally:
        await container.close()


async def test_a_failing_kind_keeps_its_rows_and_files_and_the_others_still_run(
    database: Database, tmp_path: Path, clock: FakeClock
) -> None:
    """A kind whose delete fails is reported and logged; its batch is rolled back (the
    document row stays and so does its file, removed only after a commit); the next kind
    still runs, and a later sweep finishes the work."""
    container = container_for(database, tmp_path, clock)
    try:
        now = clock.now()
        await insert(
            database,
            s.accounts,
            {
                "account_id": ACCOUNT,
                "subject_type": "natural_person",
                "login_name": "retention",
                "password_hash": "x",
                "status": "active",
                "accepted_policy_version": 1,
                "real_name_level": 0,
                "master_key_id": "mk-x",
                "created_at": ago(now, 500 * DAY),
                "updated_at": ago(now, 500 * DAY),
            },
        )
        await insert(database, s.documents, document(now, "doc_loose_old", 31 * DAY))
        write_file(tmp_path / "documents", "doc_loose_old", now - 31 * DAY)
        await insert(database, s.disclosures, disclosure(now, "dis_old", 181 * DAY))

        async with failing_writes(database, "documents", "DELETE"):
            report = await container.retention.sweep()
        assert report.failed == ("documents",)
        assert (report.counts["documents"], report.counts["disclosures"]) == (0, 1)
        assert await ids(database, s.documents.c.document_id) == {"doc_loose_old"}
        assert (tmp_path / "documents" / "doc_loose_old").exists()
        assert await ids(database, s.disclosures.c.disclosure_id) == set()

        again = await container.retention.sweep()
        assert (again.failed, again.counts["documents"]) == ((), 1)
        assert await ids(database, s.documents.c.document_id) == set()
        assert not (tmp_path / "documents" / "doc_loose_old").exists()
    finally:
        await container.close()
