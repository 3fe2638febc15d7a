"""The working-day calendar and the due date of rights requests (policy 十一, issue 14)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xiaohe.identity.server.privacy.calendar import (
    SHANGHAI,
    CalendarError,
    WorkingCalendar,
    packaged_years,
)

CALENDAR = WorkingCalendar.load()


def at_shanghai(year: int, month: int, day: int, hour: int = 10, minute: int = 0) -> float:
    """Epoch seconds of a wall-clock time in Asia/Shanghai."""
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI).timestamp()


def test_a_deletion_request_filed_the_friday_before_national_day_is_due_on_23_october() -> None:
    """Filed Friday 2025-09-26 (国办发明电〔2024〕12号: 10月1日-8日 off, 9月28日 Sunday and
    10月11日 Saturday worked). The filing day does not count; day 1 is the next working day:

    9/27 Sat off; 9/28 Sun (调休) = 1; 9/29 Mon = 2; 9/30 Tue = 3; 10/1-10/8 holiday;
    10/9 Thu = 4; 10/10 Fri = 5; 10/11 Sat (调休) = 6; 10/12 Sun off;
    10/13-10/17 Mon-Fri = 7-11; 10/18-19 weekend; 10/20-10/23 Mon-Thu = 12-15.

    Due by the end of Thursday 2025-10-23, so late from 2025-10-24 00:00 Shanghai.
    """
    due = CALENDAR.due_date(at_shanghai(2025, 9, 26, 17, 30))
    assert due.due_on == date(2025, 10, 23)
    assert due.due_at == datetime(2025, 10, 24, tzinfo=SHANGHAI).timestamp()
    assert due.uncovered_years == ()


def test_the_filing_day_is_the_date_in_shanghai_not_in_utc() -> None:
    """00:30 Saturday in Shanghai is still Friday in UTC: the Saturday is the filing day, and
    day 1 is Sunday 9/28 all the same, so the due date is the same; but a filing on Sunday
    9/28 (a working day) starts counting on Monday: one day later."""
    saturday_early = datetime(2025, 9, 26, 16, 30, tzinfo=UTC).timestamp()
    assert CALENDAR.due_date(saturday_early).due_on == date(2025, 10, 23)
    sunday_worked = at_shanghai(2025, 9, 28, 9)
    assert CALENDAR.due_date(sunday_worked).due_on == date(2025, 10, 24)
    friday_late = datetime(2025, 9, 26, 15, 59, tzinfo=UTC).timestamp()  # 23:59 Friday
    assert CALENDAR.due_date(friday_late).due_on == date(2025, 10, 23)


@pytest.mark.parametrize(
    ("day", "working"),
    [
        ("2025-01-26", True),  # Sunday worked for 春节
        ("2025-02-08", True),  # Saturday worked for 春节
        ("2025-01-28", False),
        ("2025-02-04", False),
        ("2025-04-27", True),
        ("2025-05-05", False),
        ("2025-06-02", False),
        ("2025-10-08", False),
        ("2025-10-11", True),
        ("2025-10-12", False),  # an ordinary Sunday
        ("2025-10-09", True),
        ("2026-01-02", False),
        ("2026-01-04", True),
        ("2026-02-14", True),
        ("2026-02-23", False),
        ("2026-02-28", True),
        ("2026-05-09", True),
        ("2026-06-19", False),
        ("2026-09-20", True),
        ("2026-09-25", False),
        ("2026-10-07", False),
        ("2026-10-08", True),
        ("2026-10-10", True),
    ],
)
def test_the_shipped_years_follow_the_state_council_notices(day: str, working: bool) -> None:
    """Spot checks of both years against the notices, including every make-up day."""
    assert CALENDAR.is_working_day(date.fromisoformat(day)) is working


def test_every_shipped_year_names_its_source_and_has_its_holiday_counts() -> None:
    """Both notices are cited; 2025 has 28 days off in holidays and 5 make-up days, 2026 has 33
    and 6 (1+8+3+5+3+8 and 3+9+3+5+3+3+7 from the notices' ranges)."""
    years = packaged_years()
    assert sorted(years) == [2025, 2026]
    assert "国办发明电〔2024〕12号" in years[2025].source
    assert "国办发明电〔2025〕7号" in years[2026].source
    assert (len(years[2025].holidays), len(years[2025].workdays)) == (28, 5)
    assert (len(years[2026].holidays), len(years[2026].workdays)) == (33, 6)


def test_a_year_without_a_file_counts_weekends_only_and_says_so() -> None:
    """2027 is not shipped: Monday-Friday count, and the year is reported."""
    due = CALENDAR.due_date(at_shanghai(2027, 3, 5))  # a Friday
    assert due.due_on == date(2027, 3, 26)
    assert due.uncovered_years == (2027,)
    across = CALENDAR.due_date(at_shanghai(2026, 12, 25))
    assert across.uncovered_years == (2027,)


def test_an_operator_file_replaces_the_shipped_year(tmp_path: Path) -> None:
    """A file in the override directory wins over the package's for its year, and adds
    years the package lacks."""
    (tmp_path / "2025.json").write_text(
        json.dumps(
            {
                "year": 2025,
                "source": "test correction",
                "holidays": [{"name": "x", "first": "2025-09-29", "last": "2025-09-29"}],
                "workdays": [],
            }
        )
    )
    (tmp_path / "2027.json").write_text(
        json.dumps(
            {
                "year": 2027,
                "source": "a later notice",
                "holidays": [{"name": "元旦", "first": "2027-01-01", "last": "2027-01-01"}],
            }
        )
    )
    calendar = WorkingCalendar.load(str(tmp_path))
    assert calendar.source(2025) == "test correction"
    assert not calendar.is_working_day(date(2025, 9, 29))
    assert not calendar.is_working_day(date(2025, 9, 28))  # no longer a make-up day
    assert calendar.is_working_day(date(2025, 10, 1))  # no longer a holiday
    assert calendar.years == (2025, 2026, 2027)
    assert not calendar.is_working_day(date(2027, 1, 1))


@pytest.mark.parametrize(
    ("doc", "complaint"),
    [
        ({"year": 2027, "holidays": []}, "source"),
        ({"year": "2027", "source": "s"}, "year"),
        ({"year": 2027, "source": "s", "holidays": [{"first": "2027-02-30"}]}, "not a date"),
        (
            {
                "year": 2027,
                "source": "s",
                "holidays": [{"first": "2027-02-03", "last": "2027-02-01"}],
            },
            "last before first",
        ),
        ({"year": 2027, "source": "s", "workdays": [{"date": "2027-02-03"}]}, "is a weekday"),
        ({"year": 2027, "source": "s", "workdays": [{"date": "2028-01-01"}]}, "not in 2027"),
        (
            {
                "year": 2027,
                "source": "s",
                "holidays": [{"first": "2027-02-06", "last": "2027-02-07"}],
                "workdays": [{"date": "2027-02-06"}],
            },
            "both a holiday and a workday",
        ),
    ],
)
def test_a_bad_operator_file_is_refused_with_its_name(
    tmp_path: Path, doc: dict[str, object], complaint: str
) -> None:
    """Every check names the file and what is wrong; nothing is half-loaded."""
    (tmp_path / "2027.json").write_text(json.dumps(doc))
    with pytest.raises(CalendarError) as caught:
        WorkingCalendar.load(str(tmp_path))
    assert "2027.json" in str(caught.value)
    assert complaint in str(caught.value)


def test_a_missing_override_directory_is_refused(tmp_path: Path) -> None:
    """A typo in the setting is an error, not a silent fallback to the shipped years."""
    with pytest.raises(CalendarError, match="not a directory"):
        WorkingCalendar.load(str(tmp_path / "nope"))


FIRST = datetime(2024, 12, 1, tzinfo=UTC).timestamp()
LAST = datetime(2027, 12, 31, tzinfo=UTC).timestamp()


@given(st.floats(min_value=FIRST, max_value=LAST), st.integers(min_value=1, max_value=40))
def test_the_due_date_is_a_working_day_after_exactly_n_working_days(
    filed_at: float, days: int
) -> None:
    """For any filing time and count: the due date is a working day, exactly `days` working
    days lie in (filing day, due date], and the request is late from the next midnight."""
    due = CALENDAR.due_date(filed_at, days)
    filed_on = datetime.fromtimestamp(filed_at, tz=SHANGHAI).date()
    assert CALENDAR.is_working_day(due.due_on)
    span = [filed_on + timedelta(days=n) for n in range(1, (due.due_on - filed_on).days + 1)]
    assert sum(CALENDAR.is_working_day(d) for d in span) == days
    assert datetime.fromtimestamp(due.due_at, tz=SHANGHAI) == datetime(
        due.due_on.year, due.due_on.month, due.due_on.day, tzinfo=SHANGHAI
    ) + timedelta(days=1)
