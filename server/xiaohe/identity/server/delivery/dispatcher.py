"""The dispatcher: takes due messages from the outbox and hands them to providers.

Every worker process runs one dispatcher against the shared database. A
message moves `pending → sending → sent`, or back to `pending` after a
retryable failure, or to `failed` (permanent error, attempts used up, or
expired). Claiming is one conditional UPDATE per message:

    UPDATE outbox SET status='sending', lease_until=now+lease, attempts=attempts+1
    WHERE message_id=? AND ((status='pending' AND next_attempt_at<=now)
                            OR (status='sending' AND lease_until<now))

and the claim counts only if it changed one row. PostgreSQL re-checks the
WHERE clause after waiting for a concurrent writer's row lock, and SQLite runs
one writer at a time (`BEGIN IMMEDIATE`), so exactly one process wins each
claim. Every later update of the row is fenced on `status='sending' AND
attempts=<the claimed value>`: a dispatcher whose lease has run out and been
taken over cannot overwrite the new owner's outcome.

What "never loses or duplicates a code message" means precisely:

- Not lost: `Outbox.enqueue` returns only after the row is committed. The row
  leaves `pending`/`sending` only as `sent` (a provider accepted it) or
  `failed` (permanent refusal, `max_attempts` used, or past `expires_at`, when
  the code inside is dead anyway). A crash at any point leaves it `pending`,
  or `sending` with a lease that expires, after which any worker re-claims it.
- Never sent twice at the same time: while a lease is held, nobody else can
  claim the row; the provider call is cut off at `send_timeout` (half the
  lease by default) so it ends before the lease does.
- At-least-once towards the provider: after a crash or database outage
  between the provider's acceptance and the `sent` update, or a timeout on our
  side that the provider did not notice, the message is sent again with the
  same `message_id`. Providers pass it on as an idempotency key: the file
  provider drops the duplicate, SMTP carries a stable `Message-ID`, the SMS
  gateway gets `Idempotency-Key` and must send at most once per key. So the
  user receives one message exactly when the provider honours the key.
- Outcome unknown, without an idempotency key: the SMS platforms (Aliyun,
  Tencent Cloud) have no such key. When a request went out and no answer came
  back (a read timeout, a dropped connection, our `send_timeout`), the
  provider raises `DeliveryOutcomeUnknown` and `unknown_outcome` decides:
  `assume_sent` (the default) records the row as `sent` with the provider that
  may have taken it, no provider message id and `last_error` "outcome unknown",
  and never sends it again: a lost code costs the user one resend, a double
  code costs money and looks like SMS bombing, and the platform's receipt
  (matched by our message id, passed as `OutId` / `SessionContext`) tells
  later whether it arrived. `retry` treats it like any retryable failure
  (at-least-once, possibly two SMS). Idempotent providers always retry.
  An unknown outcome never fails over to another provider (`failover.py`).

Retries back off exponentially: `backoff_base * 2**(attempts-1)`, capped at
`backoff_cap`, plus up to `jitter` of that as random jitter (injected), and
never past the message's expiry. Attempt counts are taken at claim time, so a
message that crashes its worker every time still runs out of attempts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import sqlalchemy as sa

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.delivery.outbox import (
    STATUS_FAILED,
    STATUS_PENDING,
    STATUS_SENDING,
    STATUS_SENT,
    ClaimedMessage,
    Payload,
    Sealer,
    payload_aad,
)
from xiaohe.identity.server.delivery.providers import (
    Accepted,
    DeliveryError,
    DeliveryOutcomeUnknown,
    OutgoingMessage,
    Provider,
    is_idempotent,
)
from xiaohe.identity.server.storage.database import Database, SqlConnection, epoch, utc
from xiaohe.identity.server.storage.group_commit import GroupCommit
from xiaohe.identity.server.storage.schema import outbox

log = logging.getLogger(__name__)

OUTCOME_SENT = "sent"
OUTCOME_RETRY = "retry"
OUTCOME_FAILED = "failed"
OUTCOME_EXPIRED = "expired"
OUTCOME_UNKNOWN = "unknown"
"""Sent, outcome unknown, recorded as sent under the `assume_sent` policy."""

UNKNOWN_ASSUME_SENT = "assume_sent"
UNKNOWN_RETRY = "retry"
UNKNOWN_OUTCOME_POLICIES: tuple[str, ...] = (UNKNOWN_ASSUME_SENT, UNKNOWN_RETRY)
_OUTCOME_UNKNOWN_ERROR = "outcome unknown"

_NO_PROVIDER = "none"
_LAST_ERROR_MAX = 200


_NOW: sa.BindParameter[Any] = sa.bindparam("now")
_IS_DUE = sa.or_(
    sa.and_(outbox.c.status == STATUS_PENDING, outbox.c.next_attempt_at <= _NOW),
    sa.and_(outbox.c.status == STATUS_SENDING, outbox.c.lease_until < _NOW),
)
"""A row is due at `now`: pending and due, or sending with an expired lease."""

_DUE = (
    sa.select(outbox.c.message_id)
    .where(_IS_DUE)
    .order_by(outbox.c.next_attempt_at)
    .limit(sa.bindparam("limit"))
)

_THIS_ROW = outbox.c.message_id == sa.bindparam("m_id")
_CLAIM = (
    sa.update(outbox)
    .where(_THIS_ROW, _IS_DUE)
    .values(
        status=STATUS_SENDING, lease_until=sa.bindparam("lease"), attempts=outbox.c.attempts + 1
    )
)
_CLAIMED = sa.select(
    outbox.c.channel,
    outbox.c.purpose,
    outbox.c.attempts,
    outbox.c.expires_at,
    outbox.c.payload_enc,
).where(_THIS_ROW)


@functools.cache
def _fenced_update(columns: tuple[str, ...]) -> sa.Update:
    """`UPDATE outbox SET <columns> WHERE` the row is still this claim's, built once per shape.

    Parameters: `m_id`, `m_attempts` and `new_<column>` for each column.
    """
    return (
        sa.update(outbox)
        .where(
            _THIS_ROW,
            outbox.c.status == STATUS_SENDING,
            outbox.c.attempts == sa.bindparam("m_attempts"),
        )
        .values({column: sa.bindparam(f"new_{column}") for column in columns})
    )


class DeliveryMetrics(Protocol):
    """Counts delivery outcomes (`sent`, `retry`, `failed`, `expired`) per provider."""

    def delivery(self, provider: str, outcome: str) -> None:
        """Record one outcome."""
        ...


class Dispatcher:
    """Claims due outbox rows and sends them through the provider of their channel."""

    def __init__(
        self,
        database: Database,
        sealer: Sealer,
        providers: Mapping[str, Provider],
        clock: Clock,
        max_attempts: int = 8,
        backoff_base: float = 1.0,
        lease_seconds: float = 30.0,
        metrics: DeliveryMetrics | None = None,
        *,
        backoff_cap: float = 300.0,
        jitter: float = 0.1,
        random_source: Callable[[], float] | None = None,
        send_timeout: float | None = None,
        poll_interval: float = 1.0,
        batch_size: int = 50,
        concurrency: int = 8,
        unknown_outcome: str = UNKNOWN_ASSUME_SENT,
        writes: GroupCommit | None = None,
    ) -> None:
        """`writes` group-commits the recorded outcomes; pass the one the outbox uses, so
        new rows and outcomes of concurrent requests share a transaction."""
        if unknown_outcome not in UNKNOWN_OUTCOME_POLICIES:
            raise ValueError(f"unknown_outcome is one of {UNKNOWN_OUTCOME_POLICIES}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if lease_seconds <= 0 or backoff_base < 0 or concurrency < 1 or batch_size < 1:
            raise ValueError("lease, backoff, concurrency and batch size must be positive")
        self._database = database
        self._outcomes = writes or GroupCommit(database)
        self._sealer = sealer
        self._providers = dict(providers)
        self._clock = clock
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._jitter = jitter
        self._random = random_source or random.Random().random
        self.lease_seconds = lease_seconds
        """How long a claimed row is this dispatcher's (the outbox hands rows off with it)."""
        self._send_timeout = send_timeout if send_timeout is not None else lease_seconds / 2
        self._metrics = metrics
        self._unknown_outcome = unknown_outcome
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._gate = asyncio.Semaphore(concurrency)
        self._handed_off: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Start the next pass now (called after an enqueue, from the event loop's thread)."""
        self._wake.set()

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (with jitter)."""
        delay = min(self._backoff_cap, self._backoff_base * 2.0 ** max(0, attempts - 1))
        return delay + delay * self._jitter * self._random()

    async def run_once(self, limit: int = 50) -> int:
        """One pass over due messages; returns how many this dispatcher claimed and handled."""
        now = utc(self._clock.now())
        async with self._database.connect() as conn:
            candidates = list((await conn.execute(_DUE, {"now": now, "limit": limit})).scalars())
        if not candidates:
            return 0

        async def handle(message_id: str) -> bool:
            async with self._gate:
                return await self._handle(message_id)

        results = await asyncio.gather(*(handle(m) for m in candidates), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(1 for result in results if result is True)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Run passes until `stop` is set: at once after `wake()`, else every poll interval.

        An exception in a pass (database down, a bug) is logged by type only
        (its message might carry data) and the loop goes on; rows left in
        `sending` are re-claimed when their lease runs out.
        """
        while not stop.is_set():
            self._wake.clear()
            try:
                handled = await self.run_once(self._batch_size)
            except Exception as exc:
                log.warning("delivery pass failed: %s", type(exc).__name__)
                handled = 0
            if handled >= self._batch_size:
                continue  # a full batch: more may be due right now
            await self._idle(stop)
        # Let messages handed off by enqueuers finish; whatever does not is re-claimed
        # by a dispatcher once its lease runs out.
        await self.settle()

    async def _idle(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(
                waiters, timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def settle(self) -> None:
        """Wait (at most one send timeout) for the sends handed off by enqueuers so far."""
        if self._handed_off:
            await asyncio.wait(set(self._handed_off), timeout=self._send_timeout)

    # -- one message ----------------------------------------------------------

    def hand_off(self, claimed: ClaimedMessage) -> None:
        """Send a message its enqueuer already claimed for this dispatcher, in the background."""
        task = asyncio.create_task(self._deliver_handed_off(claimed))
        self._handed_off.add(task)
        task.add_done_callback(self._handed_off.discard)

    async def _deliver_handed_off(self, claimed: ClaimedMessage) -> None:
        async with self._gate:
            try:
                await self._deliver(claimed)
            except Exception as exc:  # the lease runs out and the poll loop takes it over
                log.warning("delivery of a handed-off message failed: %s", type(exc).__name__)

    async def _handle(self, message_id: str) -> bool:
        """Claim, send and record one message; False if another dispatcher got it first."""
        claimed = await self._claim(message_id)
        if claimed is None:
            return False
        await self._deliver(claimed)
        return True

    async def _deliver(self, claimed: ClaimedMessage) -> None:
        """Send a claimed message and record the outcome."""
        provider = self._providers.get(claimed.channel)
        provider_name = provider.name if provider is not None else _NO_PROVIDER
        now = self._clock.now()
        if claimed.expires_at <= now:
            await self._finish(claimed, STATUS_FAILED, provider_name, OUTCOME_EXPIRED, "expired")
            return
        if claimed.attempts > self._max_attempts:
            # Only reachable when earlier claims crashed or lost their lease mid-send.
            await self._finish(
                claimed, STATUS_FAILED, provider_name, OUTCOME_FAILED, "attempts exhausted"
            )
            return
        if provider is None:
            await self._finish(
                claimed, STATUS_FAILED, provider_name, OUTCOME_FAILED, "no provider for channel"
            )
            return
        message = self._open(claimed)
        if message is None:
            await self._finish(
                claimed, STATUS_FAILED, provider_name, OUTCOME_FAILED, "payload unreadable"
            )
            return
        try:
            accepted = await asyncio.wait_for(provider.send(message), timeout=self._send_timeout)
        except DeliveryOutcomeUnknown as exc:
            unknown = exc
        except DeliveryError as exc:
            name = exc.provider or provider_name
            await self._after_failure(claimed, name, exc.retryable, exc.reason)
            return
        except TimeoutError:
            # Cut off by us mid-call: the request may be out.
            unknown = DeliveryOutcomeUnknown(
                "provider timeout", idempotent=is_idempotent(provider), provider=provider_name
            )
        except Exception as exc:
            await self._after_failure(
                claimed, provider_name, True, f"provider error: {type(exc).__name__}"
            )
            return
        else:
            taken = accepted if accepted is not None else Accepted(provider_name)
            await self._finish(
                claimed,
                STATUS_SENT,
                taken.provider,
                OUTCOME_SENT,
                None,
                provider_message_id=taken.provider_message_id,
            )
            return
        await self._after_unknown(claimed, unknown.provider or provider_name, unknown)

    async def _after_unknown(
        self, claimed: ClaimedMessage, provider_name: str, exc: DeliveryOutcomeUnknown
    ) -> None:
        """Apply the unknown-outcome policy (module docstring) to a request without an answer."""
        if exc.idempotent or self._unknown_outcome == UNKNOWN_RETRY:
            await self._after_failure(claimed, provider_name, True, exc.reason)
            return
        log.warning(
            "delivery of %s via %s: outcome unknown (%s); recorded as sent, not resent",
            claimed.message_id,
            provider_name,
            exc.reason,
        )
        await self._finish(
            claimed, STATUS_SENT, provider_name, OUTCOME_UNKNOWN, _OUTCOME_UNKNOWN_ERROR
        )

    def _open(self, claimed: ClaimedMessage) -> OutgoingMessage | None:
        if claimed.payload_enc is None:
            return None
        try:
            payload = Payload.from_bytes(
                self._sealer.open(claimed.payload_enc, payload_aad(claimed.message_id))
            )
            return OutgoingMessage(
                message_id=claimed.message_id,
                channel=claimed.channel,
                to=payload.to,
                purpose=claimed.purpose,
                text=payload.text,
                subject=payload.subject,
                template_params=payload.params,
                template=payload.template,
            )
        except Exception as exc:  # wrong key, tampered blob, malformed JSON
            log.error("outbox payload of %s unreadable: %s", claimed.message_id, type(exc).__name__)
            return None

    async def _after_failure(
        self, claimed: ClaimedMessage, provider_name: str, retryable: bool, reason: str
    ) -> None:
        log.info(
            "delivery of %s via %s failed (attempt %d): %s",
            claimed.message_id,
            provider_name,
            claimed.attempts,
            reason,
        )
        if not retryable:
            await self._finish(claimed, STATUS_FAILED, provider_name, OUTCOME_FAILED, reason)
            return
        if claimed.attempts >= self._max_attempts:
            await self._finish(claimed, STATUS_FAILED, provider_name, OUTCOME_FAILED, reason)
            return
        now = self._clock.now()
        next_at = min(now + self.backoff(claimed.attempts), claimed.expires_at)
        if next_at <= now:
            await self._finish(claimed, STATUS_FAILED, provider_name, OUTCOME_EXPIRED, reason)
            return
        await self._update(
            claimed,
            status=STATUS_PENDING,
            next_attempt_at=utc(next_at),
            lease_until=None,
            last_error=reason[:_LAST_ERROR_MAX],
        )
        self._count(provider_name, OUTCOME_RETRY)

    async def _finish(
        self,
        claimed: ClaimedMessage,
        status: str,
        provider_name: str,
        outcome: str,
        reason: str | None,
        *,
        provider_message_id: str | None = None,
    ) -> None:
        """Record a final outcome and wipe the sealed payload.

        A sent row names the provider that took it and the id that provider
        answered (NULL when it has none or the outcome is unknown); receipts
        are matched on them.
        """
        values: dict[str, Any] = {
            "status": status,
            "payload_enc": None,
            "lease_until": None,
            "provider": provider_name[:32],
        }
        if status == STATUS_SENT:
            values["sent_at"] = utc(self._clock.now())
            values["provider_message_id"] = (
                provider_message_id[:64] if provider_message_id else None
            )
        if reason is not None:
            values["last_error"] = reason[:_LAST_ERROR_MAX]
        await self._update(claimed, **values)
        self._count(provider_name, outcome)

    # -- storage ----------------------------------------------------------------

    async def _claim(self, message_id: str) -> ClaimedMessage | None:
        now = self._clock.now()
        claim = {"m_id": message_id, "now": utc(now), "lease": utc(now + self.lease_seconds)}
        async with self._database.begin() as conn:
            if (await conn.execute(_CLAIM, claim)).rowcount != 1:
                return None
            row = (await conn.execute(_CLAIMED, {"m_id": message_id})).one()
        return ClaimedMessage(
            message_id=message_id,
            channel=row.channel,
            purpose=row.purpose,
            attempts=int(row.attempts),
            expires_at=epoch(row.expires_at),
            payload_enc=bytes(row.payload_enc) if row.payload_enc is not None else None,
        )

    async def _update(self, claimed: ClaimedMessage, **values: Any) -> None:
        """Update the row only while this dispatcher still owns it (fenced on attempts)."""
        statement = _fenced_update(tuple(values))
        params = {"m_id": claimed.message_id, "m_attempts": claimed.attempts}
        params.update((f"new_{column}", value) for column, value in values.items())

        async def update(conn: SqlConnection) -> int:
            return int((await conn.execute(statement, params)).rowcount)

        # Outcomes of concurrent deliveries share a transaction (storage/group_commit.py).
        changed = await self._outcomes.run(update)
        if changed != 1:
            log.warning("lost the lease on %s; another dispatcher owns it", claimed.message_id)

    def _count(self, provider_name: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.delivery(provider_name, outcome)


__all__ = [
    "OUTCOME_EXPIRED",
    "OUTCOME_FAILED",
    "OUTCOME_RETRY",
    "OUTCOME_SENT",
    "OUTCOME_UNKNOWN",
    "UNKNOWN_ASSUME_SENT",
    "UNKNOWN_OUTCOME_POLICIES",
    "UNKNOWN_RETRY",
    "DeliveryMetrics",
    "Dispatcher",
]
