"""The retention sweep: deletes what the documented periods say is due (docs/privacy.md).

The privacy policy (四) keeps personal information only as long as its purpose
and the law require. Each kind of stored data that expires has a *kind* here: an
object that counts what is due at a given time and deletes it in bounded
batches, one unit of work per batch (the kinds live with the package that owns
the data: sessions/retention.py, delivery/retention.py, review/retention.py,
realname/retention.py, privacy/retention.py, audit/pruning.py). The sweep runs
them in registry order with one `now` for the whole sweep, so a kind that frees
another's rows (a deleted case frees its documents) runs before it.

A sweep is idempotent: run again at the same time it finds nothing more due, and
a sweep cut short (a crash, a shutdown, a failing kind) leaves only whole
batches done and the rest for the next run. Each kind's count goes to the
`xiaohe_retention_removed` metric and, when not zero, to one audit record
(`retention.sweep`, target the kind, outcome `removed:<n>`): counts only, never
what was removed. A kind that fails is logged and skipped; the others still run.

Kinds of other parts of the service (deactivated accounts, closed privacy
requests) plug in by being added to the registry the container builds.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from xiaohe.identity.server.audit.sink import AuditSink, record_quietly
from xiaohe.identity.server.clock import Clock

log = logging.getLogger("xiaohe.identity.retention")

SWEEP_ACTION: Final = "retention.sweep"
DEFAULT_BATCH: Final = 500


class RetentionKind(Protocol):
    """One kind of data with a retention period."""

    @property
    def name(self) -> str:
        """The kind's name: metric label, audit target, docs/privacy.md."""
        ...

    async def count_due(self, now: float) -> int:
        """How many items are due at `now` (nothing is deleted)."""
        ...

    def purge(self, now: float, batch: int) -> AsyncIterator[int]:
        """Delete what is due at `now`, `batch` per unit of work; yields each batch's count."""
        ...


class RemovalCounter(Protocol):
    """Where removal counts go (observability/metrics.Metrics)."""

    def retention_removed(self, kind: str, count: int) -> None:
        """Count `count` items of `kind` removed."""
        ...


@dataclass(frozen=True)
class SweepReport:
    """What one sweep removed (or, dry, would remove), per kind, and the kinds that failed."""

    counts: dict[str, int]
    failed: tuple[str, ...] = ()
    dry_run: bool = False


class RetentionSweep:
    """Runs every registered kind's deletion; see the module docstring."""

    def __init__(
        self,
        kinds: Sequence[RetentionKind],
        *,
        clock: Clock,
        audit: AuditSink,
        metrics: RemovalCounter,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        names = [k.name for k in kinds]
        if len(set(names)) != len(names):
            raise ValueError("retention kinds must have distinct names")
        if batch < 1:
            raise ValueError("a batch holds at least one row")
        self._kinds = tuple(kinds)
        self._clock = clock
        self._audit = audit
        self._metrics = metrics
        self._batch = batch

    @property
    def kinds(self) -> tuple[str, ...]:
        """The registered kinds' names, in the order they run."""
        return tuple(k.name for k in self._kinds)

    async def sweep(self) -> SweepReport:
        """Delete everything due now; returns the count per kind."""
        now = self._clock.now()
        counts: dict[str, int] = {}
        failed: list[str] = []
        for kind in self._kinds:
            removed = 0
            try:
                async for count in kind.purge(now, self._batch):
                    removed += count
                    self._metrics.retention_removed(kind.name, count)
            except Exception as exc:
                log.warning("retention of %s failed: %s", kind.name, type(exc).__name__)
                failed.append(kind.name)
            counts[kind.name] = removed
            if removed:
                # After the fact, like any housekeeping record: the rows are gone either way.
                await record_quietly(
                    self._audit, SWEEP_ACTION, kind.name, f"removed:{removed}", log
                )
        total = sum(counts.values())
        if total or failed:
            log.info(
                "retention sweep removed %d item(s)",
                total,
                extra={"retention": {"counts": counts, "failed": failed}},
            )
        return SweepReport(counts, tuple(failed))

    async def dry_run(self) -> SweepReport:
        """Count what a sweep now would remove, per kind; nothing is deleted or recorded."""
        now = self._clock.now()
        return SweepReport({k.name: await k.count_due(now) for k in self._kinds}, dry_run=True)
