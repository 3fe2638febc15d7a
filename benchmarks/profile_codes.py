"""`make profile-codes`: where the time of the code path goes (IssueCode + VerifyCode pairs).

By default it measures the `code issue+verify` pairs of `make bench` again with parts
of the work taken out, and prints each in echo units: how many bare grpc.aio echo
calls cost as much as one pair (the inverse of `make bench`'s ratio; the bar of 0.25
is 4 units). Each variant runs on a new store, in alternation with the echo baseline,
`--rounds` times; the rates are means. What a part costs is the difference between
two lines:

- `as served`: the pairs of `make bench`.
- `without audit records`: the code service gets no audit sink.
- `... and a provider that takes all at once`: the outbox as served, but the SMS
  provider (the dev outbox file by default: one locked, fsynced append per message, on
  a thread) replaced by one that accepts each message at once.
- `... or outbox`: no message queue (nothing is queued, sent or recorded in SQL).
- `... or caller windows`: nor the per-IP and per-client windows (the destination's
  script still runs: cooldown, windows, prefix budgets, the code).
- `handlers doing nothing`: IssueCode and VerifyCode answer at once, behind the same
  server, interceptor (client authentication, grants, context, metrics, access log)
  and servicer: what two RPCs cost before and after their handlers.

The parts are taken out in this measurement only; the server under `make bench` and
`make serve` has all of them.

`--tree` instead runs the pairs under pyinstrument (a sampling profiler) and prints
the event loop's call tree, our frames shown and library internals folded. The
sampler slows Python code more than C code, so read its shares as a map of where
to look, and the ablations as what each part costs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import tempfile
from collections.abc import Awaitable, Sequence
from functools import partial
from pathlib import Path

from benchmarks.__main__ import ECHO_PAYLOAD, Install, code_pairs, install_known_codes
from benchmarks.harness import Rate, alternating, echo_rate
from xiaohe.identity.server.codes.models import (
    IssueCodeCommand,
    IssuedCode,
    VerifiedTicket,
    VerifyCodeCommand,
)
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.delivery.providers import Accepted, OutgoingMessage
from xiaohe.identity.server.ratelimit.limiter import Charge, Reservation
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis


class _NoQueue:
    """A message queue that queues nothing."""

    async def enqueue(self, *args: object, **kwargs: object) -> str:
        return "unqueued"

    async def withhold(self, channel: str, purpose: str) -> str:
        return "unqueued"


class _NoLimits:
    """A rate limiter that charges nothing (the caller windows)."""

    async def acquire(self, *args: object) -> Reservation:
        raise AssertionError("not used on the SMS path")

    async def acquire_windows(self, *args: object) -> Reservation:
        raise AssertionError("not used on the SMS path")

    async def acquire_all(self, charges: Sequence[Charge], now: float) -> list[Reservation]:
        return []

    async def release(self, reservation: Reservation) -> None:
        return None


class _NoWork:
    """A code service whose answers cost nothing."""

    async def issue(self, cmd: IssueCodeCommand, **_caller: object) -> IssuedCode:
        return IssuedCode(code_id="c" * 22, expires_in=300, resend_after=60)

    async def verify(self, cmd: VerifyCodeCommand, **_caller: object) -> VerifiedTicket:
        return VerifiedTicket(ticket="t" * 43, expires_in=600)


class _TakesAll:
    """An SMS provider that accepts every message at once and sends nothing."""

    name = "takes-all"
    idempotent = True

    async def send(self, message: OutgoingMessage) -> Accepted:
        return Accepted(self.name)


def _provider_takes_all(container: Container) -> None:
    container.__dict__["providers"] = {**container.providers, "SMS": _TakesAll()}
    install_known_codes(container, audit=None)


def _answer_at_once(container: Container) -> None:
    container.__dict__["codes"] = _NoWork()


@dataclasses.dataclass(frozen=True)
class Variant:
    """A name and what `started` does to the container."""

    name: str
    install: Install


VARIANTS = (
    Variant("as served", install_known_codes),
    Variant("without audit records", partial(install_known_codes, audit=None)),
    Variant("... and a provider that takes all at once", _provider_takes_all),
    Variant("... or outbox", partial(install_known_codes, audit=None, queue=_NoQueue())),
    Variant(
        "... or caller windows",
        partial(install_known_codes, audit=None, queue=_NoQueue(), limiter=_NoLimits()),
    ),
    Variant("handlers doing nothing", _answer_at_once),
)


async def ablations(
    root: Path, redis_url: str, rounds: int, seconds: float, concurrency: int
) -> None:
    """Measure every variant against the echo baseline and print one line each."""
    stores = itertools.count()

    def pairs(variant: Variant) -> Awaitable[Rate]:
        return code_pairs(
            root / f"codes-{next(stores)}",
            redis_url,
            concurrency,
            seconds,
            install=variant.install,
            name=variant.name,
        )

    echo, *rates = await alternating(
        rounds,
        lambda: echo_rate(concurrency, seconds, ECHO_PAYLOAD),
        *(partial(pairs, variant) for variant in VARIANTS),
    )
    print(f"baseline {echo.name}: {echo.per_second:.0f}/s")
    for rate in rates:
        units = echo.per_second / rate.per_second if rate.per_second else float("inf")
        print(
            f"{rate.name}: {rate.per_second:.0f} pairs/s; "
            f"ratio {1 / units:.2f}; {units:.1f} echo units"
        )


def tree(root: Path, redis_url: str, seconds: float, concurrency: int) -> None:
    """The pairs under pyinstrument; print the rate and the event loop's call tree."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    rate = asyncio.run(code_pairs(root / "codes", redis_url, concurrency, seconds))
    profiler.stop()
    print(f"{rate.name}: {rate.per_second:.0f}/s under the profiler")
    print(profiler.output_text(unicode=True, color=False, show_all=False))


def main(args: argparse.Namespace) -> None:
    """Run the ablations (or the profiler) on a temporary store and embedded Redis."""
    with tempfile.TemporaryDirectory(prefix="xiaohe-profile-") as tmp:
        root = Path(tmp)
        redis_server = EmbeddedRedis(root / "redis")
        redis_url = redis_server.start()
        try:
            if args.tree:
                tree(root, redis_url, args.seconds, args.concurrency)
            else:
                asyncio.run(ablations(root, redis_url, args.rounds, args.seconds, args.concurrency))
        finally:
            redis_server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="store_true", help="profile with pyinstrument instead")
    main(parser.parse_args())
