"""Time as an injected dependency, so limits and expiries are tested without sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch (UTC)."""

    def now(self) -> float:
        """The current time."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """The current time."""
        return time.time()


class FakeClock:
    """A clock that moves only when told to; tests advance it instead of sleeping."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        """The current (fake) time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += seconds


LATEST_PLAUSIBLE_TIME = 4_102_444_800.0
"""2100-01-01T00:00:00Z."""


def is_plausible_time(epoch_seconds: float) -> bool:
    """Whether a time from outside (a receipt, a carrier's report) can be real: 1970 to 2100.

    Anything else is a typing or parsing error, refused as such rather than stored
    (a year-1 time cannot even become a database timestamp).
    """
    return 0 < epoch_seconds < LATEST_PLAUSIBLE_TIME
