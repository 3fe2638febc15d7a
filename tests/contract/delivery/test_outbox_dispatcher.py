"""Outbox and dispatcher on every database: queued messages are sent once, retried, failed, wiped.

Runs on SQLite always and on PostgreSQL when XIAOHE_TEST_POSTGRES_URL is set.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.delivery.dispatcher import Dispatcher
from xiaohe.identity.server.delivery.outbox import Outbox
from xiaohe.identity.server.delivery.providers import DeliveryError, OutgoingMessage
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.storage.database import Database, epoch
from xiaohe.identity.server.storage.schema import outbox as outbox_table

PHONE = "+8613812345678"
CODE = "583920"
TEXT = f"【小禾企服网】您正在登录小禾企服网，验证码：{CODE}，5分钟内有效。请勿将验证码告知他人。"


class AesGcmTestSealer:
    """A minimal AES-GCM sealer (nonce + ciphertext) standing in for the key ring's."""

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = AESGCM(key or AESGCM.generate_key(bit_length=256))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], aad)


class RecordingProvider:
    """Accepts everything; remembers each message it was given."""

    name = "recording"

    def __init__(self, delay: float = 0.0) -> None:
        self.sent: list[OutgoingMessage] = []
        self.delay = delay

    async def send(self, message: OutgoingMessage) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.sent.append(message)


class FlakyProvider(RecordingProvider):
    """Fails the first `failures` calls with DeliveryError(retryable), then accepts."""

    name = "flaky"

    def __init__(self, failures: int, retryable: bool = True) -> None:
        super().__init__()
        self.failures = failures
        self.retryable = retryable
        self.calls = 0

    async def send(self, message: OutgoingMessage) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise DeliveryError(
                self.retryable, "gateway http 503" if self.retryable else "http 400"
            )
        await super().send(message)


class BlockingProvider(RecordingProvider):
    """Blocks in send until released (simulates a worker stuck or killed mid-send)."""

    name = "blocking"

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def send(self, message: OutgoingMessage) -> None:
        self.entered.set()
        await self.release.wait()
        self.sent.append(message)


class RecordingMetrics:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def delivery(self, provider: str, outcome: str) -> None:
        self.events.append((provider, outcome))


@pytest.fixture
def sealer() -> AesGcmTestSealer:
    return AesGcmTestSealer()


def dispatcher(
    database: Database, sealer: Any, provider: Any, clock: FakeClock, **kwargs: Any
) -> Dispatcher:
    kwargs.setdefault("random_source", lambda: 0.0)
    return Dispatcher(database, sealer, {"SMS": provider, "EMAIL": provider}, clock, **kwargs)


async def row(database: Database, message_id: str) -> Any:
    async with database.connect() as conn:
        result = await conn.execute(
            sa.select(outbox_table).where(outbox_table.c.message_id == message_id)
        )
        return result.one()


async def test_enqueue_then_run_once_sends_once_and_wipes_payload(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    woken: list[int] = []
    box = Outbox(database, sealer, clock, wake=lambda: woken.append(1))
    provider = RecordingProvider()
    metrics = RecordingMetrics()
    message_id = await box.enqueue("EMAIL", "user@example.com", "LOGIN", TEXT, subject="登录验证码")
    assert woken == [1]
    queued = await row(database, message_id)
    assert queued.status == "pending"
    assert queued.payload_enc is not None
    assert epoch(queued.expires_at) == pytest.approx(clock.now() + 600)

    d = dispatcher(database, sealer, provider, clock, metrics=metrics)
    assert await d.run_once() == 1
    assert await d.run_once() == 0
    assert len(provider.sent) == 1
    sent = provider.sent[0]
    assert (sent.message_id, sent.channel, sent.to, sent.purpose, sent.text, sent.subject) == (
        message_id,
        "EMAIL",
        "user@example.com",
        "LOGIN",
        TEXT,
        "登录验证码",
    )
    done = await row(database, message_id)
    assert done.status == "sent"
    assert done.payload_enc is None
    assert done.provider == "recording"
    assert done.attempts == 1
    assert done.lease_until is None
    assert epoch(done.sent_at) == pytest.approx(clock.now())
    assert metrics.events == [("recording", "sent")]


async def test_retryable_failures_then_success_deliver_exactly_once(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(database, sealer, clock)
    provider = FlakyProvider(failures=2)
    metrics = RecordingMetrics()
    d = dispatcher(database, sealer, provider, clock, backoff_base=2.0, metrics=metrics)
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)

    assert await d.run_once() == 1
    first = await row(database, message_id)
    assert (first.status, first.attempts, first.last_error) == ("pending", 1, "gateway http 503")
    assert first.payload_enc is not None
    assert epoch(first.next_attempt_at) == pytest.approx(clock.now() + 2.0)
    assert await d.run_once() == 0  # not due yet
    clock.advance(2.0)
    assert await d.run_once() == 1
    second = await row(database, message_id)
    assert (second.status, second.attempts) == ("pending", 2)
    assert epoch(second.next_attempt_at) == pytest.approx(clock.now() + 4.0)
    clock.advance(4.0)
    assert await d.run_once() == 1
    assert await d.run_once() == 0

    assert provider.calls == 3
    assert [m.message_id for m in provider.sent] == [message_id]
    done = await row(database, message_id)
    assert (done.status, done.attempts, done.payload_enc) == ("sent", 3, None)
    assert metrics.events == [("flaky", "retry"), ("flaky", "retry"), ("flaky", "sent")]


async def test_permanent_failure_marks_failed_and_wipes_payload(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(database, sealer, clock)
    provider = FlakyProvider(failures=100, retryable=False)
    d = dispatcher(database, sealer, provider, clock)
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    assert await d.run_once() == 1
    clock.advance(3600)
    assert await d.run_once() == 0
    assert provider.calls == 1
    failed = await row(database, message_id)
    assert (failed.status, failed.attempts, failed.payload_enc) == ("failed", 1, None)
    assert failed.last_error == "http 400"


async def test_attempts_are_capped(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(database, sealer, clock)
    provider = FlakyProvider(failures=100)
    d = dispatcher(database, sealer, provider, clock, max_attempts=3, backoff_base=1.0)
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    for _ in range(10):
        await d.run_once()
        clock.advance(10)
    assert provider.calls == 3
    failed = await row(database, message_id)
    assert (failed.status, failed.attempts, failed.payload_enc) == ("failed", 3, None)


async def test_expired_message_is_never_sent(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(database, sealer, clock)
    provider = RecordingProvider()
    metrics = RecordingMetrics()
    d = dispatcher(database, sealer, provider, clock, metrics=metrics)
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT, expires_in_seconds=60)
    clock.advance(61)  # e.g. every dispatcher was down for a minute
    assert await d.run_once() == 1
    assert provider.sent == []
    expired = await row(database, message_id)
    assert (expired.status, expired.payload_enc, expired.last_error) == ("failed", None, "expired")
    assert metrics.events == [("recording", "expired")]


async def test_retry_is_never_scheduled_past_expiry(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(database, sealer, clock)
    provider = FlakyProvider(failures=100)
    d = dispatcher(database, sealer, provider, clock, backoff_base=100.0)
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT, expires_in_seconds=30)
    assert await d.run_once() == 1
    pending = await row(database, message_id)
    assert epoch(pending.next_attempt_at) == pytest.approx(epoch(pending.expires_at))
    clock.advance(30)
    assert await d.run_once() == 1
    assert provider.calls == 1
    assert (await row(database, message_id)).status == "failed"


async def test_racing_dispatchers_deliver_each_message_exactly_once(
    database: Database, database_url: str, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(database, sealer, clock)
    ids = [await box.enqueue("SMS", f"+86138000000{i:02d}", "LOGIN", TEXT) for i in range(30)]
    provider = RecordingProvider(delay=0.002)
    other_db = Database.from_url(database_url)  # a second engine, as another process has
    try:
        dispatchers = [
            dispatcher(database, sealer, provider, clock, concurrency=4),
            dispatcher(other_db, sealer, provider, clock, concurrency=4),
            dispatcher(database, sealer, provider, clock, concurrency=4),
        ]
        handled = await asyncio.gather(*(d.run_once() for d in dispatchers))
        handled += await asyncio.gather(*(d.run_once() for d in dispatchers))
    finally:
        await other_db.close()
    counts = Counter(m.message_id for m in provider.sent)
    assert counts == Counter(dict.fromkeys(ids, 1))
    assert sum(handled) == len(ids)
    for message_id in ids:
        assert (await row(database, message_id)).status == "sent"


async def test_lease_expiry_reclaims_a_message_stuck_in_sending(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(database, sealer, clock)
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    stuck = BlockingProvider()
    first = dispatcher(database, sealer, stuck, clock, lease_seconds=30)
    task = asyncio.create_task(first.run_once())
    await asyncio.wait_for(stuck.entered.wait(), timeout=5)
    task.cancel()  # the worker dies mid-send
    with pytest.raises(asyncio.CancelledError):
        await task
    leased = await row(database, message_id)
    assert (leased.status, leased.attempts) == ("sending", 1)

    provider = RecordingProvider()
    second = dispatcher(database, sealer, provider, clock, lease_seconds=30)
    clock.advance(29)
    assert await second.run_once() == 0  # the lease still holds
    clock.advance(2)
    assert await second.run_once() == 1
    assert [m.message_id for m in provider.sent] == [message_id]
    done = await row(database, message_id)
    assert (done.status, done.attempts, done.payload_enc) == ("sent", 2, None)


async def test_a_dispatcher_that_lost_its_lease_cannot_overwrite_the_outcome(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(database, sealer, clock)
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    slow = BlockingProvider()
    slow_dispatcher = dispatcher(database, sealer, slow, clock, lease_seconds=30)
    task = asyncio.create_task(slow_dispatcher.run_once())
    await asyncio.wait_for(slow.entered.wait(), timeout=5)
    clock.advance(31)
    failing = FlakyProvider(failures=100, retryable=False)
    assert await dispatcher(database, sealer, failing, clock).run_once() == 1
    slow.release.set()
    assert await task == 1
    final = await row(database, message_id)
    # The second owner's outcome stands; the late "sent" of the first was fenced off.
    assert (final.status, final.provider, final.attempts) == ("failed", "flaky", 2)


async def test_row_never_holds_destination_or_text_in_the_clear(
    database: Database, database_url: str, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    """I1, C4: the phone number and the code are sealed in the outbox row."""
    box = Outbox(database, sealer, clock)
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    secrets_ = [PHONE, PHONE[3:], CODE, "验证码"]
    async with database.connect() as conn:
        raw = (
            await conn.execute(
                sa.select(sa.text("*"))
                .select_from(outbox_table)
                .where(outbox_table.c.message_id == message_id)
            )
        ).one()
    blob = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in raw)
    assert message_id.encode() in blob
    for secret in secrets_:
        assert secret.encode() not in blob
    if database_url.startswith("sqlite"):
        db_file = Path(database_url.split("///", 1)[1])
        on_disk = b"".join(
            p.read_bytes() for p in db_file.parent.glob(db_file.name + "*") if p.is_file()
        )
        assert message_id.encode() in on_disk
        for secret in secrets_:
            assert secret.encode() not in on_disk


async def test_payload_is_bound_to_its_message_id(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(database, sealer, clock)
    a = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    b = await box.enqueue("SMS", "+8613900000000", "LOGIN", "另一条")
    async with database.begin() as conn:
        blob = (
            await conn.execute(
                sa.select(outbox_table.c.payload_enc).where(outbox_table.c.message_id == a)
            )
        ).scalar_one()
        await conn.execute(
            sa.update(outbox_table).where(outbox_table.c.message_id == b).values(payload_enc=blob)
        )
    provider = RecordingProvider()
    assert await dispatcher(database, sealer, provider, clock).run_once() == 2
    assert [m.message_id for m in provider.sent] == [a]
    moved = await row(database, b)
    assert (moved.status, moved.last_error, moved.payload_enc) == (
        "failed",
        "payload unreadable",
        None,
    )


async def test_channel_without_provider_fails_without_sending(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(database, sealer, clock)
    message_id = await box.enqueue("EMAIL", "user@example.com", "LOGIN", TEXT)
    provider = RecordingProvider()
    d = Dispatcher(database, sealer, {"SMS": provider}, clock)
    assert await d.run_once() == 1
    assert provider.sent == []
    assert (await row(database, message_id)).status == "failed"


async def test_unexpected_provider_exception_is_retried(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    class Broken(RecordingProvider):
        name = "broken"

        async def send(self, message: OutgoingMessage) -> None:
            raise RuntimeError(f"boom {message.to} {message.text}")

    box = Outbox(database, sealer, clock)
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    assert await dispatcher(database, sealer, Broken(), clock).run_once() == 1
    retry = await row(database, message_id)
    assert (retry.status, retry.last_error) == ("pending", "provider error: RuntimeError")


async def test_run_forever_sends_on_wake_and_survives_errors(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock, caplog: Any
) -> None:
    provider = RecordingProvider()
    d = dispatcher(database, sealer, provider, clock, poll_interval=60.0)
    box = Outbox(database, sealer, clock, wake=d.wake)
    stop = asyncio.Event()
    loop_task = asyncio.create_task(d.run_forever(stop))
    await asyncio.sleep(0.05)  # the loop is now idle, waiting up to 60 s
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    for _ in range(200):
        if provider.sent:
            break
        await asyncio.sleep(0.01)
    assert [m.message_id for m in provider.sent] == [message_id]
    stop.set()
    await asyncio.wait_for(loop_task, timeout=5)

    broken_db = Database.from_url("sqlite:////nonexistent-xiaohe-dir/ro/identity.db")
    try:
        failing = dispatcher(broken_db, sealer, provider, clock, poll_interval=0.01)
        stop = asyncio.Event()
        with caplog.at_level(logging.WARNING):
            loop_task = asyncio.create_task(failing.run_forever(stop))
            await asyncio.sleep(0.2)
            assert not loop_task.done()
            stop.set()
            await asyncio.wait_for(loop_task, timeout=5)
    finally:
        await broken_db.close()
    messages = [r.getMessage() for r in caplog.records if "delivery pass failed" in r.getMessage()]
    assert len(messages) >= 2
    assert all(m == "delivery pass failed: Unavailable" for m in messages)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:1/test",
        "sqlite:////nonexistent-xiaohe-dir/ro/identity.db",
    ],
)
async def test_enqueue_on_unreachable_database_is_unavailable(
    url: str, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    """F2: nothing could be queued, so the caller answers UNAVAILABLE."""
    woken: list[int] = []
    db = Database.from_url(url)
    try:
        with pytest.raises(Unavailable) as info:
            await Outbox(db, sealer, clock, wake=lambda: woken.append(1)).enqueue(
                "SMS", PHONE, "LOGIN", TEXT
            )
    finally:
        await db.close()
    assert woken == []
    assert PHONE not in str(info.value)
    assert CODE not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:1/test",
        "sqlite:////nonexistent-xiaohe-dir/ro/identity.db",
    ],
)
async def test_withhold_on_unreachable_database_is_unavailable_like_enqueue(
    url: str, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    """B4, F2: a pretended send fails exactly like a real one when the outbox is down."""
    db = Database.from_url(url)
    try:
        with pytest.raises(Unavailable):
            await Outbox(db, sealer, clock).withhold("SMS", "LOGIN")
    finally:
        await db.close()


async def test_purge_removes_only_old_finished_rows(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(database, sealer, clock)
    old = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    await dispatcher(database, sealer, RecordingProvider(), clock).run_once()
    clock.advance(86400)
    fresh = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    assert await box.purge_finished(older_than_seconds=3600) == 1
    async with database.connect() as conn:
        left = set((await conn.execute(sa.select(outbox_table.c.message_id))).scalars())
    assert left == {fresh}
    assert old not in left


async def test_a_withheld_message_is_stored_without_payload_and_never_sent(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    """B4: the pretend path writes a row like a real message, with nothing to deliver."""
    box = Outbox(database, sealer, clock)
    provider = RecordingProvider()
    withheld = await box.withhold("SMS", "LOGIN")
    d = dispatcher(database, sealer, provider, clock)
    assert await d.run_once() == 0
    clock.advance(3600)
    assert await d.run_once() == 0
    assert provider.sent == []
    stored = await row(database, withheld)
    assert (stored.status, stored.payload_enc, stored.channel, stored.purpose) == (
        "withheld",
        None,
        "SMS",
        "LOGIN",
    )
    clock.advance(86400)
    assert await box.purge_finished(older_than_seconds=3600) == 1
    async with database.connect() as conn:
        assert (
            await conn.execute(sa.select(sa.func.count()).select_from(outbox_table))
        ).scalar() == 0


async def test_enqueue_rejects_programming_errors_before_touching_the_database(
    sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    box = Outbox(Database.from_url("sqlite:///:memory:"), sealer, clock)
    with pytest.raises(ValueError, match="channel"):
        await box.enqueue("FAX", PHONE, "LOGIN", TEXT)
    with pytest.raises(ValueError, match="purpose"):
        await box.enqueue("SMS", PHONE, "", TEXT)
    with pytest.raises(ValueError, match="destination"):
        await box.enqueue("SMS", "", "LOGIN", TEXT)
    with pytest.raises(ValueError, match="expires"):
        await box.enqueue("SMS", PHONE, "LOGIN", TEXT, expires_in_seconds=0)


def test_backoff_doubles_with_jitter_and_cap(sealer: AesGcmTestSealer, clock: FakeClock) -> None:
    d = Dispatcher(
        Database.from_url("sqlite:///:memory:"),
        sealer,
        {},
        clock,
        backoff_base=1.0,
        backoff_cap=10.0,
        jitter=0.1,
        random_source=lambda: 0.5,
    )
    assert [d.backoff(n) for n in (1, 2, 3, 4, 5, 9)] == pytest.approx(
        [1.05, 2.1, 4.2, 8.4, 10.5, 10.5]
    )


async def test_a_handed_off_message_is_sent_without_a_claim_and_once(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    """The enqueuer's hand-off: the row is born claimed and sent at once, exactly once."""
    provider = RecordingProvider()
    d = dispatcher(database, sealer, provider, clock)
    box = Outbox(database, sealer, clock, hand_off=d.hand_off, lease_seconds=30)
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    for _ in range(100):
        if provider.sent:
            break
        await asyncio.sleep(0.01)
    assert [m.message_id for m in provider.sent] == [message_id]
    for _ in range(100):
        if (await row(database, message_id)).status == "sent":
            break
        await asyncio.sleep(0.01)
    done = await row(database, message_id)
    assert (done.status, done.attempts, done.payload_enc) == ("sent", 1, None)
    assert await d.run_once() == 0
    clock.advance(31)
    assert await d.run_once() == 0
    assert len(provider.sent) == 1


async def test_a_hand_off_lost_with_its_process_is_retaken_after_the_lease(
    database: Database, sealer: AesGcmTestSealer, clock: FakeClock
) -> None:
    """A process that dies between enqueue and send loses nothing: the lease runs out and
    another dispatcher claims and sends the message."""
    lost: list[object] = []
    box = Outbox(database, sealer, clock, hand_off=lost.append, lease_seconds=30)
    message_id = await box.enqueue("SMS", PHONE, "LOGIN", TEXT)
    provider = RecordingProvider()
    other = dispatcher(database, sealer, provider, clock)
    assert await other.run_once() == 0  # still leased to the enqueuing process
    clock.advance(31)
    assert await other.run_once() == 1
    assert [m.message_id for m in provider.sent] == [message_id]
    done = await row(database, message_id)
    assert (done.status, done.attempts) == ("sent", 2)
