"""Calendar quotas: a WindowStore numbered by UTC calendar periods, with an injected clock
across month ends, leap days, year ends and week boundaries."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.delta import Delta, Entry
from crdt.errors import InvalidParameter
from crdt.limiter import RULE_ALGORITHMS, make_limiter, timing
from crdt.periods import CALENDAR_UNITS, CalendarPeriods
from crdt.windows import WindowStore
from tests.strategies import KEYS, scaled

ORIGIN = 1_735_689_600  # 2025-01-01T00:00:00Z, as service.clock.ORIGIN


def at(text: str) -> float:
    """Cluster seconds of an ISO UTC time."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() - ORIGIN


def quota(limit: int, period: str = "month", replica: str = "r0") -> WindowStore:
    """A calendar limiter as a node builds it."""
    store = make_limiter("calendar", replica, rate=1.0, burst=limit, period=period, origin=ORIGIN)
    assert isinstance(store, WindowStore)
    return store


def test_the_factory_builds_a_fixed_window_store_on_calendar_periods() -> None:
    store = quota(10, "week")
    assert isinstance(store.periods, CalendarPeriods)
    assert store.periods.unit == "week"
    assert store.sliding is False
    assert store.policy.limit == 10
    assert "calendar" in RULE_ALGORITHMS
    with pytest.raises(InvalidParameter, match="period"):
        make_limiter("calendar", "r0", rate=1.0, burst=1, origin=ORIGIN)
    with pytest.raises(InvalidParameter, match="origin"):
        make_limiter("calendar", "r0", rate=1.0, burst=1, period="month")
    with pytest.raises(InvalidParameter):
        make_limiter("calendar", "r0", rate=1.0, burst=1, period="year", origin=ORIGIN)


@pytest.mark.parametrize(
    ("period", "last", "first"),
    [
        ("month", "2025-01-31T23:59:59", "2025-02-01T00:00:00"),
        ("month", "2028-02-29T23:59:59", "2028-03-01T00:00:00"),
        ("month", "2025-12-31T23:59:59.999", "2026-01-01T00:00:00"),
        ("week", "2025-03-16T23:59:59", "2025-03-17T00:00:00"),  # Sunday -> Monday
        ("day", "2026-12-31T23:59:59", "2027-01-01T00:00:00"),
        ("hour", "2025-05-05T09:59:59.5", "2025-05-05T10:00:00"),
        ("minute", "2025-05-05T09:59:59.5", "2025-05-05T10:00:00"),
    ],
)
def test_the_quota_resets_exactly_at_the_calendar_boundary(
    period: str, last: str, first: str
) -> None:
    store = quota(3, period)
    end, start = at(last), at(first)
    assert store.acquire("u", 3, end - 1.0) == 0.0
    assert store.acquire("u", 1, end) < 0  # the whole period is spent, up to its last moment
    assert store.view("u", end).tokens == 0
    # Exactly when the next period starts: retry after the time left, to the microsecond.
    retry, reset = timing(store, "u", -1.0, 1, end)
    assert retry == pytest.approx(start - end, abs=1e-6)
    assert reset == pytest.approx(start - end, abs=1e-6)
    assert store.view("u", end).tat == start
    assert store.acquire("u", 3, start) == 0.0
    assert store.acquire("u", 1, start) < 0


def test_february_28_and_29_are_one_month_in_a_leap_year() -> None:
    store = quota(10)
    assert store.acquire("u", 6, at("2028-02-01T00:00:00")) == 4
    assert store.acquire("u", 4, at("2028-02-28T23:59:59")) == 0
    assert store.acquire("u", 1, at("2028-02-29T00:00:00")) < 0  # still February
    retry, _ = timing(store, "u", -1.0, 1, at("2028-02-29T23:59:59"))
    assert retry == pytest.approx(1.0, abs=1e-6)
    assert store.acquire("u", 10, at("2028-03-01T00:00:00")) == 0


def test_a_30_day_month_would_not_do() -> None:
    """January has 31 days: consumption of January 31 still counts against January."""
    store = quota(5)
    store.acquire("u", 5, at("2025-01-01T00:00:00"))
    assert store.acquire("u", 1, at("2025-01-31T12:00:00")) < 0
    retry, reset = timing(store, "u", -1.0, 1, at("2025-01-31T12:00:00"))
    assert retry == reset == pytest.approx(12 * 3600, abs=1e-6)


def test_an_admission_reports_the_time_to_the_boundary() -> None:
    store = quota(10, "week")
    now = at("2025-03-12T06:00:00")  # a Wednesday
    result = store.acquire("u", 1, now)
    assert result == 9
    retry, reset = timing(store, "u", result, 1, now)
    assert retry == 0.0
    assert reset == pytest.approx(at("2025-03-17T00:00:00") - now, abs=1e-6)
    never, _ = timing(store, "u", -5.0, 11, now)
    assert never == float("inf")


def test_a_month_is_kept_while_it_lasts_and_deleted_once_over() -> None:
    store = quota(10)
    store.acquire("u", 7, at("2025-01-02T00:00:00"))
    store.flush(at("2025-01-02T00:00:00"))
    before = at("2025-01-02T00:00:01")
    for now in ("2025-01-31T23:59:59", "2025-02-01T00:00:00", "2025-02-28T23:59:59"):
        assert store.sweep(at(now)) == 0, now
        assert not store.settled("u", before, at(now)), now
    assert store.view("u", at("2025-01-31T23:59:59")).tokens == 3
    assert store.sweep(at("2025-03-01T00:00:00")) == 1
    assert store.settled("u", before, at("2025-03-01T00:00:00"))
    assert store.acquire("u", 10, at("2025-03-01T00:00:00")) == 0


@scaled(1.0)
@given(
    st.sampled_from(CALENDAR_UNITS),
    st.lists(st.tuples(st.integers(0, 40 * 86_400), st.integers(1, 4)), max_size=30),
    st.integers(0, 90 * 86_400),
)
def test_sweeping_never_changes_a_decision(
    unit: str, steps: list[tuple[int, int]], later: int
) -> None:
    base = at("2028-01-20T00:00:00")
    swept, kept = quota(5, unit), quota(5, unit)
    t = base
    for gap, cost in sorted(steps):
        t = base + gap
        assert (swept.acquire("u", cost, t) >= 0) == (kept.acquire("u", cost, t) >= 0)
        swept.flush(t)
        swept.sweep(t)
    now = t + later
    swept.sweep(now)
    assert swept.view("u", now).tokens == kept.view("u", now).tokens
    assert (swept.acquire("u", 5, now) >= 0) == (kept.acquire("u", 5, now) >= 0)


@scaled(1.0)
@given(
    st.sampled_from(["month", "week"]),
    st.integers(1, 10),
    st.lists(
        st.tuples(
            st.integers(0, 6 * 86_400),
            st.integers(0, 2),
            st.sampled_from(KEYS),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=40,
    ),
    st.randoms(use_true_random=False),
)
def test_calendar_cells_merge_the_same_in_any_order(
    unit: str,
    limit: int,
    steps: list[tuple[int, int, str, int]],
    rnd: random.Random,
) -> None:
    """Three replicas admit across a month end (or week end) and flush; receivers applying
    every delta in any order, with duplicates, agree on every count now and later."""
    writers = [quota(limit, unit, f"r{i}") for i in range(3)]
    sent: list[Delta] = []
    t = at("2028-02-26T00:00:00")
    for gap, node, key, cost in steps:
        t += gap / 8
        writers[node].acquire(key, cost, t)
        sent.extend(writers[node].flush(t))
    shuffled = sent + rnd.sample(sent, k=len(sent) // 2)
    rnd.shuffle(shuffled)
    receivers = []
    for order in (sent, shuffled, sent[::-1]):
        rx = quota(limit, unit, "rx")
        for delta in order:
            rx.apply(delta, t)
        receivers.append(rx)
    for key in KEYS:
        for later in (0.0, 3_600.0, 86_400.0, 8 * 86_400.0, 40 * 86_400.0):
            counts = [rx.view(key, t + later).tokens for rx in receivers]
            assert max(counts) == min(counts), (key, later, counts)
        # Every receiver counts each writer's latest cell of the current period.
        cur = receivers[0].periods.index(t)
        cells = {(d.replica, e.epoch): e.p - e.n for d in sent if d.key == key for e in d.entries}
        expected = sum(v for (_, epoch), v in cells.items() if epoch == cur)
        assert receivers[0].view(key, t).tokens == limit - expected


def test_entry_bounds_apply_to_calendar_periods() -> None:
    store = quota(10, replica="me")
    now = at("2025-04-10T00:00:00")
    w = store.periods.index(now)
    store.apply(Delta("alice", "peer", (Entry(w, 0.0, 10**15, 0),)), now)
    assert store.view("alice", now).contributions == {"peer": 10}
    store.apply(Delta("bob", "peer", (Entry(w + 2**30, 0.0, 1, 0),)), now)
    # Clamped to May, the furthest a timely writer reaches in April.
    assert store.view("bob", at("2025-05-02T00:00:00")).contributions == {"peer": 1}
    store.apply(Delta("carol", "peer", (Entry(w, 0.0, 1, 10**15),)), now)
    assert store.view("carol", now).tokens == 10
    assert store.stats.entry_problems == {
        "cell_over_rule": 1,
        "epoch_ahead": 1,
        "refund_over_cell": 1,
    }
    store.sweep(at("2025-06-30T23:59:59"))
    assert "bob" in store  # May was the previous month
    store.sweep(at("2025-07-01T00:00:00"))
    assert "bob" not in store


def test_a_peer_a_second_ahead_across_the_month_end_does_not_reopen_our_month() -> None:
    a, b = quota(5, replica="a"), quota(5, replica="b")
    end = at("2025-06-30T23:59:59.5")
    assert a.acquire("k", 5, end) == 0
    b.acquire("k", 1, end + 1.0)  # b is in July already
    for delta in b.flush(end + 1.0):
        a.apply(delta, end)
    assert a.acquire("k", 1, end + 0.1) < 0  # still June for a: spent
