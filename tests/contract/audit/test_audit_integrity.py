"""The audit chain against a database writer without the key ring (SQLite, PostgreSQL).

The attacker here can run any SQL on the audit tables: change a row and recompute
the chain after it (with plain SHA-256, or with an HMAC under a key of their own),
delete rows from the end, and forge or alter checkpoints. Each attack must show in
`verify_chain`, or, where the database alone cannot show it, with the anchor the
checkpoint logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest
import sqlalchemy as sa

from xiaohe.identity.server import context
from xiaohe.identity.server.audit.checkpoints import (
    ChainAnchor,
    Checkpoint,
    checkpoint_message,
    insert_checkpoint,
    sign_checkpoint,
)
from xiaohe.identity.server.audit.log import (
    GENESIS_HASH,
    AuditLog,
    AuditRecord,
    legacy_record_hash,
    record_mac,
)
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.audit_keys import AuditKeys, verify_signature
from xiaohe.identity.server.observability.logging import redact
from xiaohe.identity.server.storage.database import Database, utc
from xiaohe.identity.server.storage.schema import audit_checkpoints, audit_log

KEYS = AuditKeys(bytes(range(32)))
ATTACKER_KEYS = AuditKeys(bytes(range(100, 132)))

ChainValue = Callable[[AuditRecord], str]


def plain_sha256(rec: AuditRecord) -> str:
    """What a writer without the key computes: the documented encoding under plain SHA-256."""
    return legacy_record_hash(
        seq=rec.seq,
        at=rec.at,
        actor_client=rec.actor_client,
        action=rec.action,
        target=rec.target,
        outcome=rec.outcome,
        request_id=rec.request_id,
        prev_hash=rec.prev_hash,
    )


def mac_under(keys: AuditKeys) -> ChainValue:
    """The documented keyed encoding, under the given (wrong) keys."""

    def value(rec: AuditRecord) -> str:
        return record_mac(
            keys,
            seq=rec.seq,
            at=rec.at,
            actor_client=rec.actor_client,
            actor_account=rec.actor_account,
            action=rec.action,
            target=rec.target,
            outcome=rec.outcome,
            request_id=rec.request_id,
            prev_hash=rec.prev_hash,
        )

    return value


async def fill(log: AuditLog, clock: FakeClock, count: int) -> None:
    for _ in range(count):
        await log.record("account.login", "acct_01HQ3K8Z9X", "ok", actor_client="bff")
        clock.advance(1)


async def records(log: AuditLog) -> list[AuditRecord]:
    return await log.query(limit=1000)


async def rewrite_from(
    database: Database,
    log: AuditLog,
    start: int,
    chain_value: ChainValue,
    *,
    outcome: str = "denied",
    alg: str | None = None,
) -> None:
    """The attacker: change row `start`'s outcome, then recompute every link and value after it."""
    rows = await records(log)
    prev = GENESIS_HASH if start == 1 else rows[start - 2].hash
    async with database.begin() as conn:
        for rec in rows[start - 1 :]:
            forged = replace(
                rec,
                prev_hash=prev,
                outcome=outcome if rec.seq == start else rec.outcome,
                alg=alg or rec.alg,
            )
            value = chain_value(forged)
            await conn.execute(
                sa.update(audit_log)
                .where(audit_log.c.seq == rec.seq)
                .values(outcome=forged.outcome, prev_hash=prev, hash=value, alg=forged.alg)
            )
            prev = value


async def delete_rows_from(database: Database, seq: int) -> None:
    async with database.begin() as conn:
        await conn.execute(sa.delete(audit_log).where(audit_log.c.seq >= seq))


@pytest.mark.parametrize("alg", [None, "sha256"], ids=["alg-kept", "alg-set-legacy"])
async def test_row_rehashed_with_plain_sha256_is_detected(
    database: Database, clock: FakeClock, alg: str | None
) -> None:
    """I7: a row changed in the database, with its and every later hash recomputed with plain
    SHA-256 (labelled keyed or legacy), breaks the chain at that row."""
    log = AuditLog(database, clock, KEYS)
    await fill(log, clock, 10)
    await rewrite_from(database, log, 4, plain_sha256, alg=alg)
    report = await log.verify_chain()
    assert not report.intact
    assert (report.first_broken_seq, report.records_checked) == (4, 4)
    assert report.legacy_records == 0


async def test_row_remacd_without_the_key_is_detected(database: Database, clock: FakeClock) -> None:
    """I7: recomputing the chain from a changed row with the right encoding but a key of the
    attacker's own breaks it at that row: the MAC key never leaves the key ring."""
    log = AuditLog(database, clock, KEYS)
    await fill(log, clock, 10)
    await rewrite_from(database, log, 4, mac_under(ATTACKER_KEYS))
    report = await log.verify_chain()
    assert (report.intact, report.first_broken_seq) == (False, 4)
    # The same rewrite with the ring's own keys is what an intact chain looks like.
    await rewrite_from(database, log, 4, mac_under(KEYS), outcome="ok")
    assert (await log.verify_chain()).intact


async def test_rows_deleted_after_a_checkpoint_are_truncation(
    database: Database, clock: FakeClock
) -> None:
    """I7: rows deleted from the end, back past the newest checkpoint, are reported as
    truncation, with the first missing seq, although what is left is a valid prefix."""
    log = AuditLog(database, clock, KEYS)
    await fill(log, clock, 10)
    checkpoint = await log.checkpoint()
    assert checkpoint is not None
    assert checkpoint.seq == 10
    await fill(log, clock, 3)
    before = await log.verify_chain()
    assert before.intact
    assert (before.checkpoints_checked, before.last_checkpoint_seq) == (1, 10)
    assert not before.truncated

    await delete_rows_from(database, 9)
    report = await log.verify_chain()
    assert not report.intact
    assert report.truncated
    assert (report.first_broken_seq, report.records_checked) == (9, 8)
    assert (report.checkpoints_checked, report.last_checkpoint_seq) == (1, 10)
    assert report.first_bad_checkpoint_seq == 0
    # The checkpoint job does not re-anchor a head shorter than the newest checkpoint.
    assert await log.checkpoint() is None
    assert (await log.verify_chain()).truncated


async def test_a_logged_anchor_catches_what_deleted_checkpoints_hide(
    database: Database, clock: FakeClock
) -> None:
    """I7: a writer who deletes the tail and the newest checkpoint leaves a consistent older
    state; the anchor logged with that checkpoint still shows the truncation."""
    log = AuditLog(database, clock, KEYS)
    await fill(log, clock, 5)
    assert await log.checkpoint() is not None
    await fill(log, clock, 3)
    logged = await log.checkpoint()
    assert logged is not None
    anchor = ChainAnchor.parse(logged.seq, logged.mac)
    assert (await log.verify_chain(anchor)).intact

    await delete_rows_from(database, 7)
    async with database.begin() as conn:
        await conn.execute(sa.delete(audit_checkpoints).where(audit_checkpoints.c.seq == 8))
    alone = await log.verify_chain()
    assert alone.intact  # the database alone cannot tell: the documented limit
    assert alone.last_checkpoint_seq == 5
    report = await log.verify_chain(anchor)
    assert not report.intact
    assert report.truncated
    assert report.first_broken_seq == 7
    # An anchor whose MAC the chain does not hold breaks the chain at its seq.
    (fifth,) = [r for r in await records(log) if r.seq == 5]
    other = ChainAnchor.parse(5, fifth.hash[::-1])
    wrong = await log.verify_chain(other)
    assert (wrong.intact, wrong.first_broken_seq, wrong.truncated) == (False, 5, False)


async def test_whole_chain_rewritten_as_legacy_is_caught_by_a_checkpoint(
    database: Database, clock: FakeClock
) -> None:
    """I7: rewriting every row as a legacy SHA-256 row (a downgrade) verifies as a chain, but
    not against a checkpoint: the chain no longer holds the signed MAC at its seq."""
    log = AuditLog(database, clock, KEYS)
    await fill(log, clock, 6)
    assert await log.checkpoint() is not None
    await fill(log, clock, 2)
    await rewrite_from(database, log, 1, plain_sha256, alg="sha256")
    report = await log.verify_chain()
    assert not report.intact
    assert report.first_broken_seq == 6
    assert report.legacy_records == 5
    # With the checkpoints gone as well, the count of legacy rows is what gives it away.
    async with database.begin() as conn:
        await conn.execute(sa.delete(audit_checkpoints))
    downgraded = await log.verify_chain()
    assert (downgraded.intact, downgraded.legacy_records) == (True, 8)


async def _stored_checkpoint(database: Database) -> Checkpoint:
    async with database.connect() as conn:
        row = (await conn.execute(sa.select(audit_checkpoints))).one()
    return Checkpoint(int(row.seq), str(row.mac), row.at, str(row.key_id), str(row.signature))


FORGERIES = ("moved", "mac_changed", "time_changed", "attacker_key", "attacker_key_own_id", "junk")


@pytest.mark.parametrize("forgery", FORGERIES)
async def test_forged_or_altered_checkpoints_are_detected(
    database: Database, clock: FakeClock, forgery: str
) -> None:
    """I7: a checkpoint whose fields were changed, or that another key signed, is reported by
    seq, is not trusted (no truncation, no MAC check), and the chain is not intact."""
    log = AuditLog(database, clock, KEYS)
    await fill(log, clock, 5)
    real = await log.checkpoint()
    assert real is not None
    third = (await records(log))[2]
    at = real.at + timedelta(seconds=1)
    changes: dict[str, object] = {
        "moved": {"seq": 50},
        "mac_changed": {"seq": 3, "mac": third.hash},
        "time_changed": {"at": at},
        "junk": {"signature": "zz" * 64},
    }.get(forgery, {})
    if forgery == "attacker_key":
        forged = sign_checkpoint(ATTACKER_KEYS, 50, real.mac, at)
        changes = {"seq": 50, "signature": forged.signature, "at": at}
    if forgery == "attacker_key_own_id":
        forged = sign_checkpoint(ATTACKER_KEYS, 50, real.mac, at)
        changes = {"seq": 50, "signature": forged.signature, "at": at, "key_id": forged.key_id}
    async with database.begin() as conn:
        await conn.execute(
            sa.update(audit_checkpoints).where(audit_checkpoints.c.seq == 5).values(**changes)
        )
    stored = await _stored_checkpoint(database)
    report = await log.verify_chain()
    assert not report.intact
    assert report.first_bad_checkpoint_seq == stored.seq
    assert (report.first_broken_seq, report.truncated) == (0, False)
    assert (report.checkpoints_checked, report.last_checkpoint_seq) == (1, 0)
    assert report.records_checked == 5


def test_checkpoint_signature_covers_exactly_its_fields() -> None:
    """I7: a checkpoint verifies with the ring's public key and no other message."""
    checkpoint = sign_checkpoint(KEYS, 7, "ab" * 32, utc(FakeClock().now()))
    signature = bytes.fromhex(checkpoint.signature)
    message = checkpoint_message(7, "ab" * 32, checkpoint.at, KEYS.key_id)
    assert verify_signature(KEYS.public_key, signature, message)
    assert not verify_signature(KEYS.public_key, signature, message.replace(b'"seq":7', b'"seq":8'))
    assert not verify_signature(ATTACKER_KEYS.public_key, signature, message)


async def test_actor_account_comes_from_the_context_and_is_covered_by_the_mac(
    database: Database, clock: FakeClock
) -> None:
    """I7: the end-user account bound to the request context is recorded with the client, an
    explicit one wins, none gives "", and changing it in the database breaks the chain."""
    log = AuditLog(database, clock, KEYS)
    await log.record("system.start", "worker", "ok")
    ctx = context.RequestContext(request_id="req-9", client_id="bff-web", account_id="acc_7Q2X")
    token = context.bind(ctx)
    try:
        await log.record("session.revoke", "ses_1", "ok")
        await log.record("session.revoke", "ses_2", "ok", actor_account="acc_OPS")
        async with database.begin():
            await log.record("session.revoke", "ses_3", "ok")
    finally:
        context.reset(token)
    rows = await records(log)
    assert [(r.actor_client, r.actor_account) for r in rows] == [
        ("", ""),
        ("bff-web", "acc_7Q2X"),
        ("bff-web", "acc_OPS"),
        ("bff-web", "acc_7Q2X"),
    ]
    assert (await log.verify_chain()).intact
    async with database.begin() as conn:
        await conn.execute(
            sa.update(audit_log).where(audit_log.c.seq == 2).values(actor_account="acc_OTHER")
        )
    report = await log.verify_chain()
    assert (report.intact, report.first_broken_seq) == (False, 2)


async def test_actor_account_shaped_like_personal_data_is_refused(
    database: Database, clock: FakeClock
) -> None:
    """I7: audit records hold no raw personal data, in the acting account either."""
    log = AuditLog(database, clock, KEYS)
    for account in ("13812345678", "li.si@example.com", "11010519491231002X"):
        with pytest.raises(ValueError, match="pseudonymous") as info:
            await log.record("account.login", "acct_1", "ok", actor_account=account)
        assert account not in str(info.value)
    assert await records(log) == []


async def test_checkpoint_only_when_the_head_advanced(
    database: Database, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """I7: the checkpoint job writes nothing on an empty or unchanged chain, one signed row per
    new head otherwise, and logs seq and MAC in a form the log redaction leaves usable."""
    log = AuditLog(database, clock, KEYS)
    with caplog.at_level(logging.INFO, logger="xiaohe.identity.audit"):
        assert await log.checkpoint() is None
        await fill(log, clock, 3)
        first = await log.checkpoint()
        assert first is not None
        assert await log.checkpoint() is None
        await fill(log, clock, 1)
        second = await log.checkpoint()
        assert second is not None
        assert await log.checkpoint() is None
    head = (await records(log))[-1]
    assert (first.seq, second.seq, second.mac) == (3, 4, head.hash)
    assert first.key_id == second.key_id == KEYS.key_id
    async with database.connect() as conn:
        stored = (await conn.execute(sa.select(audit_checkpoints.c.seq))).scalars().all()
    assert sorted(stored) == [3, 4]

    lines = [r for r in caplog.records if r.name == "xiaohe.identity.audit"]
    assert len(lines) == 2
    assert all(r.levelno == logging.INFO for r in lines)
    # What an external log store keeps: the redacted line. Its seq and MAC anchor the chain.
    shown = redact(lines[-1].getMessage())
    found = re.search(r"seq=(\d+) mac=([0-9a-f:]+)", shown)
    assert found is not None
    anchor = ChainAnchor.parse(int(found.group(1)), found.group(2))
    assert (anchor.seq, anchor.mac) == (4, head.hash)
    assert (await log.verify_chain(anchor)).intact


async def test_checkpoint_tolerates_a_concurrent_writer(
    database: Database, database_url: str, clock: FakeClock
) -> None:
    """I7: workers checkpointing the same head at once store one row and none fails; a
    checkpoint that lost the race on the primary key writes nothing and raises nothing."""
    log = AuditLog(database, clock, KEYS)
    await fill(log, clock, 4)
    other_db = Database.from_url(database_url)
    try:
        other = AuditLog(other_db, clock, KEYS)
        results = await asyncio.gather(*(w.checkpoint() for w in (log, other, log, other)))
        assert sum(r is not None for r in results) == 1
        # A worker that read the head before the winner's insert: its insert is a no-op.
        late = sign_checkpoint(KEYS, 4, (await records(log))[-1].hash, utc(clock.now()))
        assert not await insert_checkpoint(database, late)
        assert not await insert_checkpoint(other_db, late)
    finally:
        await other_db.close()
    async with database.connect() as conn:
        stored = (await conn.execute(sa.select(audit_checkpoints.c.seq))).scalars().all()
    assert list(stored) == [4]
    report = await log.verify_chain()
    assert (report.intact, report.checkpoints_checked, report.last_checkpoint_seq) == (True, 1, 4)
