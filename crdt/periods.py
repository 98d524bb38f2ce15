"""How time is cut into windows: fixed widths, or UTC calendar periods (minute to month).

A window store numbers its windows with `index(t)` and asks `start(i)`/`end(i)` for their
edges; every replica must number them alike, because the index is the epoch on the wire.
Calendar periods are counted from the period holding the cluster origin (index 0), with
exact proleptic Gregorian arithmetic on whole UTC seconds (no leap seconds, as Unix time):
months of 28 to 31 days, leap years, ISO weeks starting Monday 00:00 UTC.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

from crdt.errors import InvalidParameter
from crdt.policy import finite_time, positive_rate

CalendarUnit = Literal["minute", "hour", "day", "week", "month"]
CALENDAR_UNITS: tuple[CalendarUnit, ...] = ("minute", "hour", "day", "week", "month")
DAY_S = 86_400
# The longest period of each unit: what a policy states as its window (RateLimit-Policy
# w=), never what a decision uses (that is the exact period in force).
PERIOD_SECONDS: dict[str, int] = {
    "minute": 60,
    "hour": 3_600,
    "day": DAY_S,
    "week": 7 * DAY_S,
    "month": 31 * DAY_S,
}
_WIDTH = {"minute": 60, "hour": 3_600, "day": DAY_S, "week": 7 * DAY_S}
# 1970-01-01 was a Thursday; the first Monday 00:00 UTC after it is 4 days later.
_WEEK_OFFSET_S = 4 * DAY_S


class Periods(Protocol):
    """Numbered, contiguous windows: start(i) <= t < end(i) == start(i + 1) for i = index(t)."""

    def index(self, t: float) -> int:
        """The number of the window holding time `t`."""
        ...

    def start(self, i: int) -> float:
        """When window `i` begins."""
        ...

    def end(self, i: int) -> float:
        """When window `i` ends (and window i + 1 begins)."""
        ...


class FixedPeriods:
    """Windows of `width` seconds from time 0."""

    __slots__ = ("width",)

    def __init__(self, width: float) -> None:
        self.width = positive_rate("window", width)

    def index(self, t: float) -> int:
        """The number of the window holding time `t`."""
        return int(t // self.width)

    def start(self, i: int) -> float:
        """When window `i` begins."""
        return i * self.width

    def end(self, i: int) -> float:
        """When window `i` ends."""
        return (i + 1) * self.width


class CalendarPeriods:
    """UTC calendar periods of `unit`, on a clock counting seconds from `origin` (a whole
    Unix time: the cluster clock's zero). Index 0 is the period holding the origin."""

    __slots__ = ("_base", "_hi", "_i", "_lo", "origin", "unit")

    def __init__(self, unit: str, origin: float) -> None:
        if unit not in CALENDAR_UNITS:
            raise InvalidParameter(f"unknown calendar unit {unit!r}; one of {CALENDAR_UNITS}")
        origin = finite_time("origin", origin)
        if not origin.is_integer():
            raise InvalidParameter(f"origin must be a whole Unix second, got {origin!r}")
        self.unit = unit
        self.origin = int(origin)
        self._base = _unix_index(unit, self.origin)
        # The window last asked for: most calls fall in it and cost two comparisons.
        self._i = 0
        self._lo = self.start(0)
        self._hi = self.end(0)

    def index(self, t: float) -> int:
        """The number of the period holding time `t` (seconds since the origin)."""
        if self._lo <= t < self._hi:
            return self._i
        # Period edges are whole seconds, so the whole second holding t decides exactly.
        i = _unix_index(self.unit, math.floor(finite_time("t", t)) + self.origin) - self._base
        self._i, self._lo, self._hi = i, self.start(i), self.end(i)
        return i

    def start(self, i: int) -> float:
        """When period `i` begins, in seconds since the origin."""
        return float(_unix_start(self.unit, i + self._base) - self.origin)

    def end(self, i: int) -> float:
        """When period `i` ends (the next calendar boundary)."""
        return self.start(i + 1)


def _unix_index(unit: str, s: int) -> int:
    """The number of the period holding Unix second `s`, counted from 1970 (any sign)."""
    if unit == "month":
        year, month, _ = civil_from_days(s // DAY_S)
        return (year - 1970) * 12 + month - 1
    if unit == "week":
        return (s - _WEEK_OFFSET_S) // _WIDTH["week"]
    return s // _WIDTH[unit]


def _unix_start(unit: str, k: int) -> int:
    """The Unix second period `k` (as numbered by `_unix_index`) begins."""
    if unit == "month":
        year, month0 = divmod(k, 12)
        return days_from_civil(1970 + year, month0 + 1, 1) * DAY_S
    if unit == "week":
        return k * _WIDTH["week"] + _WEEK_OFFSET_S
    return k * _WIDTH[unit]


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of the date `days` after 1970-01-01 (proleptic Gregorian)."""
    days += 719_468
    era = days // 146_097
    doe = days - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day
