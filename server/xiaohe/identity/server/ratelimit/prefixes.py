"""Where an SMS may go, and how much: number ranges denied or budgeted, per-prefix budgets.

SMS pumping (toll fraud, OWASP OAT-009) turns a code service into a money
pump: a bot asks for codes to numbers in ranges that pay the attacker per
message received (premium, virtual-operator or foreign ranges), spreading its
requests over many numbers so that no per-number limit ever bites. So besides
the per-number and per-IP limits, every SMS destination is placed in
(SECURITY.md X3):

- its **prefix** (号段): the country code and the first seven national digits,
  `+8613812345678` → `86-1381234`, a carrier's block of 10,000 numbers. Each
  prefix has its own hourly and daily budget, and the conversion watch
  (`ratelimit/pumping.py`) counts codes sent and verified per prefix;
- the **ranges** an operator listed: a range is a country code and any number
  of leading national digits (`86-170`, `86-1700`, or a whole country `852`).
  A number in a *denied* range gets no code; every *budgeted* range the number
  falls in has one shared hourly and daily budget (all of `86-170` together).

A prefix or a range names thousands of numbers and is not personal data, so
it may appear in Redis keys, logs and the operator API; the number never does.
E.164 country codes are prefix-free (no code is the start of another), so a
range matches a number exactly when the number's digits start with the range's
digits: no country-code table is needed here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from xiaohe.identity.server.shared.identifiers import (
    PREFIX_DIGITS,
    SUBSCRIBER_DIGITS,
    number_prefix,
)

_RANGE = re.compile(r"([1-9][0-9]{0,2})(?:-([0-9]{1,10}))?")
_PREFIX = re.compile(r"[1-9][0-9]{0,2}-[0-9]{0,7}|x-[0-9]{0,10}")

HOUR_SECONDS = 3600
DAY_SECONDS = 86400


@dataclass(frozen=True)
class NumberRange:
    """A country code and leading national digits, written `86-170` (or `852` for a country)."""

    country_code: str
    national_start: str = ""

    @classmethod
    def parse(cls, pattern: str) -> NumberRange:
        """`86-170`, `+86-170` or `852`; ValueError naming the pattern otherwise."""
        match = _RANGE.fullmatch(pattern.strip().lstrip("+"))
        if match is None:
            raise ValueError(
                f"{pattern!r} is not a number range: write the country code, a hyphen and "
                "leading digits, e.g. 86-170"
            )
        return cls(match.group(1), match.group(2) or "")

    def __str__(self) -> str:
        if not self.national_start:
            return self.country_code
        return f"{self.country_code}-{self.national_start}"

    def contains(self, e164_digits: str) -> bool:
        """Whether a number (E.164 digits, no `+`) lies in this range."""
        return e164_digits.startswith(self.country_code + self.national_start)


def parse_ranges(patterns: Iterable[str]) -> tuple[NumberRange, ...]:
    """Parse and de-duplicate range patterns, keeping their order."""
    seen: dict[NumberRange, None] = {}
    for pattern in patterns:
        seen.setdefault(NumberRange.parse(pattern), None)
    return tuple(seen)


def is_prefix(value: str) -> bool:
    """Whether `value` has the shape of a prefix (`86-1381234`): what operators may lift."""
    return _PREFIX.fullmatch(value) is not None


@dataclass(frozen=True)
class PumpingPolicy:
    """Destination ranges, prefix budgets and the conversion watch's thresholds.

    Defaults (also the settings' defaults, see docs/operator-guide.d/pumping.md):
    no denied range; the virtual-operator ranges 162, 165, 167, 170 and 171
    budgeted at 60 codes per hour and 300 per day each; every prefix at 60 per
    hour and 300 per day; a prefix whose codes verified ÷ codes sent falls below
    0.2 over the last hour, once at least 20 were sent, is throttled for 12 hours.
    A failed delivery receipt adds `failed_receipt_weight` unverified sends.
    """

    denied: tuple[NumberRange, ...] = ()
    budgeted: tuple[NumberRange, ...] = field(
        default_factory=lambda: parse_ranges(("86-162", "86-165", "86-167", "86-170", "86-171"))
    )
    range_per_hour: int = 60
    range_per_day: int = 300
    prefix_per_hour: int = 60
    prefix_per_day: int = 300
    watch_window: int = HOUR_SECONDS
    watch_min_sent: int = 20
    watch_min_ratio: float = 0.2
    block_seconds: int = 12 * HOUR_SECONDS
    failed_receipt_weight: int = 1

    def __post_init__(self) -> None:
        budgets = (self.range_per_hour, self.range_per_day, self.prefix_per_hour)
        if min(*budgets, self.prefix_per_day) < 0:
            raise ValueError("pumping budgets must not be negative")
        if not 60 <= self.watch_window <= DAY_SECONDS:
            raise ValueError("the conversion window must be between 60 and 86400 seconds")
        if self.watch_min_sent < 1:
            raise ValueError("the conversion watch needs a minimum of at least 1 code sent")
        if not 0.0 <= self.watch_min_ratio <= 1.0:
            raise ValueError("the conversion ratio threshold must be between 0 and 1")
        if not 60 <= self.block_seconds <= 30 * DAY_SECONDS:
            raise ValueError("a prefix block must last between 60 seconds and 30 days")
        if not 0 <= self.failed_receipt_weight <= 100:
            raise ValueError("the weight of a failed receipt must be between 0 and 100")
        both = set(self.denied) & set(self.budgeted)
        if both:
            raise ValueError(f"range {sorted(map(str, both))[0]} is both denied and budgeted")

    def scope(self, phone: str) -> PrefixScope | None:
        """Where a normalised phone (`+8613812345678`) falls; None if it is not E.164."""
        digits = phone[1:] if phone.startswith("+") else ""
        if not digits.isascii() or not digits.isdigit():
            return None
        prefix = number_prefix(phone) or _short_prefix(digits)
        return PrefixScope(
            prefix=prefix,
            ranges=tuple(str(r) for r in self.budgeted if r.contains(digits)),
            denied=any(r.contains(digits) for r in self.denied),
        )


def _short_prefix(digits: str) -> str:
    """A prefix for a number `number_prefix` has none for: all but its last four digits.

    Only numbers with four national digits or fewer get here, and the country code
    is not split off, so the prefix is written without a hyphen (`x-` marks it). It
    still names 10,000 numbers, never one.
    """
    kept = digits[: max(0, len(digits) - SUBSCRIBER_DIGITS)][: 3 + PREFIX_DIGITS]
    return f"x-{kept}"


@dataclass(frozen=True)
class PrefixScope:
    """The prefix of one destination, the budgeted ranges it is in, and whether it is denied."""

    prefix: str
    ranges: tuple[str, ...] = ()
    denied: bool = False


__all__ = [
    "DAY_SECONDS",
    "HOUR_SECONDS",
    "NumberRange",
    "PrefixScope",
    "PumpingPolicy",
    "is_prefix",
    "parse_ranges",
]
