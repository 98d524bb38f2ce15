"""The limiter factory and the retry/reset times reported for every decision."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.errors import InvalidParameter
from crdt.limiter import ALGORITHMS, Limiter, make_limiter, timing
from crdt.policy import BucketPolicy, SyncTiming, WindowPolicy
from crdt.store import BucketStore
from crdt.windows import WindowStore
from tests.strategies import Limit, limits, scaled


def test_make_limiter_builds_each_algorithm() -> None:
    custom = SyncTiming(epoch=0.5, seal_after=2.0)
    bucket = make_limiter("token_bucket", "n1/1", rate=5.0, burst=10, timing_=custom, max_keys=7)
    assert isinstance(bucket, BucketStore)
    assert bucket.policy == BucketPolicy(5.0, 10)
    assert bucket.timing == custom
    assert bucket.max_keys == 7
    assert bucket.replica == "n1/1"
    sliding = make_limiter("sliding_window", "n1/1", rate=5.0, burst=10, window=60.0)
    fixed = make_limiter("fixed_window", "n1/1", rate=5.0, burst=10, window=60.0)
    for store, is_sliding in ((sliding, True), (fixed, False)):
        assert isinstance(store, WindowStore)
        assert store.policy == WindowPolicy(10, 60.0)
        assert store.sliding is is_sliding
    assert set(ALGORITHMS) == {"token_bucket", "sliding_window", "fixed_window"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_limiter_speaks_the_port(algorithm: str) -> None:
    limiter: Limiter = make_limiter(algorithm, "r0", rate=1.0, burst=3)
    assert limiter.acquire("k", 2, 100.0) == 1.0
    assert limiter.dirty_count() == 1
    [delta] = limiter.flush(100.0)
    assert delta.key == "k"
    assert delta.replica == "r0"
    assert limiter.dirty_count() == 0
    assert limiter.delta_for("k", limiter.current_epoch) is not None
    assert limiter.delta_for("nobody", limiter.current_epoch) is None
    peer: Limiter = make_limiter(algorithm, "r1", rate=1.0, burst=3)
    peer.apply(delta, 100.0)
    assert peer.view("k", 100.0).contributions == {"r0": 2}
    assert peer.acquire("k", 2, 100.0) < 0
    limiter.refund("k", 2, 100.0)
    assert limiter.view("k", 100.0).tokens == pytest.approx(3.0)
    assert limiter.keys() == ["k"]
    assert len(limiter) == 1
    limiter.finish_bootstrap(100.0)
    assert limiter.bootstrapping is False
    assert limiter.stats.evicted_active == 0
    limiter.flush(100.0)
    assert limiter.sweep(1000.0) == 1
    assert len(limiter) == 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_flush_without_deltas_clears_marks_and_idle_agrees_with_the_sweep(
    algorithm: str,
) -> None:
    # A standalone node has no peers: it clears the marks (or no key would ever idle)
    # without building the deltas it would throw away.
    limiter: Limiter = make_limiter(algorithm, "r0", rate=1.0, burst=3)
    limiter.acquire("k", 2, 100.0)
    assert not limiter.idle("k", 1000.0), "marked: its change is not shipped yet"
    assert limiter.flush(100.0, deltas=False) == []
    assert limiter.dirty_count() == 0
    assert limiter.flush(100.0) == []
    assert limiter.idle("nobody", 100.0)
    assert not limiter.idle("k", 100.5), "still draining"
    assert limiter.idle("k", 1000.0)
    assert limiter.sweep(1000.0) == 1


@pytest.mark.parametrize("algorithm", ["leaky_bucket", "", "TOKEN_BUCKET"])
def test_unknown_algorithm_raises(algorithm: str) -> None:
    with pytest.raises(InvalidParameter, match="unknown algorithm") as info:
        make_limiter(algorithm, "r0", rate=1.0, burst=1)
    assert "token_bucket" in str(info.value)


def test_invalid_factory_parameters_raise() -> None:
    with pytest.raises(InvalidParameter):
        make_limiter("token_bucket", "r0", rate=0.0, burst=1)
    with pytest.raises(InvalidParameter):
        make_limiter("fixed_window", "r0", rate=1.0, burst=0)
    with pytest.raises(InvalidParameter):
        make_limiter("sliding_window", "r0", rate=1.0, burst=1, window=-1.0)


# -- retry_after and reset_after ------------------------------------------------------------


def test_bucket_timing_values() -> None:
    store = BucketStore(BucketPolicy(2.0, 10), "r0")
    result = store.acquire("k", 4, 100.0)  # 6 left
    assert timing(store, "k", result, 4, 100.0) == pytest.approx((0.0, 2.0))
    result = store.acquire("k", 8, 100.0)  # holds 6, lacks 2
    retry, reset = timing(store, "k", result, 8, 100.0)
    assert retry == pytest.approx(1.0)  # 2 tokens at 2/s
    assert reset == pytest.approx(2.0)  # 4 missing tokens
    result = store.acquire("k", 11, 100.0)
    assert timing(store, "k", result, 11, 100.0)[0] == math.inf


@scaled(1.0)
@given(
    limits,
    st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 30)), min_size=1, max_size=20),
    st.integers(1, 31),
)
def test_bucket_retry_after_is_exactly_when_the_request_would_pass(
    limit: Limit, history: list[tuple[int, int]], cost: int
) -> None:
    store = BucketStore(limit.policy, "r0")
    t_ms = 100_000
    for gap, c in history:
        t_ms += gap
        store.acquire("k", c, t_ms / 1000)
    now = t_ms / 1000
    result = store.acquire("k", cost, now)
    retry, reset = timing(store, "k", result, cost, now)
    assert reset >= 0.0
    # At now + reset the bucket is full again.
    assert store.view("k", now + reset).tokens == pytest.approx(limit.capacity, abs=1e-6)
    if result >= 0:
        assert retry == 0.0
    elif cost > limit.capacity:
        assert retry == math.inf
    else:
        assert retry > 0
        later = copy.deepcopy(store)
        assert later.acquire("k", cost, now + retry) >= 0
        sooner = copy.deepcopy(store)
        if retry > 1e-3:
            assert sooner.acquire("k", cost, now + retry - 1e-3) < 0


def test_fixed_window_timing_values() -> None:
    store = WindowStore(WindowPolicy(5, 10.0), "r0", sliding=False)
    result = store.acquire("k", 5, 102.5)
    assert timing(store, "k", result, 5, 102.5) == pytest.approx((0.0, 7.5))
    result = store.acquire("k", 1, 104.0)
    assert timing(store, "k", result, 1, 104.0) == pytest.approx((6.0, 6.0))
    assert store.acquire("k", 1, 110.0) >= 0  # retry_after later, it passes
    result = store.acquire("k", 6, 110.0)
    assert timing(store, "k", result, 6, 110.0)[0] == math.inf


@scaled(1.0)
@given(
    st.integers(1, 10),
    st.sampled_from([1.0, 2.0, 60.0]),
    st.lists(st.tuples(st.integers(0, 700), st.integers(1, 10)), min_size=1, max_size=20),
    st.integers(1, 10),
)
def test_sliding_window_retry_after_lets_the_request_pass(
    limit: int, window: float, history: list[tuple[int, int]], cost: int
) -> None:
    store = WindowStore(WindowPolicy(limit, window), "r0", sliding=True)
    t_ms = 100_000
    for gap, c in history:
        t_ms += gap
        store.acquire("k", c, t_ms / 1000)
    now = t_ms / 1000
    result = store.acquire("k", cost, now)
    retry, reset = timing(store, "k", result, cost, now)
    if result >= 0:
        assert retry == 0.0
        assert 0 < reset <= window
    elif cost > limit:
        assert retry == math.inf
    else:
        assert 0 < retry <= 2 * window
        assert window < reset <= 2 * window
        assert copy.deepcopy(store).acquire("k", cost, now + retry) >= 0
        # A sliding window is full again once the current and previous windows passed.
        assert store.view("k", now + reset).tokens == pytest.approx(limit)
