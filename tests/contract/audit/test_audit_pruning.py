"""Pruning the audit log after its retention period, with the chain's anchor kept (SQLite,
PostgreSQL).

The sweep cuts the chain's front in batches; what is left must verify from the
preserved base, keep appending, and still catch a writer without the key ring who
cuts more, or fakes a cut of their own.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.contract.faults import INJECTED, failing_writes
from xiaohe.identity.server.audit.checkpoints import (
    ChainAnchor,
    insert_checkpoint,
    load_checkpoints,
    sign_checkpoint,
)
from xiaohe.identity.server.audit.log import PRUNE_ACTION, AuditLog, AuditRecord, prune_outcome
from xiaohe.identity.server.audit.pruning import AuditPruning
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.schema import audit_checkpoints, audit_log

KEYS = AuditKeys(bytes(range(32)))
ATTACKER_KEYS = AuditKeys(bytes(range(100, 132)))
DAY = 86400.0
KEEP = 180 * DAY


async def fill_days(log: AuditLog, clock: FakeClock, count: int) -> None:
    """`count` records, one a day."""
    for _ in range(count):
        await log.record("account.login", "acct_01HQ3K8Z9X", "ok", actor_client="bff")
        clock.advance(DAY)


async def all_records(log: AuditLog) -> list[AuditRecord]:
    return await log.query(limit=1000)


async def delete_through(database: Database, seq: int) -> None:
    async with database.begin() as conn:
        await conn.execute(sa.delete(audit_log).where(audit_log.c.seq <= seq))
        await conn.execute(sa.delete(audit_checkpoints).where(audit_checkpoints.c.seq < seq))


async def prune(pruning: AuditPruning, now: float, batch: int) -> list[int]:
    return [n async for n in pruning.purge(now, batch)]


async def test_pruning_removes_exactly_the_old_records_and_the_chain_still_verifies(
    database: Database, clock: FakeClock
) -> None:
    """I7: Records older than the period go, in batches, and nothing younger; the kept chain
    verifies from the signed base, names it, and keeps growing."""
    log = AuditLog(database, clock, KEYS)
    await fill_days(log, clock, 10)  # seq 1..10 at days 0..9
    assert await log.checkpoint() is not None  # an ordinary checkpoint at seq 10
    clock.advance(KEEP - 10 * DAY + 6 * DAY - 1)  # now: day 185 less 1 s; days 0..5 are due
    pruning = AuditPruning(database, log, KEYS, KEEP)
    assert await pruning.count_due(clock.now()) == 6

    assert await prune(pruning, clock.now(), batch=4) == [4, 2]

    kept = await all_records(log)
    assert [r.seq for r in kept] == [7, 8, 9, 10, 11, 12]
    assert [(r.action, r.outcome) for r in kept[-2:]] == [
        (PRUNE_ACTION, prune_outcome(4)),
        (PRUNE_ACTION, prune_outcome(6)),
    ]
    assert [c.seq for c in await load_checkpoints(database)] == [6, 10]
    report = await log.verify_chain()
    assert report.intact, report
    assert (report.pruned_through, report.records_checked, report.first_broken_seq) == (6, 6, 0)

    # Idempotent: nothing more is due at the same time.
    assert await prune(pruning, clock.now(), batch=4) == []
    assert len(await all_records(log)) == 6
    # The chain keeps growing and verifying after the cut.
    await fill_days(log, clock, 2)
    assert (await log.verify_chain()).intact


async def test_the_head_is_never_pruned(database: Database, clock: FakeClock) -> None:
    """I7: Even when every record is older than the period, the chain keeps a head to link to."""
    log = AuditLog(database, clock, KEYS)
    await fill_days(log, clock, 3)
    clock.advance(KEEP * 2)
    pruning = AuditPruning(database, log, KEYS, KEEP)
    assert await prune(pruning, clock.now(), batch=100) == [3]
    kept = await all_records(log)
    assert [(r.seq, r.action) for r in kept] == [(4, PRUNE_ACTION)]
    assert (await log.verify_chain()).intact
    # The prune record itself is due at a later sweep; its successor vouches for the cut.
    clock.advance(KEEP * 2)
    assert await prune(pruning, clock.now(), batch=100) == [1]
    report = await log.verify_chain()
    assert report.intact
    assert report.pruned_through == 4


async def test_a_prefix_cut_without_the_key_ring_is_detected(
    database: Database, clock: FakeClock
) -> None:
    """I7: A writer who deletes the front, even up to a genuine checkpoint, leaves rows 1.. missing:
    no `audit.pruned` record the key holder wrote vouches for that base."""
    log = AuditLog(database, clock, KEYS)
    await fill_days(log, clock, 5)
    assert await log.checkpoint() is not None  # genuine checkpoint at seq 5
    await fill_days(log, clock, 3)
    await delete_through(database, 5)
    report = await log.verify_chain()
    assert (report.intact, report.first_broken_seq) == (False, 1)


async def test_cutting_further_after_a_real_prune_is_detected(
    database: Database, clock: FakeClock
) -> None:
    """I7: After a legitimate prune, deleting more of the front (with a checkpoint forged under
    another key, or a genuine one that no prune record names) breaks verification."""
    log = AuditLog(database, clock, KEYS)
    await fill_days(log, clock, 10)
    clock.advance(KEEP - 7 * DAY)  # days 0..2 due
    pruning = AuditPruning(database, log, KEYS, KEEP)
    assert await prune(pruning, clock.now(), batch=50) == [3]
    assert (await log.verify_chain()).intact
    rows = {r.seq: r for r in await all_records(log)}

    await insert_checkpoint(database, sign_checkpoint(ATTACKER_KEYS, 6, rows[6].hash, rows[6].at))
    await delete_through(database, 6)
    report = await log.verify_chain()
    assert (report.intact, report.first_broken_seq) == (False, 1)


async def test_genuine_checkpoint_without_prune_record_is_not_a_base(
    database: Database, clock: FakeClock
) -> None:
    """I7: A checkpoint signed by the key holder is not enough: the cut must be the sweep's."""
    log = AuditLog(database, clock, KEYS)
    await fill_days(log, clock, 10)
    clock.advance(KEEP - 7 * DAY)
    pruning = AuditPruning(database, log, KEYS, KEEP)
    assert await prune(pruning, clock.now(), batch=50) == [3]
    rows = {r.seq: r for r in await all_records(log)}
    await insert_checkpoint(database, sign_checkpoint(KEYS, 6, rows[6].hash, rows[6].at))
    await delete_through(database, 6)
    report = await log.verify_chain()
    assert (report.intact, report.first_broken_seq, report.pruned_through) == (False, 1, 6)


async def test_an_anchor_at_the_base_is_checked(database: Database, clock: FakeClock) -> None:
    """I7: An anchor saved at the base must match the base's MAC; one older than it was pruned."""
    log = AuditLog(database, clock, KEYS)
    await fill_days(log, clock, 4)
    early = await log.checkpoint()
    assert early is not None
    assert early.seq == 4
    await fill_days(log, clock, 4)
    clock.advance(KEEP - 4 * DAY)  # days 0..3 (seq 1..4) due
    pruning = AuditPruning(database, log, KEYS, KEEP)
    assert await prune(pruning, clock.now(), batch=50) == [4]
    assert (await log.verify_chain(ChainAnchor(4, early.mac))).intact
    wrong = ChainAnchor(4, "0" * 64)
    report = await log.verify_chain(wrong)
    assert (report.intact, report.first_broken_seq) == (False, 4)
    assert (await log.verify_chain(ChainAnchor(2, "0" * 64))).intact


async def test_a_failing_batch_prunes_nothing(database: Database, clock: FakeClock) -> None:
    """I7: the pruning record, the base's checkpoint and the delete commit together: when the
    checkpoint cannot be written, no record is removed and none is added."""
    log = AuditLog(database, clock, KEYS)
    await fill_days(log, clock, 5)
    clock.advance(KEEP)
    before = await all_records(log)
    pruning = AuditPruning(database, log, KEYS, KEEP)
    async with failing_writes(database, "audit_checkpoints"):
        with pytest.raises(Exception, match=INJECTED):
            await prune(pruning, clock.now(), batch=10)
    assert await all_records(log) == before
    assert await load_checkpoints(database) == []
    assert (await log.verify_chain()).intact
    assert await prune(pruning, clock.now(), batch=10) == [5]
    assert (await log.verify_chain()).intact
