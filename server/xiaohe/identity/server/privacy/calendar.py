"""The working-day calendar of the PRC, and the due date of a rights request (policy 十一).

A day is a working day when it is Monday to Friday and not a public holiday, or
when it is a make-up working day (调休, a Saturday or Sunday worked in exchange
for a longer holiday). The State Council publishes each year's holidays and
make-up days late in the year before; they follow no rule a program could
compute, so each year is a data file, `data/calendar/<year>.json`, shipped in
the package with its source (the notice's number) in a `source` field:

    {"year": 2025, "source": "...（国办发明电〔2024〕12号）",
     "holidays": [{"name": "国庆节、中秋节", "first": "2025-10-01", "last": "2025-10-08"}],
     "workdays": [{"name": "国庆节、中秋节", "date": "2025-09-28"}]}

Operators add a year, or correct one, without a release: files of the same
shape in the directory `privacy_calendar_dir` replace the shipped file of their
year. Every file is checked when loaded (every date in its year, ranges in
order, make-up days on weekends and outside holidays); a bad one stops start-up
with a `CalendarError` naming the file.

A year no file covers counts weekends only, so a request filed late in a year
still gets a due date before the next year's notice is shipped; that date may
be early (never late) by the holidays it misses. `due_date` reports such years
so that the caller can log and count them (`xiaohe_privacy_calendar_missing_years`).

Counting (docs/decisions.md "Rights requests: counting 15 working days"): the
day of filing, in Asia/Shanghai, does not count, whatever its hour. Day 1 is the
first working day after it and the reply is due by the end of day 15, so exactly
`days` working days lie in (filed, due]. China has kept UTC+8 without daylight
saving since 1991, so a fixed offset is Asia/Shanghai for every date this
service meets (and needs no time-zone database on the host).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

SHANGHAI: Final = timezone(timedelta(hours=8), "Asia/Shanghai")
"""Asia/Shanghai: UTC+8 without daylight saving since 1991."""

REPLY_WORKING_DAYS: Final = 15
"""Policy 十一: a reply within 15 working days."""

PACKAGED_CALENDAR: Final = ("data", "calendar")
_SATURDAY: Final = 5


class CalendarError(Exception):
    """A calendar file is missing a field, malformed or contradicts itself; the message names it."""


@dataclass(frozen=True)
class CalendarYear:
    """One year's public holidays and make-up working days, and where they come from."""

    year: int
    source: str
    holidays: frozenset[date]
    workdays: frozenset[date]


@dataclass(frozen=True)
class DueDate:
    """When a reply is due: the local date (day 15), the instant after which it is late
    (the next local midnight, epoch seconds), and the years counted as weekends only."""

    due_on: date
    due_at: float
    uncovered_years: tuple[int, ...]


def _date(value: object, where: str) -> date:
    if not isinstance(value, str):
        raise CalendarError(f"{where}: a date must be a string YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CalendarError(f"{where}: {value!r} is not a date YYYY-MM-DD") from None


def _entries(doc: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    entries = doc.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CalendarError(f"{where}: {key!r} must be a list of objects")
    return entries


def parse_year(doc: object, where: str) -> CalendarYear:
    """Check and read one year's document; `where` names it in errors."""
    if not isinstance(doc, dict):
        raise CalendarError(f"{where}: not a JSON object")
    year, source = doc.get("year"), doc.get("source")
    if not isinstance(year, int) or isinstance(year, bool) or not 1990 <= year <= 2200:
        raise CalendarError(f"{where}: 'year' must be a year such as 2026")
    if not isinstance(source, str) or not source.strip():
        raise CalendarError(f"{where}: 'source' must name the official notice")
    holidays: set[date] = set()
    for entry in _entries(doc, "holidays", where):
        first = _date(entry.get("first"), f"{where}: holiday {entry.get('name', '?')}")
        last = _date(entry.get("last"), f"{where}: holiday {entry.get('name', '?')}")
        if last < first or (last - first).days > 31:
            raise CalendarError(f"{where}: holiday {entry.get('name', '?')}: last before first")
        holidays.update(first + timedelta(days=n) for n in range((last - first).days + 1))
    workdays = {
        _date(e.get("date"), f"{where}: workday {e.get('name', '?')}")
        for e in _entries(doc, "workdays", where)
    }
    for day in sorted(holidays | workdays):
        if day.year != year:
            raise CalendarError(f"{where}: {day.isoformat()} is not in {year}")
    for day in sorted(workdays):
        if day.weekday() < _SATURDAY:
            raise CalendarError(f"{where}: make-up working day {day.isoformat()} is a weekday")
        if day in holidays:
            raise CalendarError(f"{where}: {day.isoformat()} is both a holiday and a workday")
    return CalendarYear(year, source.strip(), frozenset(holidays), frozenset(workdays))


def _read(text: str, where: str) -> CalendarYear:
    try:
        doc = json.loads(text)
    except ValueError:
        raise CalendarError(f"{where}: not valid JSON") from None
    return parse_year(doc, where)


def packaged_years() -> dict[int, CalendarYear]:
    """The years shipped in the package (`data/calendar/*.json`)."""
    folder = resources.files(__package__ or __name__).joinpath(*PACKAGED_CALENDAR)
    years: dict[int, CalendarYear] = {}
    for item in sorted(folder.iterdir(), key=lambda i: i.name):
        if item.name.endswith(".json"):
            parsed = _read(item.read_text(encoding="utf-8"), f"calendar/{item.name}")
            years[parsed.year] = parsed
    return years


def directory_years(directory: Path) -> dict[int, CalendarYear]:
    """The years in an operator's directory (`*.json`); CalendarError when it cannot be read."""
    if not directory.is_dir():
        raise CalendarError(f"{directory}: not a directory")
    try:
        files = sorted(directory.glob("*.json"))
        years = {}
        for path in files:
            parsed = _read(path.read_text(encoding="utf-8"), str(path))
            years[parsed.year] = parsed
    except (OSError, UnicodeDecodeError) as exc:
        raise CalendarError(f"{directory}: cannot read: {type(exc).__name__}") from None
    return years


class WorkingCalendar:
    """Working days from the shipped years, overridden by an operator's (module docstring)."""

    def __init__(self, years: Iterable[CalendarYear]) -> None:
        self._years = {y.year: y for y in years}

    @classmethod
    def load(cls, override_dir: str = "") -> WorkingCalendar:
        """The packaged years, with files in `override_dir` (if set) replacing theirs."""
        years = packaged_years()
        if override_dir:
            years.update(directory_years(Path(override_dir)))
        return cls(years.values())

    def __repr__(self) -> str:
        return f"WorkingCalendar(years={sorted(self._years)})"

    @property
    def years(self) -> tuple[int, ...]:
        """The years a file covers, ascending."""
        return tuple(sorted(self._years))

    def source(self, year: int) -> str | None:
        """The official notice a year's file cites, None for a year without one."""
        covered = self._years.get(year)
        return None if covered is None else covered.source

    def covers(self, year: int) -> bool:
        """Whether a file says which days of `year` are holidays."""
        return year in self._years

    def is_working_day(self, day: date) -> bool:
        """Monday-Friday except holidays, plus make-up days; weekdays only in uncovered years."""
        covered = self._years.get(day.year)
        if covered is not None:
            if day in covered.workdays:
                return True
            if day in covered.holidays:
                return False
        return day.weekday() < _SATURDAY

    def add_working_days(self, start: date, days: int) -> tuple[date, tuple[int, ...]]:
        """The `days`-th working day after `start` (not counting `start`), and the uncovered
        years the count passed through."""
        if days < 1:
            raise ValueError("count at least one working day")
        day, counted, uncovered = start, 0, set()
        while counted < days:
            day += timedelta(days=1)
            if not self.covers(day.year):
                uncovered.add(day.year)
            if self.is_working_day(day):
                counted += 1
        return day, tuple(sorted(uncovered))

    def due_date(self, filed_at: float, days: int = REPLY_WORKING_DAYS) -> DueDate:
        """When a request filed at `filed_at` (epoch seconds) must be answered (see module)."""
        filed_on = datetime.fromtimestamp(filed_at, tz=SHANGHAI).date()
        due_on, uncovered = self.add_working_days(filed_on, days)
        end = datetime.combine(due_on + timedelta(days=1), time(0), tzinfo=SHANGHAI)
        return DueDate(due_on, end.astimezone(UTC).timestamp(), uncovered)


__all__ = [
    "REPLY_WORKING_DAYS",
    "SHANGHAI",
    "CalendarError",
    "CalendarYear",
    "DueDate",
    "WorkingCalendar",
    "directory_years",
    "packaged_years",
    "parse_year",
]
