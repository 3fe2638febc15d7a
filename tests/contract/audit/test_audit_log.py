"""The audit log is append-only, hash-chained and linear under concurrency (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import multiprocessing
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from xiaohe.identity.server import context
from xiaohe.identity.server.audit.log import GENESIS_HASH, AuditLog, record_mac
from xiaohe.identity.server.clock import FakeClock, SystemClock
from xiaohe.identity.server.crypto.audit_keys import MAC_INFO, AuditKeys, hkdf_sha256
from xiaohe.identity.server.storage.database import Database

AUDIT_ROOT = bytes(range(32))
KEYS = AuditKeys(AUDIT_ROOT)

PER_PROCESS = 15
_CHILD_PRELOAD = (
    "pytest",
    "aiosqlite",
    "asyncpg",
    "sqlalchemy.ext.asyncio",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "xiaohe.identity.server.audit.log",
)


async def _append_many(url: str, worker: int, count: int) -> None:
    db = Database.from_url(url)
    try:
        log = AuditLog(db, SystemClock(), KEYS)
        for i in range(count):
            await log.record(
                "test.append",
                f"acct_w{worker}_{i}",
                "ok",
                actor_client=f"w{worker}",
                request_id="r",
            )
    finally:
        await db.close()


def _process_main(url: str, worker: int, count: int) -> None:
    """Entry point of a child process: its own event loop and its own Database."""
    asyncio.run(_append_many(url, worker, count))


async def _all_rows(database: Database) -> list[sa.Row[tuple[object, ...]]]:
    async with database.connect() as conn:
        return list((await conn.execute(sa.text("SELECT * FROM audit_log ORDER BY seq"))).all())


async def test_chain_verifies_after_many_records(database: Database, clock: FakeClock) -> None:
    """[I7] Records are hash-chained from a genesis of 64 zeros; the chain verifies."""
    log = AuditLog(database, clock, KEYS)
    for i in range(1, 26):
        assert await log.record("account.login", f"acct_{i:04d}", "ok", actor_client="bff") == i
        clock.advance(1.5)
    report = await log.verify_chain()
    assert report.intact
    assert report.records_checked == 25
    assert report.first_broken_seq == 0
    records = await log.query(limit=1000)
    assert [r.seq for r in records] == list(range(1, 26))
    assert records[0].prev_hash == GENESIS_HASH
    for prev, cur in itertools.pairwise(records):
        assert cur.prev_hash == prev.hash


async def test_chain_value_is_hmac_of_canonical_json(database: Database, clock: FakeClock) -> None:
    """[I7] The documented encoding: sorted-key JSON of the fields, `at` in UTC with µs,
    under HMAC-SHA256 with the key HKDF derives from the ring's audit key."""
    log = AuditLog(database, clock, KEYS)
    clock.advance(0.123456)
    await log.record("code.issue", "blind_ab12", "sent", actor_client="bff", request_id="req-1")
    (rec,) = await log.query()
    at = datetime.fromtimestamp(clock.now(), tz=UTC).isoformat(timespec="microseconds")
    body = {
        "seq": 1,
        "at": at,
        "actor_client": "bff",
        "actor_account": "",
        "action": "code.issue",
        "target": "blind_ab12",
        "outcome": "sent",
        "request_id": "req-1",
        "prev_hash": "0" * 64,
    }
    expected = hmac.new(
        hkdf_sha256(AUDIT_ROOT, MAC_INFO),
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
        hashlib.sha256,
    ).hexdigest()
    assert rec.hash == expected
    assert rec.alg == "hmac-sha256"
    assert at.endswith(".123456+00:00")


async def test_timestamps_are_utc(database: Database, clock: FakeClock) -> None:
    """[I7] Record time is UTC, stored and returned with microseconds."""
    log = AuditLog(database, clock, KEYS)
    await log.record("account.register", "acct_1", "ok")
    (rec,) = await log.query()
    assert rec.at.utcoffset() == timedelta(0)
    assert rec.at == datetime.fromtimestamp(clock.now(), tz=UTC)
    async with database.connect() as conn:
        raw = (await conn.execute(sa.text("SELECT at FROM audit_log"))).scalar_one()
    if isinstance(raw, datetime) and raw.tzinfo is not None:
        assert raw.astimezone(UTC) == rec.at
    else:  # SQLite keeps the UTC wall time as text
        assert str(raw).startswith(rec.at.strftime("%Y-%m-%d %H:%M:%S"))


async def test_actor_and_request_id_come_from_context(database: Database, clock: FakeClock) -> None:
    log = AuditLog(database, clock, KEYS)
    token = context.bind(context.RequestContext(request_id="req-42", client_id="bff-web"))
    try:
        await log.record("account.login", "acct_1", "ok")
        await log.record("account.login", "acct_1", "ok", actor_client="cli", request_id="r2")
    finally:
        context.reset(token)
    first, second = await log.query()
    assert (first.actor_client, first.request_id) == ("bff-web", "req-42")
    assert (second.actor_client, second.request_id) == ("cli", "r2")


async def test_query_filters_by_time_and_action(database: Database, clock: FakeClock) -> None:
    log = AuditLog(database, clock, KEYS)
    start = clock.now()
    for i in range(6):
        await log.record("a.even" if i % 2 == 0 else "a.odd", f"t{i}", "ok")
        clock.advance(10)
    assert [r.target for r in await log.query(since=start + 25)] == ["t3", "t4", "t5"]
    assert [r.target for r in await log.query(action="a.odd")] == ["t1", "t3", "t5"]
    assert [r.target for r in await log.query(since=start + 15, action="a.even", limit=1)] == ["t2"]
    with pytest.raises(ValueError, match="limit"):
        await log.query(limit=0)


PERSONAL_TARGETS = (
    "13812345678",
    "+8613812345678",
    "acct:8613912345678",
    "zhangsan@example.com",
    "user=Li.Si+tag@mail.example.cn",
    "11010519491231002X",
    "id:440524188001010014",
)
PSEUDONYMOUS_TARGETS = (
    "acct_01HQ3K8Z9X2V4B6N8M0P2R4T6W",
    "a1b2c3d4e5f60718293a4b5c6d7e8f90",
    "case-17",
    "client:bff-web",
)


async def test_targets_looking_like_personal_data_are_refused(
    database: Database, clock: FakeClock
) -> None:
    """[I7] Audit records hold no raw personal data: phone, email or ID-shaped targets fail."""
    log = AuditLog(database, clock, KEYS)
    for target in PERSONAL_TARGETS:
        with pytest.raises(ValueError, match="pseudonymous") as info:
            await log.record("account.login", target, "ok")
        assert target not in str(info.value)
    assert await log.query() == []
    for seq, target in enumerate(PSEUDONYMOUS_TARGETS, start=1):
        assert await log.record("account.login", target, "ok") == seq


async def test_oversized_fields_are_refused(database: Database, clock: FakeClock) -> None:
    log = AuditLog(database, clock, KEYS)
    with pytest.raises(ValueError, match="action"):
        await log.record("x" * 101, "acct_1", "ok")
    with pytest.raises(ValueError, match="empty"):
        await log.record("account.login", "acct_1", "")


async def test_concurrent_tasks_keep_the_chain_linear(database: Database) -> None:
    """[I7] 20 concurrent appenders on one Database produce one contiguous, intact chain."""
    log = AuditLog(database, SystemClock(), KEYS)
    seqs = await asyncio.gather(*(log.record("test.task", f"acct_{i}", "ok") for i in range(20)))
    assert sorted(seqs) == list(range(1, 21))
    report = await log.verify_chain()
    assert report == type(report)(True, 20, 0)


async def test_concurrent_processes_keep_the_chain_linear(
    database: Database, database_url: str
) -> None:
    """[I7] Three OS processes, each with its own Database, append to one linear intact chain."""
    # A fork server (not a plain fork of this threaded process) with the heavy imports
    # preloaded once, so the three children start in milliseconds instead of a second.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(_CHILD_PRELOAD))
    procs = [
        ctx.Process(target=_process_main, args=(database_url, w, PER_PROCESS)) for w in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        await asyncio.to_thread(p.join, 60)
        assert p.exitcode == 0
    rows = await _all_rows(database)
    assert [r.seq for r in rows] == list(range(1, 3 * PER_PROCESS + 1))
    assert {r.actor_client for r in rows} == {"w0", "w1", "w2"}
    report = await AuditLog(database, SystemClock(), KEYS).verify_chain()
    assert report.intact
    assert report.records_checked == 3 * PER_PROCESS


async def _fill(database: Database, clock: FakeClock, count: int) -> AuditLog:
    log = AuditLog(database, clock, KEYS)
    for i in range(count):
        await log.record("account.login", f"acct_{i}", "ok")
        clock.advance(1)
    return log


async def test_tampered_outcome_is_detected(database: Database, clock: FakeClock) -> None:
    """[I7] Changing a stored field breaks the chain at that record."""
    log = await _fill(database, clock, 10)
    async with database.begin() as conn:
        await conn.execute(sa.text("UPDATE audit_log SET outcome = 'denied' WHERE seq = 6"))
    report = await log.verify_chain()
    assert not report.intact
    assert report.first_broken_seq == 6
    assert report.records_checked == 6


async def test_deleted_middle_row_is_detected(database: Database, clock: FakeClock) -> None:
    """[I7] Removing a record from the middle breaks the chain at the missing seq."""
    log = await _fill(database, clock, 10)
    async with database.begin() as conn:
        await conn.execute(sa.text("DELETE FROM audit_log WHERE seq = 4"))
    report = await log.verify_chain()
    assert not report.intact
    assert report.first_broken_seq == 4


async def test_rewritten_row_with_recomputed_hash_breaks_the_next_link(
    database: Database, clock: FakeClock
) -> None:
    """[I7] Even a forger holding the key, recomputing only the changed row's MAC, is caught by
    the following prev link."""
    log = await _fill(database, clock, 8)
    (rec,) = [r for r in await log.query() if r.seq == 3]
    forged = record_mac(
        KEYS,
        seq=rec.seq,
        at=rec.at,
        actor_client=rec.actor_client,
        actor_account=rec.actor_account,
        action=rec.action,
        target=rec.target,
        outcome="denied",
        request_id=rec.request_id,
        prev_hash=rec.prev_hash,
    )
    async with database.begin() as conn:
        await conn.execute(
            sa.text("UPDATE audit_log SET outcome = 'denied', hash = :h WHERE seq = 3"),
            {"h": forged},
        )
    report = await log.verify_chain()
    assert not report.intact
    assert report.first_broken_seq == 4


async def test_verify_streams_across_batches(database: Database, clock: FakeClock) -> None:
    """Verification reads in batches; a break beyond the first batch is still found."""
    log = AuditLog(database, clock, KEYS)
    async with database.begin():
        for _ in range(520):
            await log.record("bulk.append", "acct_1", "ok")
    assert await log.verify_chain() == type(await log.verify_chain())(True, 520, 0)
    async with database.begin() as conn:
        await conn.execute(sa.text("UPDATE audit_log SET target = 'acct_2' WHERE seq = 510"))
    report = await log.verify_chain()
    assert (report.intact, report.first_broken_seq, report.records_checked) == (False, 510, 510)


async def test_empty_log_is_intact(database: Database, clock: FakeClock) -> None:
    report = await AuditLog(database, clock, KEYS).verify_chain()
    assert (report.intact, report.records_checked, report.first_broken_seq) == (True, 0, 0)


def test_no_update_or_delete_methods() -> None:
    """[I7] The API is append-only."""
    public = {name for name in dir(AuditLog) if not name.startswith("_")}
    # `concerning` (issue 14: export) is a read like `query`.
    assert public == {"record", "verify_chain", "query", "checkpoint", "concerning"}
