"""Fixed and sliding windows: per-window limits on one node, and cells that merge the
same way in any order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.delta import Delta, Entry
from crdt.errors import InvalidParameter
from crdt.policy import WindowPolicy
from crdt.windows import WindowStore
from tests.strategies import KEYS, non_integers, scaled

windows = st.sampled_from([0.5, 1.0, 2.0, 10.0])


@st.composite
def requests(draw: st.DrawFn, *, limit: int) -> list[tuple[int, str, int]]:
    """(t_ms, key, cost), time-ordered."""
    steps = draw(
        st.lists(
            st.tuples(
                st.one_of(st.integers(0, 80), st.integers(0, 3000)),
                st.sampled_from(KEYS),
                st.integers(1, limit + 1),
            ),
            min_size=1,
            max_size=80,
        )
    )
    t = 100_000
    out = []
    for gap, key, cost in steps:
        t += gap
        out.append((t, key, cost))
    return out


@scaled(1.0)
@given(st.integers(1, 20), windows, st.data())
def test_fixed_window_never_admits_more_than_the_limit_per_window(
    limit: int, window: float, data: st.DataObject
) -> None:
    store = WindowStore(WindowPolicy(limit, window), "r0", sliding=False)
    admitted: dict[tuple[str, int], int] = {}
    for t_ms, key, cost in data.draw(requests(limit=limit)):
        now = t_ms / 1000
        left = store.acquire(key, cost, now)
        cell = (key, int(now // window))
        if left >= 0:
            admitted[cell] = admitted.get(cell, 0) + cost
            assert left == limit - admitted[cell]
        else:
            # Denied only when it would not fit.
            assert admitted.get(cell, 0) + cost > limit
            assert left == limit - admitted.get(cell, 0) - cost
    assert all(v <= limit for v in admitted.values())


@scaled(1.0)
@given(st.integers(1, 20), windows, st.data())
def test_sliding_window_admits_iff_the_weighted_count_has_room(
    limit: int, window: float, data: st.DataObject
) -> None:
    """count(t) = cur + prev * (1 - elapsed fraction of the current window)."""
    store = WindowStore(WindowPolicy(limit, window), "r0", sliding=True)
    per_window: dict[tuple[str, int], int] = {}
    for t_ms, key, cost in data.draw(requests(limit=limit)):
        now = t_ms / 1000
        w = int(now // window)
        weight = 1.0 - (now - w * window) / window
        count = per_window.get((key, w), 0) + per_window.get((key, w - 1), 0) * weight
        left = store.acquire(key, cost, now)
        assert left == pytest.approx(
            max(limit - count - cost, 0.0) if left >= 0 else limit - count - cost, abs=1e-9
        )
        if count + cost <= limit - 1e-6:
            assert left >= 0
        if count + cost > limit + 1e-6:
            assert left < 0
        if left >= 0:
            per_window[(key, w)] = per_window.get((key, w), 0) + cost
        # Whatever it admitted, no window of the store's own cells exceeds the limit.
        assert per_window.get((key, w), 0) <= limit


@scaled(1.0)
@given(
    st.booleans(),
    st.integers(1, 10),
    st.lists(
        st.tuples(
            st.integers(0, 1500), st.integers(0, 2), st.sampled_from(KEYS), st.integers(1, 3)
        ),
        min_size=1,
        max_size=40,
    ),
    st.randoms(use_true_random=False),
)
def test_window_cells_merge_the_same_in_any_order(
    sliding: bool,
    limit: int,
    steps: list[tuple[int, int, str, int]],
    rnd: random.Random,
) -> None:
    """Three replicas admit and flush; a receiver applying every delta in any order,
    with duplicates, sees the same counts (and contributions) as in send order."""
    policy = WindowPolicy(limit, 1.0)
    writers = [WindowStore(policy, f"r{i}", sliding=sliding) for i in range(3)]
    sent: list[Delta] = []
    t = 100_000
    for gap, node, key, cost in steps:
        t += gap
        writers[node].acquire(key, cost, t / 1000)
        sent.extend(writers[node].flush(t / 1000))
    now = t / 1000
    shuffled = sent + rnd.sample(sent, k=len(sent) // 2)
    rnd.shuffle(shuffled)
    receivers = []
    for order in (sent, shuffled, sent[::-1]):
        rx = WindowStore(policy, "rx", sliding=sliding)
        for delta in order:
            rx.apply(delta, now)
        receivers.append(rx)
    # The counts that decide, now and later; `contributions` may still list a window
    # that no longer matters, depending on whether it arrived before a newer one.
    for key in KEYS:
        for later in (0.0, 0.25, 0.5, 0.99, 1.0, 2.0):
            counts = [rx.view(key, now + later).tokens for rx in receivers]
            assert max(counts) - min(counts) <= 1e-9, (key, later, counts)
        for rx in receivers:
            rx.acquire(key, 1, now)  # rolls every state to the current window
        for rx in receivers[1:]:
            assert rx.view(key, now).contributions == receivers[0].view(key, now).contributions


def test_two_replicas_merged_cells_are_summed() -> None:
    policy = WindowPolicy(10, 1.0)
    a = WindowStore(policy, "a", sliding=False)
    b = WindowStore(policy, "b", sliding=False)
    a.acquire("k", 4, 100.1)
    b.acquire("k", 3, 100.2)
    for delta in a.flush(100.3):
        b.apply(delta, 100.3)
    for delta in b.flush(100.3):
        a.apply(delta, 100.3)
    for store in (a, b):
        view = store.view("k", 100.4)
        assert view.tokens == 3.0
        assert view.contributions == {"a": 4, "b": 3}
        assert view.consumed == 7
    assert a.acquire("k", 4, 100.5) < 0
    assert b.acquire("k", 3, 100.5) == 0.0
    # The next window starts empty; a sliding window would still weigh the last one.
    assert a.acquire("k", 10, 101.0) == 0.0


def test_sliding_window_weighs_the_previous_window() -> None:
    store = WindowStore(WindowPolicy(10, 1.0), "r0", sliding=True)
    assert store.acquire("k", 10, 100.0) == 0.0
    assert store.view("k", 101.25).tokens == pytest.approx(10 - 10 * 0.75)
    assert store.acquire("k", 3, 101.25) < 0  # 7.5 + 3 > 10
    assert store.acquire("k", 2, 101.25) == pytest.approx(0.5)
    assert store.view("k", 102.5).tokens == pytest.approx(10 - 2 * 0.5)


def test_refunds_give_back_room_in_the_current_window() -> None:
    store = WindowStore(WindowPolicy(5, 1.0), "r0", sliding=False)
    assert store.acquire("k", 5, 10.0) == 0.0
    store.refund("k", 2, 10.5)
    assert store.acquire("k", 2, 10.6) == 0.0
    assert store.view("k", 10.6).contributions == {"r0": 5}
    [delta] = store.flush(10.6)
    assert delta.entries == (Entry(10, 0.0, 7, 2),)
    store.refund("untracked", 1, 10.6)
    assert "untracked" not in store


def test_cells_of_windows_too_old_to_matter_are_ignored() -> None:
    store = WindowStore(WindowPolicy(5, 1.0), "r0", sliding=True)
    store.apply(Delta("k", "r1", (Entry(7, 0.0, 5, 0),)), 10.0)
    assert "k" not in store
    store.acquire("k", 1, 10.0)
    store.apply(Delta("k", "r1", (Entry(8, 0.0, 5, 0),)), 10.0)
    assert store.view("k", 10.0).contributions == {"r0": 1}
    store.apply(Delta("k", "r1", (Entry(9, 0.0, 4, 0),)), 10.0)
    assert store.view("k", 10.0).tokens == pytest.approx(5 - 1 - 4)


def test_sweep_deletes_keys_whose_windows_are_over() -> None:
    store = WindowStore(WindowPolicy(5, 1.0), "r0", sliding=False)
    store.acquire("old", 1, 10.0)
    store.acquire("new", 1, 11.5)
    assert store.sweep(11.5) == 0  # "old" is dirty until flushed
    store.flush(11.5)
    assert store.sweep(11.5) == 0  # window 10 still weighs in window 11
    assert store.sweep(12.0) == 1
    assert store.keys() == ["new"]
    assert store.stats.deleted_idle == 1


def test_repeated_budgeted_sweeps_visit_every_key() -> None:
    """A sweep with a budget must not keep looking at the same first keys forever."""
    store = WindowStore(WindowPolicy(5, 1.0), "r0", sliding=False)
    for i in range(30):
        store.acquire(f"k{i}", 1, 10.0)
    store.flush(10.0)
    for t in range(12, 40):
        for i in range(10):  # the ten oldest keys stay busy
            store.acquire(f"k{i}", 1, float(t))
        store.flush(float(t))
        store.sweep(float(t), budget=10)
    assert sorted(store.keys()) == sorted(f"k{i}" for i in range(10))


def test_max_keys_evicts_and_still_ships_dirty_cells() -> None:
    policy = WindowPolicy(5, 1.0)
    store = WindowStore(policy, "r0", sliding=False, max_keys=2)
    peer = WindowStore(policy, "r1", sliding=False)
    for i in range(5):
        store.acquire(f"k{i}", 2, 10.0)
        assert len(store) <= 2
    assert store.stats.evicted_active == 3
    for delta in store.flush(10.0):
        peer.apply(delta, 10.0)
    assert sum(peer.view(f"k{i}", 10.0).consumed for i in range(5)) == 10


def test_a_peer_clock_slightly_ahead_does_not_open_the_window() -> None:
    """B's clock is 2 ms ahead across a window boundary: its cells for window 10 reach A
    while A is still in window 9. A must not treat its own window as empty."""
    policy = WindowPolicy(5, 1.0)
    a = WindowStore(policy, "a", sliding=False)
    b = WindowStore(policy, "b", sliding=False)
    assert a.acquire("k", 5, 9.990) == 0.0
    b.acquire("k", 1, 10.001)
    for delta in b.flush(10.001):
        a.apply(delta, 9.999)
    admitted_by_a_in_window_9 = 5 + sum(a.acquire("k", 1, 9.9995) >= 0 for _ in range(10))
    assert admitted_by_a_in_window_9 <= 5


@given(non_integers)
def test_invalid_limits_and_costs_raise(value: object) -> None:
    with pytest.raises(InvalidParameter):
        WindowPolicy(value, 1.0)  # type: ignore[arg-type]
    store = WindowStore(WindowPolicy(5, 1.0), "r0", sliding=True)
    with pytest.raises(InvalidParameter):
        store.acquire("k", value, 1.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        store.refund("k", value, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("window", [0, -1.0, float("nan"), float("inf"), True])
def test_invalid_windows_and_stores_raise(window: object) -> None:
    with pytest.raises(InvalidParameter):
        WindowPolicy(5, window)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        WindowStore(WindowPolicy(5, 1.0), "", sliding=False)
    with pytest.raises(InvalidParameter):
        WindowStore(WindowPolicy(5, 1.0), "r0", sliding=False).acquire("k", 1, float("nan"))


def test_re_admitting_an_evicted_key_in_the_same_window_loses_nothing() -> None:
    policy = WindowPolicy(10, 60.0)
    store = WindowStore(policy, "r0", sliding=False, max_keys=1)
    peer = WindowStore(policy, "r1", sliding=False)
    store.acquire("hot", 3, 100.0)
    store.acquire("flood", 1, 100.1)  # evicts "hot" while it is active
    store.acquire("hot", 2, 100.2)  # continues its own cell: 5, not a fresh 2
    for delta in store.flush(100.3):
        peer.apply(delta, 100.3)
    assert peer.view("hot", 100.3).consumed == 5
