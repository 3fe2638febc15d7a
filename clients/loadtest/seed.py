"""Seed the accounts a run logs in with: registered through the API, codes from the outbox.

Runs in the driver, before Locust starts, in a few threads. The API is the only way
in: the load test works against any deployment it can reach, and exercises the same
registration path as real users. A refusal by a rate limit is waited out (bounded
by the deadline); an account that cannot be made (its number taken by an earlier
run, say) is skipped and the Locust processes are told which.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from clients.loadtest import flows
from clients.loadtest.outbox import OutboxReader
from clients.loadtest.rpc import CallFailed, ClientCredentials, FlowFailed, Identity, open_channel
from clients.loadtest.testdata import RunData, end_user_ip

_RETRY_SECONDS = 2.0
NO_CODE = "no code in the outbox"


@dataclass
class SeedResult:
    """Which seeded indices exist, and the status codes of those that do not."""

    count: int
    skipped: list[int] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def made(self) -> int:
        """How many accounts were registered."""
        return self.count - len(self.skipped)


def seed_accounts(
    target: str,
    credentials: ClientCredentials,
    data: RunData,
    outbox: OutboxReader,
    count: int,
    *,
    threads: int = 8,
    deadline_seconds: float = 120.0,
) -> SeedResult:
    """Register accounts 0..count-1 of the run; give up on each at the deadline."""
    started = time.monotonic()
    deadline = started + deadline_seconds
    result = SeedResult(count)
    with open_channel(target) as channel:
        identity = Identity(channel, credentials, timeout=10.0)
        accepted = flows.policy_version(identity)

        def one(index: int) -> str | None:
            rng = random.Random()
            login_name = data.seed_login_name(index)
            account = flows.Account(login_name, data.phone(index), data.password(login_name))
            while True:
                try:
                    flows.register(identity, outbox, account, accepted, end_user_ip(rng))
                    return None
                except CallFailed as exc:
                    retry = exc.status in (
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        grpc.StatusCode.UNAVAILABLE,
                    )
                    if not retry or time.monotonic() + _RETRY_SECONDS > deadline:
                        return f"{exc.rpc} {exc.status.name}"
                except FlowFailed:
                    if index == 0 or time.monotonic() + _RETRY_SECONDS > deadline:
                        return NO_CODE
                time.sleep(_RETRY_SECONDS)
                account.codes_sent_at.clear()

        def note(index: int, failure: str | None) -> None:
            if failure is not None:
                result.skipped.append(index)
                result.failures[failure] = result.failures.get(failure, 0) + 1

        # One first, alone: if no code reaches the outbox, say so without waiting for all.
        first = one(0) if count else None
        note(0, first)
        if first == NO_CODE:
            for index in range(1, count):
                note(index, NO_CODE)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for index, failure in enumerate(pool.map(one, range(1, count)), start=1):
                    note(index, failure)
    result.seconds = time.monotonic() - started
    return result
