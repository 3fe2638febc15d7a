"""Migration 0002 on a database that already holds a plain SHA-256 chain (SQLite, PostgreSQL).

Rows written before it are marked legacy (`alg = 'sha256'`, no acting account) and
verify only as a prefix before the first keyed row; the migrated audit tables
match storage/schema.py column for column.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from tests.conftest import own_schema
from xiaohe.identity.server.audit.log import GENESIS_HASH, AuditLog, legacy_record_hash
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.storage.database import Database, utc
from xiaohe.identity.server.storage.migrate import alembic_config, upgrade_async
from xiaohe.identity.server.storage.schema import audit_log

KEYS = AuditKeys(bytes(range(32)))
LEGACY_ROWS = 4
AUDIT_TABLES = {"audit_log", "audit_checkpoints"}


@pytest.fixture
async def url_at_0001(database_url: str) -> AsyncIterator[str]:
    """A database migrated to revision 0001 only, as deployments before keyed MACs are."""
    async with own_schema(database_url):
        await asyncio.to_thread(command.upgrade, alembic_config(database_url), "0001")
        yield database_url


async def _write_legacy_chain(url: str, clock: FakeClock) -> None:
    """What the previous release wrote: plain SHA-256 links, no acting account, no alg."""
    database = Database.from_url(url)
    prev = GENESIS_HASH
    try:
        async with database.begin() as conn:
            for seq in range(1, LEGACY_ROWS + 1):
                fields = {
                    "seq": seq,
                    "at": utc(clock.now()),
                    "actor_client": "bff",
                    "action": "account.login",
                    "target": f"acct_{seq}",
                    "outcome": "ok",
                    "request_id": f"r{seq}",
                    "prev_hash": prev,
                }
                prev = legacy_record_hash(**fields)
                await conn.execute(
                    sa.text(
                        "INSERT INTO audit_log (seq, at, actor_client, action, target, outcome,"
                        " request_id, prev_hash, hash) VALUES (:seq, :at, :actor_client,"
                        " :action, :target, :outcome, :request_id, :prev_hash, :hash)"
                    ),
                    {**fields, "hash": prev},
                )
                clock.advance(1)
    finally:
        await database.close()


async def test_legacy_rows_verify_only_as_a_prefix(url_at_0001: str, clock: FakeClock) -> None:
    """I7: after the upgrade, old SHA-256 rows are marked legacy and still verify; new rows are
    keyed and chain onto them; a legacy row after a keyed one, or a rewritten legacy
    prefix, breaks the chain."""
    await _write_legacy_chain(url_at_0001, clock)
    await upgrade_async(url_at_0001)
    database = Database.from_url(url_at_0001)
    try:
        log = AuditLog(database, clock, KEYS)
        migrated = await log.query()
        assert {(r.alg, r.actor_account) for r in migrated} == {("sha256", "")}
        report = await log.verify_chain()
        assert (report.intact, report.records_checked, report.legacy_records) == (True, 4, 4)

        for _ in range(3):
            await log.record("account.login", "acct_9", "ok")
        assert (await log.checkpoint()) is not None
        rows = await log.query()
        assert [r.alg for r in rows] == ["sha256"] * 4 + ["hmac-sha256"] * 3
        assert rows[LEGACY_ROWS].prev_hash == rows[LEGACY_ROWS - 1].hash
        report = await log.verify_chain()
        assert (report.intact, report.records_checked, report.legacy_records) == (True, 7, 4)

        # The legacy prefix is pinned by the first keyed row's MAC: rewriting it, links and
        # all, with plain SHA-256 breaks the chain where the keyed rows start.
        prev = GENESIS_HASH
        async with database.begin() as conn:
            for rec in rows[:LEGACY_ROWS]:
                outcome = "denied" if rec.seq == 2 else rec.outcome
                value = legacy_record_hash(
                    seq=rec.seq,
                    at=rec.at,
                    actor_client=rec.actor_client,
                    action=rec.action,
                    target=rec.target,
                    outcome=outcome,
                    request_id=rec.request_id,
                    prev_hash=prev,
                )
                await conn.execute(
                    sa.update(audit_log)
                    .where(audit_log.c.seq == rec.seq)
                    .values(outcome=outcome, prev_hash=prev, hash=value)
                )
                prev = value
        report = await log.verify_chain()
        assert (report.intact, report.first_broken_seq) == (False, LEGACY_ROWS + 1)
    finally:
        await database.close()


async def test_a_legacy_row_after_a_keyed_row_breaks_the_chain(
    url_at_0001: str, clock: FakeClock
) -> None:
    """I7: appending a plain SHA-256 row after the upgrade is not accepted as legacy."""
    await _write_legacy_chain(url_at_0001, clock)
    await upgrade_async(url_at_0001)
    database = Database.from_url(url_at_0001)
    try:
        log = AuditLog(database, clock, KEYS)
        await log.record("account.login", "acct_9", "ok")
        head = (await log.query())[-1]
        at = head.at + timedelta(seconds=1)
        fields = {
            "seq": head.seq + 1,
            "at": at,
            "actor_client": "bff",
            "action": "account.login",
            "target": "acct_10",
            "outcome": "ok",
            "request_id": "forged",
            "prev_hash": head.hash,
        }
        async with database.begin() as conn:
            await conn.execute(
                sa.insert(audit_log).values(
                    **fields, actor_account="", alg="sha256", hash=legacy_record_hash(**fields)
                )
            )
        report = await log.verify_chain()
        assert (report.intact, report.first_broken_seq) == (False, head.seq + 1)
    finally:
        await database.close()
