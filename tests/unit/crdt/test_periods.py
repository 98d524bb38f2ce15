"""Window numbering: fixed widths, and UTC calendar periods checked against `datetime`."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.errors import InvalidParameter
from crdt.periods import (
    CALENDAR_UNITS,
    PERIOD_SECONDS,
    CalendarPeriods,
    FixedPeriods,
    civil_from_days,
    days_from_civil,
)
from tests.strategies import scaled

ORIGIN = 1_735_689_600  # 2025-01-01T00:00:00Z, as service.clock.ORIGIN (crdt cannot import it)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
units = st.sampled_from(CALENDAR_UNITS)
# Cluster seconds from 1900 to 2200, whole or not.
times = st.one_of(
    st.integers(-4_000_000_000, 5_600_000_000).map(float),
    st.floats(-4e9, 5.6e9, allow_nan=False, allow_infinity=False),
)


def at(text: str) -> float:
    """Cluster seconds of an ISO UTC time."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() - ORIGIN


def utc(t: float) -> datetime:
    """The UTC time of cluster seconds `t`, exact to the microsecond."""
    return EPOCH + timedelta(seconds=ORIGIN) + timedelta(seconds=t)


def truncated(moment: datetime, unit: str) -> datetime:
    """The start of the calendar period holding `moment`, by datetime's own arithmetic."""
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "minute":
        return moment.replace(second=0, microsecond=0)
    if unit == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=moment.weekday())  # ISO: Monday is 0
    return day.replace(day=1)


@scaled(1.0)
@given(st.integers(-719_162, 2_932_896))  # datetime's years 1 to 9999
def test_civil_dates_agree_with_datetime(days: int) -> None:
    date = (EPOCH + timedelta(days=days)).date()
    assert civil_from_days(days) == (date.year, date.month, date.day)
    assert days_from_civil(date.year, date.month, date.day) == days


@scaled(1.0)
@given(units, times)
def test_the_period_holding_t_starts_at_its_calendar_boundary(unit: str, t: float) -> None:
    periods = CalendarPeriods(unit, ORIGIN)
    i = periods.index(t)
    assert periods.start(i) <= t < periods.end(i)
    assert periods.end(i) == periods.start(i + 1)
    # Edges are whole seconds: the whole second holding t (exact in datetime) decides.
    assert utc(periods.start(i)) == truncated(utc(math.floor(t)), unit)


@scaled(1.0)
@given(units, times, times)
def test_period_numbers_are_monotone_and_consecutive(unit: str, a: float, b: float) -> None:
    periods = CalendarPeriods(unit, ORIGIN)
    early, late = sorted((a, b))
    assert periods.index(early) <= periods.index(late)
    # A fresh instance (no cached period) numbers alike: every node agrees on the epoch.
    assert CalendarPeriods(unit, ORIGIN).index(late) == periods.index(late)
    i = periods.index(late)
    assert periods.index(periods.start(i)) == i
    assert periods.index(periods.end(i)) == i + 1
    assert periods.index(periods.start(i) - 1e-6) == i - 1
    length = periods.end(i) - periods.start(i)
    assert length <= PERIOD_SECONDS[unit]
    if unit == "month":
        assert length in {d * 86_400 for d in (28, 29, 30, 31)}
    else:
        assert length == PERIOD_SECONDS[unit]


def test_index_zero_is_the_period_holding_the_origin() -> None:
    for unit in CALENDAR_UNITS:
        periods = CalendarPeriods(unit, ORIGIN)
        assert periods.index(0.0) == 0
        assert periods.index(-1e-3) == (0 if unit == "week" else -1)
    # 2025-01-01 is a Wednesday: its ISO week began on Monday 2024-12-30.
    assert utc(CalendarPeriods("week", ORIGIN).start(0)) == datetime(2024, 12, 30, tzinfo=UTC)
    months = CalendarPeriods("month", ORIGIN)
    assert months.index(at("2026-03-15T12:00:00")) == 14  # months since January 2025


@pytest.mark.parametrize(
    ("unit", "before", "after"),
    [
        ("month", "2025-01-31T23:59:59", "2025-02-01T00:00:00"),
        ("month", "2028-02-29T23:59:59", "2028-03-01T00:00:00"),
        ("month", "2025-12-31T23:59:59", "2026-01-01T00:00:00"),
        ("week", "2025-03-09T23:59:59", "2025-03-10T00:00:00"),  # Sunday -> Monday
        ("week", "2025-12-28T23:59:59", "2025-12-29T00:00:00"),  # across the year end
        ("day", "2028-02-28T23:59:59", "2028-02-29T00:00:00"),
        ("hour", "2025-06-30T23:59:59.999", "2025-07-01T00:00:00"),
        ("minute", "2025-06-30T12:00:59.5", "2025-06-30T12:01:00"),
    ],
)
def test_a_boundary_starts_the_next_period(unit: str, before: str, after: str) -> None:
    periods = CalendarPeriods(unit, ORIGIN)
    i = periods.index(at(before))
    assert periods.index(at(after)) == i + 1
    assert periods.end(i) == at(after)


def test_leap_days_belong_to_february_and_years_are_exact() -> None:
    months = CalendarPeriods("month", ORIGIN)
    feb_2028 = months.index(at("2028-02-28T23:59:59"))
    assert months.index(at("2028-02-29T00:00:00")) == feb_2028
    assert months.end(feb_2028) - months.start(feb_2028) == 29 * 86_400
    feb_2100 = months.index(at("2100-02-15T00:00:00"))  # not a leap year
    assert months.end(feb_2100) - months.start(feb_2100) == 28 * 86_400
    feb_2000 = months.index(at("2000-02-15T00:00:00"))  # a leap year (divisible by 400)
    assert months.end(feb_2000) - months.start(feb_2000) == 29 * 86_400


def test_any_whole_origin_numbers_the_same_boundaries() -> None:
    # An origin mid-day shifts the numbers, never the boundaries.
    shifted = ORIGIN + 3_600 * 5 + 7
    for unit in CALENDAR_UNITS:
        a, b = CalendarPeriods(unit, ORIGIN), CalendarPeriods(unit, shifted)
        t = at("2027-08-19T08:30:00")
        assert a.end(a.index(t)) == b.end(b.index(t - (shifted - ORIGIN))) + (shifted - ORIGIN)


@pytest.mark.parametrize(
    ("unit", "origin"),
    [("year", ORIGIN), ("fortnight", ORIGIN), ("month", ORIGIN + 0.5), ("month", float("nan"))],
)
def test_bad_units_and_origins_raise(unit: str, origin: float) -> None:
    with pytest.raises(InvalidParameter):
        CalendarPeriods(unit, origin)


@pytest.mark.parametrize("t", [float("nan"), float("inf"), -float("inf")])
def test_times_must_be_finite(t: float) -> None:
    with pytest.raises(InvalidParameter):
        CalendarPeriods("month", ORIGIN).index(t)


def test_fixed_periods_are_the_old_arithmetic() -> None:
    periods = FixedPeriods(2.5)
    assert periods.index(12.4) == 4
    assert (periods.start(4), periods.end(4)) == (10.0, 12.5)
    with pytest.raises(InvalidParameter):
        FixedPeriods(0.0)
