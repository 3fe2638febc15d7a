"""Delivery receipts: what became of a message after a provider took it.

SMS platforms and carriers' gateways report, often more than once, whether a message
reached the handset. `DeliveryReceipts.record` turns each normalised `Receipt` into the
outbox row's lifecycle (queued → sent(provider, provider id) → delivered / failed /
expired / unknown) and must stay correct under the platforms' habits:

- Retries and duplicates are normal, so ingestion is idempotent. A receipt is written
  with one conditional UPDATE whose guard is the state machine itself: a row with no
  receipt takes any state; a row whose state is `unknown` (CMPP's ACCEPTD or UNKNOWN:
  the network has it, fate open) takes a final state; a final state (delivered, failed,
  expired) is never overwritten. So the same receipt three times changes the row once,
  a late ACCEPTD cannot undo a DELIVRD, and two workers ingesting the same push at the
  same moment cannot both count it (only one UPDATE matches the guard).
- A receipt names the message by the id we passed when sending (Aliyun `OutId`,
  Tencent `SessionContext` echoed as `ext`, the gateway's `Idempotency-Key`), or by
  the provider's own id (Aliyun `BizId`, Tencent `SerialNo`/`sid`) together with the
  provider's name, since two providers' ids may collide. Our id wins when both are given.
- A receipt for no row we know (purged after a week, or not ours) is counted as
  `unknown` and skipped: answering an error would only make the platform retry.

Metrics are labelled by provider and by the 3-digit network prefix ("86-138"), which
is bounded; the 7-digit prefix of each row is in SQL for `xiaohe-identity delivery
stats`. A failed or expired receipt is passed to an optional `FailedReceiptHook` with
the row's 7-digit prefix (the SMS-pumping watch counts them), after the commit; a
failing hook is logged and never undoes or fails the receipt.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from xiaohe.identity.server.clock import Clock, is_plausible_time
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.storage.database import Database, epoch, utc
from xiaohe.identity.server.storage.schema import outbox

log = logging.getLogger(__name__)

STATE_DELIVERED = "delivered"
STATE_FAILED = "failed"
STATE_EXPIRED = "expired"
STATE_UNKNOWN = "unknown"
"""The network has the message but its fate is open (CMPP ACCEPTD/UNKNOWN); not final."""

STATES = frozenset({STATE_DELIVERED, STATE_FAILED, STATE_EXPIRED, STATE_UNKNOWN})
FINAL_STATES = frozenset({STATE_DELIVERED, STATE_FAILED, STATE_EXPIRED})

MAX_ID_LENGTH = 64
"""Our message ids and the providers' ids fit the outbox's 64-character columns."""
MAX_CODE_LENGTH = 32
"""Carriers' codes (DELIVRD, MK:0001, isv.*) are short; longer ones are cut to this."""

_BATCH = 100
_UNKNOWN_PROVIDER = "none"


@dataclass(frozen=True)
class Receipt:
    """One normalised receipt; never holds the destination.

    `message_id` is the id we passed when sending; otherwise `provider` and
    `provider_message_id` name the message. `done_at` is when the handset got it (or
    the carrier gave up), in epoch seconds, when the report says so.
    """

    state: str
    message_id: str = ""
    provider: str = ""
    provider_message_id: str = ""
    code: str = ""
    done_at: float | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError("unknown receipt state")
        if not self.message_id and not (self.provider and self.provider_message_id):
            raise ValueError("a receipt needs our message id or the provider and its id")
        if max(len(self.message_id), len(self.provider_message_id)) > MAX_ID_LENGTH:
            raise ValueError(f"message ids are at most {MAX_ID_LENGTH} characters")
        if len(self.code) > MAX_CODE_LENGTH:
            raise ValueError(f"a receipt code is at most {MAX_CODE_LENGTH} characters")
        if self.done_at is not None and not is_plausible_time(self.done_at):
            raise ValueError("a receipt's time must lie between 1970 and 2100")


@dataclass(frozen=True)
class ReceiptCounts:
    """What a batch of receipts did: changed a row, repeated one, or named no row."""

    recorded: int = 0
    duplicates: int = 0
    unknown: int = 0


class FailedReceiptHook(Protocol):
    """Told of each newly recorded failed or expired SMS receipt (the pumping watch)."""

    async def on_failed(self, prefix: str) -> None:
        """A message to a number in `prefix` ("86-1700123") was not delivered."""
        ...


class ReceiptMetrics(Protocol):
    """Counts receipts (see observability/metrics.py)."""

    def receipt(self, provider: str, prefix: str, state: str, latency: float | None) -> None:
        """One recorded receipt and its latency."""
        ...

    def receipt_ignored(self, source: str, reason: str, count: int = 1) -> None:
        """Receipts that changed nothing."""
        ...


@dataclass(frozen=True)
class _Recorded:
    provider: str
    prefix: str
    state: str
    latency: float | None


class DeliveryReceipts:
    """Records receipts on outbox rows, idempotently."""

    def __init__(
        self,
        database: Database,
        clock: Clock,
        *,
        metrics: ReceiptMetrics | None = None,
        on_failed: FailedReceiptHook | None = None,
    ) -> None:
        self._database = database
        self._clock = clock
        self._metrics = metrics
        self._on_failed = on_failed

    async def record(self, receipts: Sequence[Receipt], *, source: str = "") -> ReceiptCounts:
        """Apply receipts in order; Unavailable if the database cannot be reached.

        `source` (aliyun, tencent, grpc) only labels the metrics of ignored receipts.
        Each batch of up to 100 is one transaction: a failure leaves none of its
        receipts recorded, and the platform's retry then records them.
        """
        recorded: list[_Recorded] = []
        duplicates = unknown = 0
        for start in range(0, len(receipts), _BATCH):
            chunk = receipts[start : start + _BATCH]
            try:
                done, dup, unk = await self._record_chunk(chunk)
            except Unavailable:
                raise
            except (SQLAlchemyError, OSError) as exc:
                raise Unavailable("receipts could not be recorded") from exc
            recorded.extend(done)
            duplicates += dup
            unknown += unk
            await self._after(done)
        if self._metrics is not None:
            self._metrics.receipt_ignored(source or "other", "duplicate", duplicates)
            self._metrics.receipt_ignored(source or "other", "unknown_message", unknown)
        return ReceiptCounts(recorded=len(recorded), duplicates=duplicates, unknown=unknown)

    async def _record_chunk(self, chunk: Sequence[Receipt]) -> tuple[list[_Recorded], int, int]:
        recorded: list[_Recorded] = []
        duplicates = unknown = 0
        now = self._clock.now()
        async with self._database.begin() as conn:
            for receipt in chunk:
                row = None
                for query in _lookups(receipt):
                    row = (await conn.execute(query)).first()
                    if row is not None:
                        break
                if row is None:
                    unknown += 1
                    continue
                changed = await conn.execute(
                    sa.update(outbox)
                    .where(outbox.c.message_id == row.message_id, _may_become(receipt.state))
                    .values(
                        delivery=receipt.state,
                        delivery_code=receipt.code or None,
                        done_at=utc(receipt.done_at) if receipt.done_at is not None else None,
                        reported_at=utc(now),
                    )
                )
                if changed.rowcount != 1:
                    duplicates += 1
                    if row.delivery in FINAL_STATES and row.delivery != receipt.state:
                        log.info(
                            "receipt for %s says %s after %s; the first final state stands",
                            row.message_id,
                            receipt.state,
                            row.delivery,
                        )
                    continue
                latency = None
                if receipt.done_at is not None and row.sent_at is not None:
                    latency = receipt.done_at - epoch(row.sent_at)
                recorded.append(
                    _Recorded(
                        provider=row.provider or _UNKNOWN_PROVIDER,
                        prefix=row.dest_prefix or "",
                        state=receipt.state,
                        latency=latency,
                    )
                )
        return recorded, duplicates, unknown

    async def _after(self, recorded: Sequence[_Recorded]) -> None:
        """Metrics and the failed-receipt hook, once the receipts are committed."""
        for item in recorded:
            if self._metrics is not None:
                self._metrics.receipt(item.provider, item.prefix, item.state, item.latency)
            if self._on_failed is None or not item.prefix:
                continue
            if item.state not in (STATE_FAILED, STATE_EXPIRED):
                continue
            try:
                await self._on_failed.on_failed(item.prefix)
            except Exception as exc:  # the receipt stands; the watch misses one count
                log.warning("failed-receipt hook raised %s", type(exc).__name__)


def _lookups(receipt: Receipt) -> list[sa.Select[Any]]:
    """Queries for the row a receipt names: by our message id, then by (provider, provider id)."""
    query = sa.select(
        outbox.c.message_id,
        outbox.c.provider,
        outbox.c.sent_at,
        outbox.c.dest_prefix,
        outbox.c.delivery,
    )
    lookups = []
    if receipt.message_id:
        lookups.append(query.where(outbox.c.message_id == receipt.message_id))
    if receipt.provider and receipt.provider_message_id:
        lookups.append(
            query.where(
                outbox.c.provider == receipt.provider,
                outbox.c.provider_message_id == receipt.provider_message_id,
            ).limit(1)
        )
    return lookups


def _may_become(state: str) -> sa.ColumnElement[bool]:
    """The guard of the state machine: who may take `state`."""
    if state in FINAL_STATES:
        return sa.or_(outbox.c.delivery.is_(None), outbox.c.delivery == STATE_UNKNOWN)
    return outbox.c.delivery.is_(None)


__all__ = [
    "FINAL_STATES",
    "MAX_CODE_LENGTH",
    "MAX_ID_LENGTH",
    "STATES",
    "STATE_DELIVERED",
    "STATE_EXPIRED",
    "STATE_FAILED",
    "STATE_UNKNOWN",
    "DeliveryReceipts",
    "FailedReceiptHook",
    "Receipt",
    "ReceiptCounts",
    "ReceiptMetrics",
]
