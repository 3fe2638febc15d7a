"""Delivery receipts on every database: matched by our id or the provider's, idempotent, final.

Runs on SQLite always and on PostgreSQL when XIAOHE_TEST_POSTGRES_URL is set.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.contract.delivery.test_outbox_dispatcher import AesGcmTestSealer
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.delivery.lifecycle import DeliveryLog
from xiaohe.identity.server.delivery.outbox import Outbox
from xiaohe.identity.server.delivery.receipts import (
    STATE_DELIVERED,
    STATE_FAILED,
    STATE_UNKNOWN,
    DeliveryReceipts,
    Receipt,
    ReceiptCounts,
)
from xiaohe.identity.server.errors import NotFound
from xiaohe.identity.server.observability.metrics import Metrics
from xiaohe.identity.server.storage.database import Database, epoch, utc
from xiaohe.identity.server.storage.schema import outbox as outbox_table

PHONE = "+8613812345678"
TEXT = "【小禾企服网】验证码：583920，5分钟内有效。"


class FailedPrefixes:
    """The on_failed hook: remembers each prefix it is told of."""

    def __init__(self) -> None:
        self.prefixes: list[str] = []

    async def on_failed(self, prefix: str) -> None:
        self.prefixes.append(prefix)


class BrokenHook:
    """An on_failed hook that always raises."""

    async def on_failed(self, prefix: str) -> None:
        raise RuntimeError("watch down")


async def sent_message(
    database: Database, clock: FakeClock, destination: str = PHONE, channel: str = "SMS"
) -> str:
    """Queue one message and mark it sent by provider `recording`, as the dispatcher does."""
    outbox = Outbox(database, AesGcmTestSealer(), clock)
    message_id = await outbox.enqueue(channel, destination, "LOGIN", TEXT)
    async with database.begin() as conn:
        await conn.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.message_id == message_id)
            .values(status="sent", provider="recording", sent_at=utc(clock.now()))
        )
    return message_id


async def row(database: Database, message_id: str) -> sa.Row[tuple[object, ...]]:
    async with database.connect() as conn:
        result = (
            await conn.execute(
                sa.select(outbox_table).where(outbox_table.c.message_id == message_id)
            )
        ).one()
    return result


async def test_enqueue_records_the_sms_prefix_and_none_for_email(database: Database) -> None:
    """The outbox keeps the 7-digit prefix of an SMS destination, never the number."""
    clock = FakeClock()
    outbox = Outbox(database, AesGcmTestSealer(), clock)
    sms = await outbox.enqueue("SMS", PHONE, "LOGIN", TEXT)
    email = await outbox.enqueue("EMAIL", "a@example.com", "LOGIN", TEXT)
    assert (await row(database, sms)).dest_prefix == "86-1381234"
    assert (await row(database, email)).dest_prefix is None


async def test_the_same_receipt_three_times_changes_the_row_once(database: Database) -> None:
    """X1: replays and duplicates change nothing (reported_at stays the first one's)."""
    clock = FakeClock()
    metrics = Metrics.in_memory()
    message_id = await sent_message(database, clock)
    receipts = DeliveryReceipts(database, clock, metrics=metrics)
    receipt = Receipt(
        state=STATE_DELIVERED,
        message_id=message_id,
        provider="aliyun",
        provider_message_id="900001",
        code="DELIVERED",
        done_at=clock.now() + 3,
    )
    clock.advance(5)
    assert await receipts.record([receipt]) == ReceiptCounts(recorded=1)
    first = await row(database, message_id)
    for _ in range(2):
        clock.advance(60)
        assert await receipts.record([receipt]) == ReceiptCounts(duplicates=1)
    again = await row(database, message_id)
    assert again.delivery == STATE_DELIVERED
    assert again.delivery_code == "DELIVERED"
    assert again.reported_at == first.reported_at
    assert epoch(again.done_at) == receipt.done_at
    text = metrics.render().decode()
    labels = 'network="86-138",provider="recording",state="delivered"'
    assert f"xiaohe_delivery_receipts_total{{{labels}}} 1.0" in text
    assert "86-1381234" not in text
    assert 'xiaohe_delivery_receipt_latency_seconds_count{network="86-138"' in text


async def test_a_final_state_is_not_overwritten(database: Database) -> None:
    """ACCEPTD after DELIVRD changes nothing; unknown then failed records both steps."""
    clock = FakeClock()
    delivered_id = await sent_message(database, clock)
    open_id = await sent_message(database, clock)
    receipts = DeliveryReceipts(database, clock)
    await receipts.record([Receipt(STATE_DELIVERED, message_id=delivered_id, code="DELIVRD")])
    late = await receipts.record(
        [
            Receipt(STATE_UNKNOWN, message_id=delivered_id, code="ACCEPTD"),
            Receipt(STATE_FAILED, message_id=delivered_id, code="UNDELIV"),
        ]
    )
    assert late == ReceiptCounts(duplicates=2)
    assert (await row(database, delivered_id)).delivery == STATE_DELIVERED
    steps = await receipts.record(
        [
            Receipt(STATE_UNKNOWN, message_id=open_id, code="ACCEPTD"),
            Receipt(STATE_UNKNOWN, message_id=open_id, code="ACCEPTD"),
            Receipt(STATE_FAILED, message_id=open_id, code="UNDELIV"),
        ]
    )
    assert steps == ReceiptCounts(recorded=2, duplicates=1)
    final = await row(database, open_id)
    assert (final.delivery, final.delivery_code) == (STATE_FAILED, "UNDELIV")


async def test_receipts_match_by_provider_id_and_unknown_ids_are_counted(
    database: Database,
) -> None:
    """No message id: (provider, provider id) finds the row; another provider's id does not."""
    clock = FakeClock()
    message_id = await sent_message(database, clock)
    async with database.begin() as conn:
        await conn.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.message_id == message_id)
            .values(provider="tencent", provider_message_id="2433:1234567890")
        )
    receipts = DeliveryReceipts(database, clock)
    counts = await receipts.record(
        [
            Receipt(STATE_DELIVERED, provider="aliyun", provider_message_id="2433:1234567890"),
            Receipt(STATE_DELIVERED, message_id="f" * 32),
            Receipt(
                STATE_DELIVERED, message_id="f" * 32, provider="tencent", provider_message_id="x"
            ),
        ]
    )
    assert counts == ReceiptCounts(unknown=3)
    assert (await row(database, message_id)).delivery is None
    # Our id is not ours (say, a stale OutId): the provider's id still finds the row.
    counts = await receipts.record(
        [
            Receipt(
                STATE_DELIVERED,
                message_id="not-ours",
                provider="tencent",
                provider_message_id="2433:1234567890",
            )
        ]
    )
    assert counts == ReceiptCounts(recorded=1)
    assert (await row(database, message_id)).delivery == STATE_DELIVERED


async def test_failed_receipts_reach_the_hook_once_with_the_prefix(database: Database) -> None:
    """Failed receipts feed the pumping watch: the 7-digit prefix, once per message."""
    clock = FakeClock()
    hook = FailedPrefixes()
    failed_id = await sent_message(database, clock, "+8617001234567")
    email_id = await sent_message(database, clock, "a@example.com", channel="EMAIL")
    delivered_id = await sent_message(database, clock)
    receipts = DeliveryReceipts(database, clock, on_failed=hook)
    for _ in range(3):
        await receipts.record(
            [
                Receipt(STATE_FAILED, message_id=failed_id, code="UNDELIV"),
                Receipt(STATE_FAILED, message_id=email_id),
                Receipt(STATE_DELIVERED, message_id=delivered_id),
            ]
        )
    assert hook.prefixes == ["86-1700123"]


async def test_a_failing_hook_does_not_undo_the_receipt(database: Database) -> None:
    clock = FakeClock()
    message_id = await sent_message(database, clock)
    receipts = DeliveryReceipts(database, clock, on_failed=BrokenHook())
    counts = await receipts.record([Receipt(STATE_FAILED, message_id=message_id)])
    assert counts == ReceiptCounts(recorded=1)
    assert (await row(database, message_id)).delivery == STATE_FAILED


async def test_delivery_log_shows_the_lifecycle_and_figures(database: Database) -> None:
    """GetDelivery's source: provider, ids, receipt and times; stats per provider and prefix."""
    clock = FakeClock()
    log = DeliveryLog(database, clock)
    delivered = await sent_message(database, clock)
    failed = await sent_message(database, clock, "+8617001234567")
    await sent_message(database, clock)  # no receipt yet
    receipts = DeliveryReceipts(database, clock)
    await receipts.record(
        [
            Receipt(STATE_DELIVERED, message_id=delivered, code="DELIVRD", done_at=clock.now() + 4),
            Receipt(STATE_FAILED, message_id=failed, code="MK:0001"),
        ]
    )
    record = await log.get(delivered)
    assert (record.status, record.provider, record.delivery, record.detail) == (
        "sent",
        "recording",
        STATE_DELIVERED,
        "DELIVRD",
    )
    assert record.done_at == clock.now() + 4
    assert record.reported_at == clock.now()
    assert PHONE not in repr(record)
    with pytest.raises(NotFound):
        await log.get("0" * 32)
    (by_provider,) = await log.stats(3600, "provider")
    assert (by_provider.key, by_provider.sent, by_provider.delivered, by_provider.failed) == (
        "recording",
        3,
        1,
        1,
    )
    assert by_provider.no_receipt == 1
    assert by_provider.median_latency_seconds == 4
    by_prefix = {s.key: s for s in await log.stats(3600, "prefix")}
    assert by_prefix["86-1381234"].delivery_ratio == 0.5
    assert by_prefix["86-1700123"].delivery_ratio == 0.0
    clock.advance(7200)
    assert await log.stats(3600, "prefix") == []
