"""One replica of the CRDT bucket is exactly a token bucket (GCRA), epochs and GC included."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from crdt.policy import BucketPolicy, SyncTiming
from crdt.store import BucketStore
from tests.strategies import (
    Cluster,
    ExactBucket,
    Limit,
    Net,
    exact_seconds,
    limits,
    scaled,
    seconds,
    timings,
    traffic,
)


def _close(a: float, b: float, capacity: int) -> bool:
    return abs(a - b) <= 1e-6 * max(1, capacity)


@scaled(1.0)
@given(
    limits,
    timings,
    st.data(),
    st.sampled_from([5, 50, 250]),
    st.booleans(),
)
def test_single_node_equals_exact_token_bucket(
    limit: Limit, timing: SyncTiming, data: st.DataObject, flush_ms: int, sweep: bool
) -> None:
    """N=1: every decision and every returned token count is the exact GCRA's, with
    flushes, epoch rolls, sealing and idle deletion running in between."""
    ops = data.draw(traffic(nodes=1, max_cost=limit.capacity + 2, max_ops=60, refunds=True))
    cluster = Cluster(limit, timing, nodes=1, sweep=sweep)
    cluster.run(ops, Net(flush_ms=flush_ms))
    exact = {key: ExactBucket(limit.rate, limit.capacity) for key in "abc"}
    for decision in cluster.decisions:
        op = decision.op
        bucket = exact[op.key]
        if op.cost < 0:
            assert decision.result <= -op.cost
            bucket.refund(int(decision.result))
            continue
        expected = bucket.acquire(op.cost, exact_seconds(op.t_ms))
        admitted = expected >= 0 and op.cost <= limit.capacity
        assert (decision.result >= 0) == admitted, (op, decision.result, float(expected))
        assert _close(
            decision.result,
            max(float(expected), 0.0) if admitted else float(expected),
            limit.capacity,
        )
    store = cluster.stores[0]
    end = cluster.end_ms
    for key, bucket in exact.items():
        view = store.view(key, seconds(end))
        assert _close(view.tokens, float(bucket.tokens(exact_seconds(end))), limit.capacity)


@scaled(1.0)
@given(limits, st.data())
def test_single_node_matches_the_reference_bucket_module(limit: Limit, data: st.DataObject) -> None:
    """crdt.reference.ReferenceBucket (the simulator's yardstick) agrees with the store."""
    from crdt.reference import ReferenceBucket

    ops = data.draw(traffic(nodes=1, max_cost=limit.capacity + 1, max_ops=60))
    store = BucketStore(limit.policy, "r0")
    refs = {key: ReferenceBucket(limit.policy, seconds(0)) for key in "abc"}
    for op in ops:
        now = seconds(op.t_ms)
        assert (store.acquire(op.key, op.cost, now) >= 0) == refs[op.key].acquire(op.cost, now)


@given(
    st.floats(1e-3, 1e12),
    st.integers(1, 10**6),
    st.lists(st.floats(0, 50), max_size=5),
    st.integers(1, 1000),
)
def test_a_cost_above_capacity_is_always_denied(
    rate: float, capacity: int, warmup: list[float], extra: int
) -> None:
    """Whatever the rate (EPS_TIME * rate can exceed a token) and the key's history."""
    assume(capacity / rate < 1e5)  # keep times where float seconds are precise
    store = BucketStore(BucketPolicy(rate, capacity), "r0")
    now = 100.0
    assert store.acquire("fresh", capacity + extra, now) < 0
    for dt in warmup:
        now += dt
        store.acquire("k", 1, now)
    now += 10 * capacity / rate + 1.0  # the bucket is full again
    assert store.acquire("k", capacity + extra, now) < 0
    assert store.acquire("k", capacity, now) >= 0


def test_high_rate_example_cost_above_capacity() -> None:
    """Found by the property above: with rate 1e8 the 1e-7 s admission tolerance is 10
    tokens, and a tracked key used to admit capacity + 1."""
    store = BucketStore(BucketPolicy(1e8, 1000), "r0")
    assert store.acquire("k", 1, 5.0) >= 0
    assert store.acquire("k", 1001, 100.0) < 0


@given(limits)
def test_exactly_capacity_requests_fit_a_full_bucket(limit: Limit) -> None:
    store = BucketStore(limit.policy, "r0")
    results = [store.acquire("k", 1, 1234.5) for _ in range(limit.capacity + 1)]
    assert all(r >= 0 for r in results[:-1])
    assert results[-1] < 0
    assert results[-2] == pytest.approx(0.0, abs=1e-6)
    assert results[-1] == pytest.approx(-1.0, abs=1e-6)


def test_returned_value_is_tokens_left_or_minus_shortfall() -> None:
    store = BucketStore(BucketPolicy(2.0, 10), "r0")
    assert store.acquire("k", 4, 10.0) == pytest.approx(6.0)
    assert store.acquire("k", 8, 10.0) == pytest.approx(-2.0)  # holds 6, lacks 2
    assert store.acquire("k", 6, 10.0) == pytest.approx(0.0)
    assert store.acquire("k", 1, 10.25) == pytest.approx(-0.5)  # refilled half a token
    assert store.acquire("k", 1, 10.5) == pytest.approx(0.0)
    view = store.view("k", 10.5)
    assert view.tokens == pytest.approx(0.0)
    assert view.tat == pytest.approx(15.5)
    assert view.consumed == 11
    assert view.contributions == {"r0": 11}


def test_refund_gives_back_at_most_what_was_admitted() -> None:
    store = BucketStore(BucketPolicy(1.0, 5), "r0")
    assert store.acquire("k", 5, 10.0) == pytest.approx(0.0)
    assert store.refund("k", 2, 10.0) == 2
    assert store.view("k", 10.0).tokens == pytest.approx(2.0)
    assert store.refund("k", 10, 10.0) == 3  # only the 3 still admitted
    assert store.view("k", 10.0).tokens == pytest.approx(5.0)
    assert store.acquire("k", 6, 10.0) < 0
    assert store.acquire("k", 5, 10.0) == pytest.approx(0.0)
    assert store.view("k", 10.0).contributions == {"r0": 5}
    assert store.refund("untracked", 3, 10.0) == 0  # a full bucket stays full
    assert "untracked" not in store


@given(limits, timings, st.data())
def test_view_consumed_is_admitted_minus_refunded(
    limit: Limit, timing: SyncTiming, data: st.DataObject
) -> None:
    ops = data.draw(
        traffic(nodes=1, max_cost=limit.capacity, long_gaps=False, refunds=True, max_gap_ms=2000)
    )
    cluster = Cluster(limit, timing, nodes=1, sweep=False)
    cluster.run(ops, Net(flush_ms=50))
    store = cluster.stores[0]
    # Refunds of an untracked key (never admitted, never deleted: no sweeps) are no-ops.
    consumed: dict[str, int] = {}
    for d in cluster.decisions:
        if d.op.cost > 0 and d.result >= 0:
            consumed[d.op.key] = consumed.get(d.op.key, 0) + d.op.cost
        elif d.op.cost < 0 and d.op.key in consumed:
            consumed[d.op.key] -= int(d.result)  # what the refund gave back
    assert sorted(store.keys()) == sorted(consumed)
    for key, total in consumed.items():
        view = store.view(key, cluster.final_seconds())
        assert view.consumed == total
        assert view.contributions == ({"r0": total} if total else {})


@given(limits, timings, st.data())
def test_sweeping_keeps_at_most_the_unsealed_epochs(
    limit: Limit, timing: SyncTiming, data: st.DataObject
) -> None:
    ops = data.draw(traffic(nodes=1, max_cost=limit.capacity, long_gaps=False))
    cluster = Cluster(limit, timing, nodes=1)
    cluster.run(ops, Net(flush_ms=20))
    store = cluster.stores[0]
    now = cluster.final_seconds()
    store.sweep(now)
    span = timing.seal_after / timing.epoch + 3
    for key in list(store.keys()):
        assert store.view(key, now).open_epochs <= span
    # Far in the future every bucket is full and every epoch sealed: nothing is left.
    later = now + limit.capacity * float(1 / limit.rate) + timing.seal_after + 2 * timing.epoch
    store.sweep(later)
    assert len(store) == 0
    assert store.stats.deleted_idle >= 1


def test_untracked_key_reads_as_a_full_bucket() -> None:
    store = BucketStore(BucketPolicy(1.0, 7), "r0")
    view = store.view("nobody", 5.0)
    assert view.tokens == 7.0
    assert view.tat == -math.inf
    assert view.consumed == 0
    assert view.contributions == {}
    assert view.open_epochs == 0
