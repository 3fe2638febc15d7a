"""The conversion watch's other inputs and its operator side: failed receipts, list and lift.

Issues and verifications feed the watch inside the code store's scripts
(`ratelimit/pumping.py`); this service takes what arrives from elsewhere:

- `delivery_failed(prefix)`: a delivery receipt said a message to a number in
  `prefix` failed. Receipt ingestion calls it once per failed message (it
  de-duplicates retried receipts before). One script: record, re-evaluate,
  maybe block, with reason `failed_receipts`.
- `list_blocks()` and `lift(prefix)`: what `AdminService.ListPrefixBlocks` /
  `LiftPrefixBlock` and `xiaohe-identity pumping list|lift` do. Lifting also
  forgets the prefix's counts (sent, verified, failed), which the prefix budget
  shares, so a lifted prefix starts afresh.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Callable

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import FieldViolation, InvalidArgument, Unavailable
from xiaohe.identity.server.ratelimit.prefixes import PumpingPolicy, is_prefix
from xiaohe.identity.server.ratelimit.pumping import (
    BLOCK_INDEX_KEY,
    FAILED_RECEIPT_LUA,
    LIFT_LUA,
    PUMPING_LUA,
    REASON_FAILED_RECEIPTS,
    BlockReporter,
    PrefixBlock,
    PumpingMetrics,
    block_from_counts,
    prefix_key,
    watch_args,
    watch_keys,
)
from xiaohe.identity.server.ratelimit.scripts import GC_GRACE_MS, SLIDING_WINDOW_LUA
from xiaohe.identity.server.storage.redis import RedisClient, is_unavailable, run_script, text

log = logging.getLogger("xiaohe.identity.pumping")

MAX_LISTED_BLOCKS = 1000
"""A list answers at most this many blocks (the soonest to end last)."""


def checked_prefix(prefix: object, field: str = "prefix") -> str:
    """The prefix as given, if it has the shape `86-1381234`; InvalidArgument otherwise."""
    if not isinstance(prefix, str) or not is_prefix(prefix.strip()):
        raise InvalidArgument(
            FieldViolation(
                field, "must be a country code, a hyphen and up to 7 digits (86-1381234)"
            )
        )
    return prefix.strip()


class PrefixWatch:
    """Failed receipts into the conversion watch; listing and lifting prefix blocks."""

    def __init__(
        self,
        redis: RedisClient,
        clock: Clock,
        policy: PumpingPolicy,
        *,
        reporter: BlockReporter | None = None,
        metrics: PumpingMetrics | None = None,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._policy = policy
        self._reporter = reporter or BlockReporter(metrics)
        self._metrics = metrics
        self._token_bytes = token_bytes
        self._failed = redis.register_script(SLIDING_WINDOW_LUA + PUMPING_LUA + FAILED_RECEIPT_LUA)
        self._lift = redis.register_script(LIFT_LUA)

    def __repr__(self) -> str:
        return f"PrefixWatch(policy={self._policy!r})"

    async def delivery_failed(self, prefix: str) -> None:
        """Count a failed delivery to a number in `prefix` (one Redis script); "" is ignored.

        The `on_failed(prefix)` hook of receipt ingestion. A malformed prefix is
        a bug in the caller, not an attack, so it raises InvalidArgument.
        """
        if prefix == "":
            return
        prefix = checked_prefix(prefix)
        now = self._clock.now()
        member = base64.urlsafe_b64encode(self._token_bytes(12)).decode("ascii")
        reply = await run_script(
            self._failed,
            watch_keys(prefix),
            [int(now * 1000), GC_GRACE_MS, member, *watch_args(self._policy, prefix)],
        )
        if self._metrics is not None:
            self._metrics.failed_receipt_watched()
        if int(reply[0]) == 1:
            block = block_from_counts(
                prefix, REASON_FAILED_RECEIPTS, now, self._policy, list(reply[1:])
            )
            self._reporter.prefix_blocked(block)

    on_failed = delivery_failed
    """The name receipt ingestion's Protocol uses."""

    async def list_blocks(self) -> list[PrefixBlock]:
        """The blocks in force now, soonest to end first."""
        now_ms = int(self._clock.now() * 1000)
        try:
            members = await self._redis.zrangebyscore(
                BLOCK_INDEX_KEY, f"({now_ms}", "+inf", start=0, num=MAX_LISTED_BLOCKS
            )
            prefixes = [text(m) for m in members]
            if not prefixes:
                return []
            pipe = self._redis.pipeline(transaction=False)
            for prefix in prefixes:
                pipe.hgetall(prefix_key(prefix, "block"))
            rows = await pipe.execute()
        except Exception as exc:
            if is_unavailable(exc):
                raise Unavailable() from exc
            raise
        blocks = []
        for prefix, row in zip(prefixes, rows, strict=True):
            fields = {text(k): text(v) for k, v in row.items()}
            if not fields or int(fields.get("until", "0")) <= now_ms:
                continue  # lifted or ended between the two reads
            blocks.append(
                PrefixBlock(
                    prefix=prefix,
                    reason=fields.get("reason", ""),
                    blocked_at=int(fields.get("at", "0")) / 1000,
                    until=int(fields["until"]) / 1000,
                    sent=int(fields.get("sent", "0")),
                    verified=int(fields.get("verified", "0")),
                    failed=int(fields.get("failed", "0")),
                )
            )
        return blocks

    async def lift(self, prefix: str) -> bool:
        """Lift the block on `prefix` and forget its counts; whether a block was in force."""
        prefix = checked_prefix(prefix)
        now_ms = int(self._clock.now() * 1000)
        reply = await run_script(self._lift, watch_keys(prefix), [now_ms, prefix])
        lifted = int(reply) == 1
        if lifted:
            log.warning(
                "number prefix block lifted by an operator",
                extra={"event": "pumping.prefix_lifted", "prefix": prefix},
            )
            if self._metrics is not None:
                self._metrics.prefix_block_lifted()
        return lifted


__all__ = ["MAX_LISTED_BLOCKS", "PrefixWatch", "checked_prefix"]
