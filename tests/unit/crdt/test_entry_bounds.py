"""Entries are checked against the receiver's time and the rule, one by one: a hostile but
well-formed entry (or an honest node's clock far ahead) cannot freeze or free a user, and
a bad entry is clamped on its own. Refunds give back at most what was admitted."""

from __future__ import annotations

from crdt.delta import Delta, Entry
from crdt.policy import BucketPolicy, SyncTiming, WindowPolicy
from crdt.store import BucketStore
from crdt.windows import WindowStore

TIMING = SyncTiming(epoch=1.0, seal_after=3.0)
NOW = 50_000_000.5  # about 1.6 years after the cluster clock's origin
E_NOW = int(NOW)
POLICY = BucketPolicy(rate=10.0, capacity=20)  # refills fully in 2 s
# The furthest a floor can be ahead of now: a full bucket's worth plus the seal horizon.
HORIZON_S = 20 / 10.0 + TIMING.seal_after + TIMING.epoch


def _bucket() -> BucketStore:
    return BucketStore(POLICY, "me", TIMING)


def _admits_after(store: BucketStore, key: str, start: float, wait_s: float) -> bool:
    return store.acquire(key, 1, start + wait_s) >= 0


def test_a_floor_an_hour_ahead_denies_for_at_most_the_horizon() -> None:
    store = _bucket()
    store.apply(Delta("alice", "peer", (Entry(E_NOW, NOW + 3600, 1, 0),)), NOW)
    assert store.view("alice", NOW).tat <= NOW + HORIZON_S + 0.1 + 1e-6
    assert _admits_after(store, "alice", NOW, HORIZON_S + 0.2)
    assert store.stats.entry_problems == {"floor_ahead": 1}


def test_a_huge_cell_is_cut_to_what_the_rule_could_admit_in_an_epoch() -> None:
    store = _bucket()
    store.apply(Delta("alice", "peer", (Entry(E_NOW, NOW, 10**15, 0),)), NOW)
    view = store.view("alice", NOW)
    # C + r * (epoch + seal_after) = 20 + 10 * 4 = 60 tokens: 6 s of debt at most.
    assert view.contributions == {"peer": 60}
    assert _admits_after(store, "alice", NOW, 6.2)
    assert store.stats.entry_problems == {"cell_over_rule": 1}


def test_an_epoch_far_ahead_counts_within_the_horizon_and_the_key_goes_idle() -> None:
    store = _bucket()
    store.apply(Delta("alice", "peer", (Entry(E_NOW + 2**40, NOW, 1, 0),)), NOW)
    assert store.view("alice", NOW).contributions == {"peer": 1}
    assert store.acquire("alice", 19, NOW) >= 0
    assert store.acquire("alice", 1, NOW) < 0
    assert store.stats.entry_problems == {"epoch_ahead": 1}
    # It does not hold a key slot for years: idle once the horizon and the refill pass.
    later = NOW + 2 * HORIZON_S + TIMING.seal_after
    store.flush(later)
    store.sweep(later)
    assert "alice" not in store


def test_one_bad_entry_is_clamped_alone() -> None:
    store = _bucket()
    good = Entry(E_NOW, NOW - 0.5, 5, 0)
    store.apply(Delta("alice", "peer", (good, Entry(E_NOW + 10**6, NOW, 1, 0))), NOW)
    assert store.view("alice", NOW).contributions == {"peer": 6}
    assert store.stats.entry_problems == {"epoch_ahead": 1}


def test_an_epoch_within_the_seal_horizon_is_kept() -> None:
    store = _bucket()
    store.apply(Delta("alice", "peer", (Entry(E_NOW + 3, NOW + 3, 4, 0),)), NOW)
    assert store.view("alice", NOW).contributions == {"peer": 4}
    assert store.stats.entry_problems == {}


def test_refunds_beyond_the_cell_are_cut_to_it() -> None:
    store = _bucket()
    store.apply(Delta("alice", "peer", (Entry(E_NOW, NOW, 3, 10**15),)), NOW)
    view = store.view("alice", NOW)
    assert view.contributions == {}
    # The refund cannot buy tokens beyond a full bucket: 20 is the most ever admitted.
    assert store.acquire("alice", 20, NOW) >= 0
    assert store.acquire("alice", 1, NOW) < 0
    assert store.stats.entry_problems == {"refund_over_cell": 1}


def test_a_refund_gives_back_at_most_what_this_replica_admitted() -> None:
    store = _bucket()
    assert store.acquire("alice", 2, NOW) >= 0
    assert store.refund("alice", 1_000, NOW) == 2
    assert store.refund("bob", 5, NOW) == 0  # never admitted: nothing to give back
    (delta,) = store.flush(NOW)
    (entry,) = delta.entries
    assert entry.n <= entry.p
    # No floor in the future: an admission after a huge refund does not push peers' view.
    assert store.acquire("alice", 1, NOW + 0.5) >= 0
    (delta,) = store.flush(NOW + 0.5)
    assert all(e.floor <= NOW + 0.5 for e in delta.entries)
    peer = BucketStore(POLICY, "peer", TIMING)
    peer.apply(delta, NOW + 0.5)
    assert peer.acquire("alice", 19, NOW + 0.5) >= 0


def test_window_refunds_beyond_the_cell_do_not_free_the_user() -> None:
    store = WindowStore(WindowPolicy(limit=10, window=60.0), "me", sliding=False)
    w = int(NOW // 60)
    store.apply(Delta("alice", "peer", (Entry(w, 0.0, 1, 10**15),)), NOW)
    for _ in range(10):
        assert store.acquire("alice", 1, NOW) >= 0
    assert store.acquire("alice", 1, NOW) < 0
    assert store.stats.entry_problems == {"refund_over_cell": 1}


def test_window_cells_beyond_the_limit_and_windows_ahead_are_bounded() -> None:
    store = WindowStore(WindowPolicy(limit=10, window=1.0), "me", sliding=False)
    w = int(NOW)
    store.apply(Delta("alice", "peer", (Entry(w, 0.0, 10**15, 0),)), NOW)
    assert store.view("alice", NOW).contributions == {"peer": 10}
    store.apply(Delta("bob", "peer", (Entry(w + 2**30, 0.0, 1, 0),)), NOW)
    assert store.view("bob", NOW + 1.0).contributions == {"peer": 1}
    store.sweep(NOW + 3.0)
    assert "bob" not in store
    assert store.stats.entry_problems == {"cell_over_rule": 1, "epoch_ahead": 1}
    store.acquire("alice", 1, NOW + 1.0)  # the next window: alice is free again
    assert store.view("alice", NOW + 1.0).tokens == 9


def test_window_refund_is_capped_by_own_cell() -> None:
    store = WindowStore(WindowPolicy(limit=10, window=60.0), "me", sliding=False)
    assert store.acquire("alice", 3, NOW) >= 0
    assert store.refund("alice", 100, NOW) == 3
    (delta,) = store.flush(NOW)
    assert all(e.n <= e.p for e in delta.entries)
