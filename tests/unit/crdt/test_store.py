"""BucketStore replication: delta-apply is the lattice join, nodes converge to it exactly
within the sync bound, and GC, replays, restarts and clock steps never change a decision."""

from __future__ import annotations

import marshal
import random

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from crdt.bucket import EMPTY
from crdt.delta import Delta, Entry
from crdt.errors import InvalidParameter
from crdt.policy import BucketPolicy, SyncTiming
from crdt.store import BucketStore, KeyBudget, KeyView
from tests.strategies import (
    KEYS,
    Cluster,
    Limit,
    Net,
    Op,
    Scenario,
    bad_numbers,
    entries_max,
    fold_tat,
    limits,
    non_integers,
    scaled,
    scenarios,
    seconds,
    timely_nets,
    timings,
    traffic,
)


def _receiver(limit: Limit, timing: SyncTiming, deltas: list[Delta], now: float) -> BucketStore:
    """A replica that merges everything ever sent, with sealing off: the full-state join."""
    rx = BucketStore(limit.policy, "rx", timing)
    rx.bootstrapping = True
    for delta in deltas:
        rx.apply(delta, now)
    return rx


def _same_bucket(a: KeyView, b: KeyView, now: float, capacity: int) -> bool:
    """Same TAT, where any TAT at or before `now` means the same full bucket."""
    return abs(max(a.tat, now) - max(b.tat, now)) <= 1e-9 * max(1.0, abs(now)) + 1e-9 * capacity


@scaled(1.0)
@given(scenarios(), st.randoms(use_true_random=False))
def test_delta_apply_in_any_order_with_duplicates_is_the_full_state_merge(
    scenario: Scenario, rnd: random.Random
) -> None:
    """Applying every delta in any order, with duplicates, or only each writer's final
    full state, gives one and the same view (TAT and contributions)."""
    cluster = scenario.play()
    now = cluster.final_seconds()
    deltas = [d for _, d in cluster.sent]
    shuffled = deltas + rnd.sample(deltas, k=len(deltas) // 2)
    rnd.shuffle(shuffled)
    in_order = _receiver(cluster.limit, cluster.timing, deltas, now)
    any_order = _receiver(cluster.limit, cluster.timing, shuffled, now)
    full_state = _receiver(cluster.limit, cluster.timing, entries_max(deltas), now)
    for key in KEYS:
        a, b, c = (s.view(key, now) for s in (in_order, any_order, full_state))
        assert a.contributions == b.contributions == c.contributions
        assert a.tat == pytest.approx(b.tat, abs=1e-9)
        assert a.tat == pytest.approx(c.tat, abs=1e-9)
        mine = [d for d in deltas if d.key == key]
        assert a.tat == pytest.approx(fold_tat(mine, cluster.limit.policy.interval), abs=1e-9)


@scaled(1.0)
@given(scenarios(refunds=False), st.randoms(use_true_random=False))
def test_applying_a_delta_never_lowers_state(scenario: Scenario, rnd: random.Random) -> None:
    """Inflationary: no delta, however stale or repeated, lowers a TAT or a contribution."""
    cluster = scenario.play()
    now = cluster.final_seconds()
    deltas = [d for _, d in cluster.sent]
    rx = BucketStore(cluster.limit.policy, "rx", cluster.timing)
    rx.bootstrapping = True
    for delta in rnd.sample(deltas, k=len(deltas)) + deltas:
        before = rx.view(delta.key, now)
        rx.apply(delta, now)
        after = rx.view(delta.key, now)
        assert after.tat >= before.tat - 1e-9
        for replica, value in before.contributions.items():
            assert after.contributions.get(replica, 0) >= value


@scaled(1.0)
@given(scenarios())
def test_nodes_converge_exactly_to_the_join_within_the_sync_bound(scenario: Scenario) -> None:
    """Random delays below seal_after, duplicates and (when not FIFO) reordering: every
    node ends with the join's TAT, and with the join's contributions while it tracks the
    key."""
    cluster = scenario.play()
    now = cluster.final_seconds()
    join = _receiver(cluster.limit, cluster.timing, [d for _, d in cluster.sent], now)
    for key in KEYS:
        expected = join.view(key, now)
        for store in cluster.stores:
            view = store.view(key, now)
            assert _same_bucket(view, expected, now, cluster.limit.capacity), (
                store.replica,
                key,
                view,
                expected,
            )
        assert all(s.stats.late_entries == 0 for s in cluster.stores)


@scaled(1.0)
@given(
    limits,
    timings,
    st.integers(2, 4),
    st.data(),
)
def test_idle_key_deletion_never_changes_a_decision(
    limit: Limit, timing: SyncTiming, nodes: int, data: st.DataObject
) -> None:
    """A cluster that seals and deletes at every flush answers every request exactly as
    one that never sweeps, with peers and delays up to 90% of seal_after."""
    net = data.draw(timely_nets(timing))
    ops = data.draw(traffic(nodes=nodes, max_cost=limit.capacity))
    sweeping = Cluster(limit, timing, nodes, sweep=True)
    keeping = Cluster(limit, timing, nodes, sweep=False)
    sweeping.run(ops, net)
    keeping.run(ops, net)
    for swept, kept in zip(sweeping.decisions, keeping.decisions, strict=True):
        assert (swept.result >= 0) == (kept.result >= 0), (swept, kept)
        assert swept.result == pytest.approx(kept.result, abs=1e-6), (swept, kept)


@given(
    limits,
    st.lists(
        st.tuples(
            st.sampled_from(KEYS),
            st.integers(0, 400),  # ms since the previous step
            st.integers(1, 3),  # cost
            st.one_of(st.none(), st.integers(0, 2)),  # keys taken by this flush
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_flushing_a_slice_of_keys_at_a_time_ships_what_whole_flushes_do(
    limit: Limit, steps: list[tuple[str, int, int, int | None]]
) -> None:
    """A replica that flushes a few keys at a time (the rest stay marked, possibly across
    epoch boundaries) ships, once drained, what one flushing every key ships: a peer
    merging either sees the same buckets and contributions."""
    timing = SyncTiming(epoch=0.5, seal_after=1.25)
    sliced = BucketStore(limit.policy, "r0", timing)
    whole = BucketStore(limit.policy, "r0", timing)
    out_sliced: list[Delta] = []
    out_whole: list[Delta] = []
    t_ms = 0
    for i, (key, dt, cost, taken) in enumerate(steps):
        t_ms += dt
        now = seconds(t_ms)
        assert (sliced.acquire(key, cost, now) >= 0) == (whole.acquire(key, cost, now) >= 0)
        # Drained every third step at least: a key stays marked well within the seal.
        out_sliced += sliced.flush(now, limit=None if i % 3 == 2 else taken)
        out_whole += whole.flush(now)
    now = seconds(t_ms)
    out_sliced += sliced.flush(now)
    assert sliced.dirty_count() == 0
    a = _receiver(limit, timing, out_sliced, now)
    b = _receiver(limit, timing, out_whole, now)
    for key in KEYS:
        va, vb = a.view(key, now), b.view(key, now)
        assert va.contributions == vb.contributions
        assert va.tat == pytest.approx(vb.tat, abs=1e-9)


def test_regression_sealing_keeps_the_base_for_a_late_opened_epoch() -> None:
    """Found by reasoning, then by the idle-deletion property (epoch 0.5 s, delay 751 ms).

    B admits 10 at t=0 (TAT 10); A admits 10 at t=1.9 before hearing of it (epoch 1);
    B rolls to epoch 4 at t=4.0, which seals epoch 0; A's epoch-1 cells reach B at 4.42
    (2.4 s < seal_after). B used to start epoch 1 from -inf instead of epoch 0's carry
    (TAT 10), so A's 10 did not stack on B's 10: B ended at TAT 1012.9, A at 1021.
    """
    scenario = Scenario(
        Limit(1, 1, 10),
        SyncTiming(),
        2,
        Net(flush_ms=20, max_delay_ms=2400, min_delay_ms=2400),
        (Op(0, 1, "a", 10), Op(1900, 0, "a", 10), Op(4000, 1, "a", 1)),
    )
    for sweep in (True, False):
        cluster = scenario.play(sweep=sweep)
        now = cluster.final_seconds()
        tats = [s.view("a", now).tat for s in cluster.stores]
        assert tats == [pytest.approx(1021.0)] * 2
        assert fold_tat([d for _, d in cluster.sent], 1.0) == pytest.approx(1021.0)


def test_regression_idle_deletion_waits_until_no_open_epoch_can_stack() -> None:
    """B admits 4 at t=0 (TAT 4); A admits 5 at t=1.5, unaware; B's sweep at t=4.0 saw
    every epoch sealed and TAT <= now and deleted the key; A's epoch-1 cells then arrived
    (delay 2.6 s) and B rebuilt TAT 6.5 instead of 9, admitting 6 at t=4.2 where a
    store that never sweeps denies it."""
    scenario = Scenario(
        Limit(1, 1, 10),
        SyncTiming(),
        2,
        Net(flush_ms=20, max_delay_ms=2600, min_delay_ms=2600),
        (Op(0, 1, "a", 4), Op(1500, 0, "a", 5), Op(4200, 1, "a", 6)),
    )
    swept = scenario.play(sweep=True)
    kept = scenario.play(sweep=False)
    assert [d.result >= 0 for d in swept.decisions] == [True, True, False]
    assert [d.result for d in swept.decisions] == pytest.approx([d.result for d in kept.decisions])
    now = swept.final_seconds()
    assert [s.view("a", now).tat for s in swept.stores] == [pytest.approx(1009.0)] * 2


# -- replay and restart -----------------------------------------------------------------


def _replay_all(cluster: Cluster, now: float) -> dict[tuple[str, str], tuple[KeyView, KeyView]]:
    """Re-apply every delta ever sent to every node; (before, after) views per node/key."""
    out = {}
    for store in cluster.stores:
        before = {key: store.view(key, now) for key in KEYS}
        for _, delta in cluster.sent:
            store.apply(delta, now)
        for key in KEYS:
            out[(store.replica, key)] = (before[key], store.view(key, now))
    return out


@scaled(1.0)
@given(scenarios())
def test_replaying_every_delta_changes_nothing_while_keys_stay_tracked(
    scenario: Scenario,
) -> None:
    """A consumer re-reading the topic (at-least-once) changes no view, sealed epochs
    included (late marks make them idempotent), when no key was deleted meanwhile."""
    cluster = scenario.play(sweep=False)
    now = cluster.final_seconds()
    for (replica, key), (before, after) in _replay_all(cluster, now).items():
        assert after.contributions == before.contributions, (replica, key)
        assert after.tat == pytest.approx(before.tat, abs=1e-9), (replica, key)
    assert all(s.stats.late_cost == 0 for s in cluster.stores)


@scaled(1.0)
@given(scenarios())
def test_replaying_after_idle_deletion_is_at_worst_conservative(scenario: Scenario) -> None:
    """With idle keys deleted, a full replay never lowers a TAT or a contribution and
    never admits more (it may count a deleted key's old cells again: see the xfail)."""
    cluster = scenario.play(sweep=True)
    now = cluster.final_seconds()
    for (replica, key), (before, after) in _replay_all(cluster, now).items():
        assert max(after.tat, now) >= max(before.tat, now) - 1e-9, (replica, key)
        for r, v in before.contributions.items():
            assert after.contributions.get(r, 0) >= v, (replica, key)


@pytest.mark.xfail(
    strict=True,
    reason="known: late marks are per key, so a replay after the key was deleted as idle "
    "and re-created counts its sealed cells again as debt (conservative, not exact)",
)
def test_replaying_after_idle_deletion_and_recreation_is_exact() -> None:
    scenario = Scenario(
        Limit(1, 1, 1),
        SyncTiming(),
        2,
        Net(flush_ms=20),
        (Op(0, 0, "a", 1), Op(301, 0, "a", 1), Op(4001, 0, "a", 1)),
    )
    cluster = scenario.play(sweep=True)
    now = cluster.final_seconds()
    views = _replay_all(cluster, now)
    before, after = views[("r1", "a")]
    assert before.contributions == {"r0": 1}  # r1 deleted "a" after epoch 1000 sealed
    assert after.contributions == before.contributions  # fails: {"r0": 2}, TAT + 1 s


@scaled(1.0)
@given(scenarios(), st.integers(1, 5))
def test_a_restarted_incarnation_bootstraps_to_the_join_and_adds_on_top(
    scenario: Scenario, cost: int
) -> None:
    """A restart is a new replica id: bootstrapping from the topic gives the join, its
    own admissions start from zero without clashing, and no peer's counter goes back."""
    cluster = scenario.play()
    now = cluster.final_seconds()
    deltas = [d for _, d in cluster.sent]
    join = _receiver(cluster.limit, cluster.timing, deltas, now)
    restarted = BucketStore(cluster.limit.policy, "r0/2", cluster.timing)
    restarted.bootstrapping = True
    for delta in deltas:
        restarted.apply(delta, now)
    restarted.finish_bootstrap(now)
    for key in KEYS:
        assert restarted.view(key, now).contributions == join.view(key, now).contributions
        assert _same_bucket(
            restarted.view(key, now), join.view(key, now), now, cluster.limit.capacity
        )
    peers = cluster.stores[1:]
    before = {(p.replica, k): p.view(k, now) for p in peers for k in KEYS}
    cost = min(cost, cluster.limit.capacity)
    later = max(now, join.view("a", now).tat) + 1.0  # a full bucket again
    assert restarted.acquire("a", cost, later) >= 0
    shipped = restarted.flush(later)
    for peer in peers:
        for delta in shipped:
            peer.apply(delta, later)
    for peer in peers:
        for key in KEYS:
            old = before[(peer.replica, key)].contributions
            new = peer.view(key, later).contributions
            assert all(new.get(r, 0) >= v for r, v in old.items())
        assert peer.view("a", later).contributions.get("r0/2") == cost
        assert peer.view("a", later).tokens == pytest.approx(
            restarted.view("a", later).tokens, abs=1e-6
        )


def test_reusing_a_replica_id_from_zero_would_lose_admissions() -> None:
    """Why incarnations exist: a process that restarts as "r0" with empty cells ships
    p=3 for an epoch where the old "r0" shipped p=5; max-merge keeps 5, the 3 vanish."""
    policy = Limit(1, 1, 10).policy
    old, peer = BucketStore(policy, "r0"), BucketStore(policy, "r1")
    old.acquire("a", 5, 100.0)
    for delta in old.flush(100.0):
        peer.apply(delta, 100.0)
    reborn = BucketStore(policy, "r0")
    reborn.acquire("a", 3, 100.5)
    for delta in reborn.flush(100.5):
        peer.apply(delta, 100.5)
    assert peer.view("a", 100.5).consumed == 5  # not 8: the reason for "r0/2"
    incarnation = BucketStore(policy, "r0/2")
    incarnation.acquire("a", 3, 100.5)
    for delta in incarnation.flush(100.5):
        peer.apply(delta, 100.5)
    assert peer.view("a", 100.5).consumed == 8


@scaled(1.0)
@given(scenarios())
def test_bootstrapping_applies_history_as_history_not_as_debt(scenario: Scenario) -> None:
    """A node joining long after the traffic reads the whole topic in bootstrap mode:
    nothing counts as late, and it agrees with the join afterwards."""
    cluster = scenario.play()
    later = cluster.final_seconds() + 3600.0
    fresh = BucketStore(cluster.limit.policy, "r9", cluster.timing)
    fresh.bootstrapping = True
    for _, delta in cluster.sent:
        fresh.apply(delta, later)
    assert fresh.sweep(later) == 0  # no sealing or deletion while bootstrapping
    fresh.finish_bootstrap(later)
    assert fresh.stats.late_entries == 0
    join = _receiver(cluster.limit, cluster.timing, [d for _, d in cluster.sent], later)
    for key in KEYS:
        assert fresh.view(key, later).contributions == join.view(key, later).contributions
        assert fresh.view(key, later).tat == pytest.approx(join.view(key, later).tat, abs=1e-9)


# -- clocks stepping back ---------------------------------------------------------------


@st.composite
def jumpy_clock_ops(draw: st.DrawFn) -> list[tuple[int, str, str, int]]:
    """(t_ms, action, key, cost) with time mostly forward, sometimes seconds back."""
    steps = draw(
        st.lists(
            st.tuples(
                st.one_of(st.integers(0, 700), st.integers(-9_000, -1), st.integers(1_000, 6_000)),
                st.sampled_from(["acquire", "acquire", "peer", "flush", "sweep"]),
                st.sampled_from(KEYS[:2]),
                st.integers(1, 4),
            ),
            min_size=1,
            max_size=50,
        )
    )
    t = 20_000
    out = []
    for step, action, key, cost in steps:
        t = max(0, t + step)
        out.append((t, action, key, cost))
    return out


@scaled(1.0)
@given(limits, timings, jumpy_clock_ops())
@example(  # a deleted key re-admitted after a 10 s step back used to ship p=1 after p=3
    Limit(1, 1, 5),
    SyncTiming(),
    [
        (20_000, "acquire", "a", 3),
        (20_100, "flush", "a", 1),
        (30_000, "sweep", "a", 1),
        (20_200, "acquire", "a", 1),
        (20_300, "flush", "a", 1),
    ],
)
def test_a_clock_stepping_back_never_lowers_sealed_or_merged_state(
    limit: Limit, timing: SyncTiming, ops: list[tuple[int, str, str, int]]
) -> None:
    """The seal point never moves back, a tracked key's TAT and contributions never
    decrease, and no cell this replica ships for an (epoch, key) ever goes back."""
    store = BucketStore(limit.policy, "r0", timing)
    peer = BucketStore(limit.policy, "r1", timing)
    peer_clock = 0
    seal = store.seal_point
    shipped: dict[tuple[str, int], int] = {}
    for t_ms, action, key, cost in ops:
        now = seconds(t_ms)
        before = store.view(key, now)
        if action == "acquire":
            store.acquire(key, cost, now)
        elif action == "peer":
            peer_clock = max(peer_clock, t_ms)  # the peer's clock is sane
            peer.acquire(key, cost, seconds(peer_clock))
            for delta in peer.flush(seconds(peer_clock)):
                store.apply(delta, now)
        elif action == "flush":
            for delta in store.flush(now):
                for entry in delta.entries:
                    cell = (delta.key, entry.epoch)
                    assert entry.p >= shipped.get(cell, 0), (cell, entry)
                    shipped[cell] = entry.p
        else:
            store.sweep(now)
        after = store.view(key, now)
        assert store.seal_point >= seal
        seal = store.seal_point
        if before.open_epochs and after.open_epochs:  # tracked throughout
            assert after.tat >= before.tat - 1e-9, (action, before, after)
            for replica, value in before.contributions.items():
                assert after.contributions.get(replica, 0) >= value


def test_seal_point_is_monotone_and_matches_the_definition() -> None:
    store = BucketStore(Limit(1, 1, 5).policy, "r0", SyncTiming(epoch=1.0, seal_after=3.0))
    store.sweep(10.0)
    # Epoch e is sealed once (e + 1) * epoch + seal_after <= now.
    assert store.seal_point == 6
    store.sweep(9.99)
    assert store.seal_point == 6
    store.sweep(2.0)  # the clock stepped back 8 s
    assert store.seal_point == 6
    store.sweep(11.0)
    assert store.seal_point == 7


# -- invalid parameters -------------------------------------------------------------------


@given(bad_numbers)
def test_invalid_rates_raise(rate: object) -> None:
    with pytest.raises(InvalidParameter):
        BucketPolicy(rate, 10)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        SyncTiming(epoch=rate)  # type: ignore[arg-type]


@given(non_integers)
def test_invalid_capacities_and_costs_raise(value: object) -> None:
    with pytest.raises(InvalidParameter):
        BucketPolicy(1.0, value)  # type: ignore[arg-type]
    store = BucketStore(BucketPolicy(1.0, 10), "r0")
    with pytest.raises(InvalidParameter):
        store.acquire("k", value, 10.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        store.refund("k", value, 10.0)  # type: ignore[arg-type]
    assert len(store) == 0


@pytest.mark.parametrize("now", [float("nan"), float("inf"), float("-inf"), True])
def test_invalid_times_raise(now: object) -> None:
    store = BucketStore(BucketPolicy(1.0, 10), "r0")
    delta = Delta("k", "r1", (Entry(10, 10.0, 1, 0),))
    for call in (
        lambda: store.acquire("k", 1, now),  # type: ignore[arg-type]
        lambda: store.refund("k", 1, now),  # type: ignore[arg-type]
        lambda: store.flush(now),  # type: ignore[arg-type]
        lambda: store.apply(delta, now),  # type: ignore[arg-type]
        lambda: store.sweep(now),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidParameter):
            call()


def test_invalid_store_and_timing_parameters_raise() -> None:
    policy = BucketPolicy(1.0, 10)
    with pytest.raises(InvalidParameter):
        BucketStore(policy, "")
    with pytest.raises(InvalidParameter):
        BucketStore(policy, "r0", max_keys=0)
    with pytest.raises(InvalidParameter):
        SyncTiming(epoch=1.0, seal_after=1.0)  # must exceed the epoch
    with pytest.raises(InvalidParameter):
        SyncTiming(epoch=1.0, seal_after=float("nan"))
    with pytest.raises(ValueError, match="rate"):  # InvalidParameter is a ValueError
        BucketPolicy(0, 1)


def test_integral_float_costs_are_stored_as_integers() -> None:
    """2.0 passes validation as 2; the cells shipped to peers must stay integers."""
    store = BucketStore(BucketPolicy(1.0, 10), "r0")
    assert store.acquire("k", 2.0, 10.0) == pytest.approx(8.0)  # type: ignore[arg-type]
    store.refund("k", 1.0, 10.0)  # type: ignore[arg-type]
    [delta] = store.flush(10.0)
    [entry] = delta.entries
    assert (type(entry.p), type(entry.n)) == (int, int)
    assert type(store.view("k", 10.0).consumed) is int


# -- the key cap --------------------------------------------------------------------------


@scaled(1.0)
@given(
    st.integers(1, 20),
    st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 60), st.integers(1, 3), st.booleans()),
        min_size=1,
        max_size=120,
    ),
)
def test_a_key_flood_stays_under_max_keys_and_loses_no_admission(
    max_keys: int, steps: list[tuple[int, int, int, bool]]
) -> None:
    """len(store) never exceeds max_keys; every admitted cost reaches a peer (evicted
    dirty keys ship from the next flush), except what re-admitting an evicted key in
    the same epoch overwrites: see the xfail below."""
    policy = BucketPolicy(2.0, 3)
    store = BucketStore(policy, "r0", max_keys=max_keys)
    peer = BucketStore(policy, "r1")
    t = 100_000
    admitted = 0
    evicted_keys: set[str] = set()
    for gap, key_no, cost, flush in steps:
        t += gap
        now = t / 1000
        key = f"user-{key_no}"
        tracked = set(store.keys())
        if store.acquire(key, cost, now) >= 0:
            admitted += cost
        evicted_keys |= tracked - set(store.keys())
        assert len(store) <= max_keys
        if flush:
            for delta in store.flush(now):
                peer.apply(delta, now)
    for delta in store.flush(t / 1000):
        peer.apply(delta, t / 1000)
    assert store.stats.evicted_active + store.stats.deleted_idle >= len(evicted_keys)
    received = sum(peer.view(k, t / 1000).contributions.get("r0", 0) for k in list(peer.keys()))
    assert received <= admitted
    if store.stats.evicted_active == 0:
        assert received == admitted


def test_idle_keys_are_evicted_before_active_ones() -> None:
    store = BucketStore(BucketPolicy(1.0, 5), "r0", max_keys=10)
    for i in range(10):
        store.acquire(f"old-{i}", 1, 100.0)
    store.flush(100.0)
    # 10 s later every old bucket is full and every epoch sealed: all idle.
    for i in range(10):
        store.acquire(f"new-{i}", 1, 110.0)
        assert len(store) == 10
    assert store.stats.deleted_idle == 10
    assert store.stats.evicted_active == 0
    assert sorted(store.keys()) == sorted(f"new-{i}" for i in range(10))


def test_active_evictions_are_counted_and_their_deltas_still_flushed() -> None:
    policy = BucketPolicy(1.0, 5)
    store = BucketStore(policy, "r0", max_keys=4)
    peer = BucketStore(policy, "r1")
    for i in range(10):
        assert store.acquire(f"k{i}", 2, 100.0) >= 0  # all active, all dirty
        assert len(store) <= 4
    assert store.stats.evicted_active == 6
    assert store.stats.deleted_idle == 0
    assert store.dirty_count() == 10
    shipped = store.flush(100.0)
    assert sorted(d.key for d in shipped) == sorted(f"k{i}" for i in range(10))
    for delta in shipped:
        peer.apply(delta, 100.0)
    assert sum(peer.view(f"k{i}", 100.0).consumed for i in range(10)) == 20
    assert store.dirty_count() == 0


def test_re_admitting_an_evicted_key_in_the_same_epoch_loses_nothing() -> None:
    policy = BucketPolicy(1.0, 5)
    store = BucketStore(policy, "r0", max_keys=1)
    peer = BucketStore(policy, "r1")
    store.acquire("hot", 3, 100.0)
    store.acquire("flood", 1, 100.1)  # evicts "hot" (active, dirty)
    store.acquire("hot", 2, 100.2)  # evicts "flood"; "hot" restarts at own=2
    for delta in store.flush(100.3):
        peer.apply(delta, 100.3)
    assert peer.view("hot", 100.3).consumed == 5  # was 3 before evictions kept own cells


# -- beyond the sync bound: outages and partitions ----------------------------------------


@st.composite
def partitioned(draw: st.DrawFn) -> Scenario:
    """A node cut off for longer than seal_after: its cells arrive late, in order."""
    base = draw(scenarios(min_nodes=2, max_nodes=3, fifo=True))
    last = base.ops[-1].t_ms
    start = draw(st.integers(0, max(0, last)))
    length = draw(st.integers(int(base.timing.seal_after * 1000) + 500, 12_000))
    cut = draw(st.integers(0, base.nodes - 1))
    net = Net(
        flush_ms=base.net.flush_ms,
        max_delay_ms=min(base.net.max_delay_ms, 300),
        duplicate=base.net.duplicate,
        seed=base.net.seed,
        partitions=((start, start + length, cut),),
    )
    return Scenario(base.limit, base.timing, base.nodes, net, base.ops)


@scaled(1.0)
@given(partitioned())
@example(  # r0 used to end at TAT 1004.174: its merge into a held, sealed epoch skipped
    # the consumption of the later epoch that a roll had folded (fixed in KeyState.roll).
    Scenario(
        Limit(1, 1, 3),
        SyncTiming(epoch=0.25, seal_after=1.0),
        3,
        Net(flush_ms=20, max_delay_ms=24, partitions=((0, 1500, 0),)),
        (
            Op(0, 0, "a", 1),
            Op(174, 2, "a", 1),
            Op(212, 0, "a", 1),
            Op(250, 0, "a", 1),
            Op(500, 1, "a", 1),
        ),
    )
)
def test_late_cells_after_a_partition_are_counted_once_and_conservatively(
    scenario: Scenario,
) -> None:
    """Cells arriving after their epoch was sealed become debt: every node ends with
    every replica's exact contribution (nothing lost, nothing counted twice despite
    duplicates) and a TAT at most one epoch before the lattice fold's (the late cost
    is all there; only where it started within its sealed epoch is approximated)."""
    cluster = scenario.play(sweep=False)
    now = cluster.final_seconds()
    deltas = [d for _, d in cluster.sent]
    join = _receiver(cluster.limit, cluster.timing, deltas, now)
    # Debt that puts a floor beyond now + C/r + the seal horizon is clamped on receipt
    # (issue 11: a clock or a writer far ahead must not lock users out), so it is
    # forgiven, and the lattice figures below hold only where no receiver clamped.
    clamped = bool(join.stats.entry_problems) or any(s.stats.entry_problems for s in cluster.stores)
    for key in KEYS:
        expected = join.view(key, now)
        fold = fold_tat([d for d in deltas if d.key == key], cluster.limit.policy.interval)
        if not clamped:
            assert expected.tat == pytest.approx(fold, abs=1e-9)
        for store in cluster.stores:
            view = store.view(key, now)
            assert view.contributions == expected.contributions, (store.replica, key)
            if not clamped:
                # Debt stacks on this node's own floor of the sealed epoch; the late
                # writer's floor there may have been later, by less than one epoch.
                slack = cluster.timing.epoch
                assert view.tat >= expected.tat - slack - 1e-9, (store.replica, key)


@pytest.mark.xfail(
    strict=True,
    reason="known: with refunds, cascaded floors are max-registers computed from the "
    "epoch's consumption at the time, so a refund merged after a later epoch's floor "
    "was raised leaves it raised (conservative, order-dependent)",
)
def test_refunds_merge_in_any_order() -> None:
    policy = Limit(1, 2, 1).policy
    deltas = [
        Delta("a", "r0", (Entry(1000, 1000.0, 1, 0),)),
        Delta("a", "r0", (Entry(1002, 1002.247, 1, 0),)),
        Delta("a", "r0", (Entry(1002, 1002.247, 1, 1),)),
        Delta("a", "r1", (Entry(1003, 1003.0, 1, 0),)),
    ]
    in_order = _receiver(Limit(1, 2, 1), SyncTiming(), deltas, 1010.0)
    last_first = _receiver(Limit(1, 2, 1), SyncTiming(), deltas[-1:] + deltas[:-1], 1010.0)
    assert policy.rate == 0.5
    assert in_order.view("a", 1010.0).tat == pytest.approx(1005.0)
    assert last_first.view("a", 1010.0).tat == pytest.approx(1005.0)  # is 1006.247


@scaled(1.0)
@given(scenarios(refunds=True), st.randoms(use_true_random=False))
def test_refunds_merge_conservatively_in_any_order(scenario: Scenario, rnd: random.Random) -> None:
    """With refunds, contributions are still exact in any order, and the TAT is never
    before the lattice fold of the final cells (refunds are never over-credited)."""
    cluster = scenario.play()
    now = cluster.final_seconds()
    deltas = [d for _, d in cluster.sent]
    shuffled = rnd.sample(deltas, k=len(deltas))
    full = entries_max(deltas)
    for order in (deltas, shuffled):
        rx = _receiver(cluster.limit, cluster.timing, order, now)
        exact = _receiver(cluster.limit, cluster.timing, full, now)
        for key in KEYS:
            assert rx.view(key, now).contributions == exact.view(key, now).contributions
            fold = fold_tat([d for d in full if d.key == key], cluster.limit.policy.interval)
            assert rx.view(key, now).tat >= fold - 1e-9
    for store in cluster.stores:
        for key in KEYS:
            fold = fold_tat([d for d in full if d.key == key], cluster.limit.policy.interval)
            assert max(store.view(key, now).tat, now) >= max(fold, now) - 1e-9


def test_a_shared_key_budget_bounds_stores_together_and_keeps_each_share() -> None:
    budget = KeyBudget(10)
    a = BucketStore(BucketPolicy(1.0, 5), "r", budget=budget)
    b = BucketStore(BucketPolicy(1.0, 5), "r", budget=budget)
    for i in range(10):
        assert a.acquire(f"a{i}", 1, 10.0) >= 0
    for i in range(5):
        assert b.acquire(f"b{i}", 1, 10.0) >= 0
    assert len(a) + len(b) == budget.used == 10
    assert len(b) == 5, "room was made in the store holding more than its share"
    for i in range(5, 10):
        assert b.acquire(f"b{i}", 1, 10.0) >= 0
    assert len(a) == len(b) == 5, "b evicts its own keys once it holds its share"


@given(scenarios(refunds=True), st.randoms(use_true_random=False))
def test_exported_state_loads_into_a_new_replica_with_the_same_views(
    scenario: Scenario, rnd: random.Random
) -> None:
    """A restarted node loads its snapshot: every key's tokens and contributions are the
    old replica's, its own cells now a peer's (the new replica starts from zero)."""
    cluster = scenario.play(sweep=rnd.random() < 0.5)
    old = cluster.stores[0]
    now = cluster.final_seconds()
    new = BucketStore(scenario.limit.policy, "restarted", scenario.timing)
    rows = marshal.loads(marshal.dumps(old.export_keys()))  # noqa: S302 (our own bytes)
    assert new.import_keys(rows, old.replica) == len(old)
    held = old.keys()
    for key in held:
        before, after = old.view(key, now), new.view(key, now)
        assert after.tokens == before.tokens
        assert after.contributions == before.contributions
        assert after.open_epochs == before.open_epochs
    # The new replica's own cells start from zero: its admissions stack on the old ones.
    for key in held:
        if new.acquire(key, 1, now) >= 0:
            (delta,) = [d for d in new.flush(now) if d.key == key]
            assert delta.replica == "restarted"
            assert delta.entries[-1].p == 1


def test_a_key_with_one_peers_cell_holds_it_inline_without_extra() -> None:
    """The common synced key (one peer's cell in the newest epoch) is one object: the cell
    is inline, with no Extra and no dict; a second peer's cell goes to the Extra."""
    store = BucketStore(BucketPolicy(1.0, 20), "me", SyncTiming(1.0, 3.0))
    store.apply(Delta("k", "peer", (Entry(1000, 1000.0, 1, 0),)), 1000.5)
    store.apply(Delta("k", "peer", (Entry(1000, 1000.0, 3, 0),)), 1000.5)
    st = store._keys["k"]
    assert (st.peer, st.peer_p, st.x) == ("peer", 3, None)
    store.apply(Delta("k", "other", (Entry(1000, 1000.0, 2, 0),)), 1000.5)
    assert st.x is not None
    assert st.x.remote == {"other": 2}
    assert st.peer == "peer"
    assert store.view("k", 1000.5).contributions == {"other": 2, "peer": 3}
    store.apply(Delta("k", "other", (Entry(1001, 1001.0, 1, 0),)), 1001.5)  # a new epoch
    assert (st.peer, st.peer_p) == ("other", 1)
    assert not st.x.remote, "the new epoch's first peer cell is inline again"
    assert store.view("k", 1001.5).contributions == {"other": 3, "peer": 3}


def test_a_key_with_only_peers_cells_shares_the_empty_history_containers() -> None:
    """A synced key with an Extra (here: a second epoch) allocates no list or dict for
    history it does not have; the first epoch it holds or seals takes its own."""
    store = BucketStore(BucketPolicy(1.0, 20), "me", SyncTiming(1.0, 3.0))
    store.apply(Delta("k", "peer", (Entry(1000, 1000.0, 1, 0),)), 1000.5)
    store.apply(Delta("k", "peer", (Entry(1000, 1000.0, 1, 1),)), 1000.5)  # a refund
    x = store._keys["k"].x
    assert x is not None
    assert x.remote_n == {"peer": 1}
    assert x.older == ()
    assert x.sealed is EMPTY
    assert x.late is EMPTY
    store.apply(Delta("k", "peer", (Entry(1001, 1001.0, 2, 0),)), 1001.5)  # a second epoch
    again = store._keys["k"].x
    assert again is x
    assert type(again.older) is list
    assert len(again.older) == 1
    other = BucketStore(BucketPolicy(1.0, 20), "me", SyncTiming(1.0, 3.0))
    other.apply(Delta("j", "peer", (Entry(1000, 1000.0, 1, 1),)), 1000.5)
    held = other._keys["j"].x
    assert held is not None
    assert held.older == ()
    assert held.sealed is EMPTY, "the first key's history is its own"
    store.sweep(1010.0)  # epoch 1000 sealed: folded into the totals, the list given back
    assert x.older == ()
    assert x.sealed == {"peer": 0}  # epoch 1001 stays the newest
