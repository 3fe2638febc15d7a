"""What operators may read about messages: one message's lifecycle, and delivery figures.

Neither ever shows a destination or a text: the outbox keeps them sealed and wipes
them once a message is sent, and these queries do not select them. The figures per
7-digit number prefix (号段) live here, in SQL, rather than in Prometheus, whose
labels must stay bounded (see `observability/metrics.network_label`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.delivery.receipts import (
    STATE_DELIVERED,
    STATE_EXPIRED,
    STATE_FAILED,
    STATE_UNKNOWN,
)
from xiaohe.identity.server.delivery.templates import CHANNEL_SMS
from xiaohe.identity.server.errors import NotFound
from xiaohe.identity.server.storage.database import Database, epoch, utc
from xiaohe.identity.server.storage.schema import outbox

_STATS_ROW_LIMIT = 1_000_000
"""Rows read for one `stats` call; outbox rows are purged after a week anyway."""


@dataclass(frozen=True)
class DeliveryRecord:
    """One message's lifecycle; times are epoch seconds, None when not reached."""

    message_id: str
    channel: str
    purpose: str
    status: str
    provider: str
    provider_message_id: str
    delivery: str
    detail: str
    attempts: int
    created_at: float
    sent_at: float | None
    done_at: float | None
    reported_at: float | None


@dataclass(frozen=True)
class DeliveryStats:
    """Delivery figures of one provider or one number prefix over a window."""

    key: str
    sent: int
    delivered: int
    failed: int
    unknown: int
    no_receipt: int
    median_latency_seconds: float | None

    @property
    def delivery_ratio(self) -> float | None:
        """Delivered divided by sent; None when nothing was sent."""
        return self.delivered / self.sent if self.sent else None


def _time(value: Any) -> float | None:
    return epoch(value) if value is not None else None


class DeliveryLog:
    """Reads message lifecycles and delivery figures from the outbox."""

    def __init__(self, database: Database, clock: Clock) -> None:
        self._database = database
        self._clock = clock

    async def get(self, message_id: str) -> DeliveryRecord:
        """One message's lifecycle; NotFound when no row has that id (or it was purged)."""
        query = sa.select(
            outbox.c.message_id,
            outbox.c.channel,
            outbox.c.purpose,
            outbox.c.status,
            outbox.c.provider,
            outbox.c.provider_message_id,
            outbox.c.delivery,
            outbox.c.delivery_code,
            outbox.c.last_error,
            outbox.c.attempts,
            outbox.c.created_at,
            outbox.c.sent_at,
            outbox.c.done_at,
            outbox.c.reported_at,
        ).where(outbox.c.message_id == message_id)
        async with self._database.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound("no message with this id (messages are kept for a week)")
        return _delivery_record(row)

    # -- issue 14: export --
    async def sent_to(self, recipients: Sequence[tuple[str, float]]) -> list[DeliveryRecord]:
        """Messages to any of `recipients` (a destination's blind index, and the time from which
        it is the account's), oldest first: a number held before by someone else does not
        bring that person's messages along."""
        if not recipients:
            return []
        query = (
            sa.select(outbox)
            .where(
                sa.or_(
                    *(
                        sa.and_(outbox.c.recipient == index, outbox.c.created_at >= utc(since))
                        for index, since in recipients
                    )
                )
            )
            .order_by(outbox.c.created_at, outbox.c.message_id)
        )
        async with self._database.connect() as conn:
            rows = (await conn.execute(query)).all()
        since_of = dict(recipients)
        found = [_delivery_record(row) for row in rows]
        # Again in Python: on SQLite the SQL comparison of dates is only a pre-filter.
        return [
            record
            for record, row in zip(found, rows, strict=True)
            if record.created_at >= since_of[str(row.recipient)]
        ]

    # -- end export --

    async def stats(self, window_seconds: float, by: str) -> list[DeliveryStats]:
        """Figures of SMS sent in the last `window_seconds`, per `provider` or per `prefix`."""
        if by not in ("provider", "prefix"):
            raise ValueError("stats are by provider or by prefix")
        key_column = outbox.c.provider if by == "provider" else outbox.c.dest_prefix
        query = (
            sa.select(
                key_column.label("key"), outbox.c.delivery, outbox.c.sent_at, outbox.c.done_at
            )
            .where(
                outbox.c.channel == CHANNEL_SMS,
                outbox.c.sent_at.is_not(None),
                outbox.c.sent_at >= utc(self._clock.now() - window_seconds),
            )
            .limit(_STATS_ROW_LIMIT)
        )
        async with self._database.connect() as conn:
            rows = [(r.key, r.delivery, r.sent_at, r.done_at) for r in await conn.execute(query)]
        return summarise(rows)


def _delivery_record(row: Any) -> DeliveryRecord:
    """A `DeliveryRecord` from an outbox row (`get` and `sent_to`)."""
    detail = row.delivery_code if row.delivery else row.last_error
    return DeliveryRecord(
        message_id=row.message_id,
        channel=row.channel,
        purpose=row.purpose,
        status=row.status,
        provider=row.provider or "",
        provider_message_id=row.provider_message_id or "",
        delivery=row.delivery or "",
        detail=detail or "",
        attempts=int(row.attempts),
        created_at=epoch(row.created_at),
        sent_at=_time(row.sent_at),
        done_at=_time(row.done_at),
        reported_at=_time(row.reported_at),
    )


def summarise(rows: Iterable[tuple[str | None, str | None, Any, Any]]) -> list[DeliveryStats]:
    """Group (key, delivery, sent_at, done_at) rows into per-key figures, sorted by key."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    latencies: dict[str, list[float]] = defaultdict(list)
    for key, delivery, sent_at, done_at in rows:
        name = key or "none"
        counts[name]["sent"] += 1
        counts[name][delivery or ""] += 1
        if delivery == STATE_DELIVERED and done_at is not None and sent_at is not None:
            latencies[name].append(max(0.0, epoch(done_at) - epoch(sent_at)))
    out = []
    for name in sorted(counts):
        c = counts[name]
        out.append(
            DeliveryStats(
                key=name,
                sent=c["sent"],
                delivered=c[STATE_DELIVERED],
                failed=c[STATE_FAILED] + c[STATE_EXPIRED],
                unknown=c[STATE_UNKNOWN],
                no_receipt=c[""],
                median_latency_seconds=(
                    statistics.median(latencies[name]) if latencies[name] else None
                ),
            )
        )
    return out


__all__ = ["DeliveryLog", "DeliveryRecord", "DeliveryStats", "summarise"]
