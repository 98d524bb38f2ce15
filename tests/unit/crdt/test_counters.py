"""GCounter and PNCounter are join-semilattices, and deltas carry exactly the join."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.counters import GCounter, PNCounter
from crdt.errors import InvalidParameter

replicas = st.sampled_from(["a", "b", "c", "d"])
cells = st.dictionaries(replicas, st.integers(0, 10**6), max_size=4)
gcounters = st.builds(GCounter, cells)
pncounters = st.builds(PNCounter, gcounters, gcounters)


@given(gcounters, gcounters)
def test_gcounter_merge_is_commutative(a: GCounter, b: GCounter) -> None:
    assert a.merge(b) == b.merge(a)


@given(gcounters, gcounters, gcounters)
def test_gcounter_merge_is_associative(a: GCounter, b: GCounter, c: GCounter) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(gcounters)
def test_gcounter_merge_is_idempotent(a: GCounter) -> None:
    assert a.merge(a) == a


@given(gcounters, gcounters)
def test_gcounter_merge_is_inflationary_and_least(a: GCounter, b: GCounter) -> None:
    joined = a.merge(b)
    assert a <= joined
    assert b <= joined
    assert joined.value >= max(a.value, b.value)
    # Least upper bound: every cell is one of the two inputs' cells.
    for r in joined:
        assert joined.cell(r) == max(a.cell(r), b.cell(r))


@given(gcounters, gcounters)
def test_gcounter_merge_leaves_inputs_alone(a: GCounter, b: GCounter) -> None:
    before_a, before_b = a.cells(), b.cells()
    a.merge(b)
    assert a.cells() == before_a
    assert b.cells() == before_b


@given(gcounters, st.lists(st.tuples(replicas, st.integers(0, 1000)), max_size=10))
def test_gcounter_delta_since_then_apply_equals_full_merge(
    base: GCounter, increments: list[tuple[str, int]]
) -> None:
    """A replica that grew ships delta_since(what the peer saw); the peer ends equal."""
    writer = GCounter(base.cells())
    peer = GCounter(base.cells())
    seen = writer.cells()
    for r, amount in increments:
        writer.increment(r, amount)
    delta = writer.delta_since(seen)
    assert all(v > seen.get(r, 0) for r, v in delta.items())  # only dirty cells
    peer.apply(delta)
    assert peer == writer
    assert peer == base.merge(writer)
    peer.apply(delta)  # at-least-once delivery
    assert peer == writer


@given(gcounters, gcounters)
def test_gcounter_apply_of_a_stale_delta_changes_nothing(a: GCounter, b: GCounter) -> None:
    joined = a.merge(b)
    stale = a.cells()
    joined.apply(stale)
    assert joined == a.merge(b)


@given(st.lists(st.tuples(replicas, st.integers(0, 100)), max_size=20))
def test_gcounter_value_is_sum_of_increments(increments: list[tuple[str, int]]) -> None:
    counter = GCounter()
    for r, amount in increments:
        counter.increment(r, amount)
    assert counter.value == sum(amount for _, amount in increments)
    assert all(v > 0 for v in counter.cells().values())  # zero cells are not stored


@given(pncounters, pncounters)
def test_pncounter_merge_is_commutative(a: PNCounter, b: PNCounter) -> None:
    assert a.merge(b) == b.merge(a)


@given(pncounters, pncounters, pncounters)
def test_pncounter_merge_is_associative(a: PNCounter, b: PNCounter, c: PNCounter) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(pncounters)
def test_pncounter_merge_is_idempotent(a: PNCounter) -> None:
    assert a.merge(a) == a


@given(pncounters, pncounters)
def test_pncounter_merge_is_inflationary(a: PNCounter, b: PNCounter) -> None:
    joined = a.merge(b)
    assert a.p <= joined.p
    assert a.n <= joined.n
    assert b.p <= joined.p
    assert b.n <= joined.n


@given(pncounters, pncounters)
def test_pncounter_apply_equals_merge(a: PNCounter, b: PNCounter) -> None:
    target = PNCounter(GCounter(a.p.cells()), GCounter(a.n.cells()))
    target.apply(b.p.cells(), b.n.cells())
    assert target == a.merge(b)


@given(st.lists(st.tuples(replicas, st.integers(0, 100), st.booleans()), max_size=20))
def test_pncounter_value_and_contributions(ops: list[tuple[str, int, bool]]) -> None:
    counter = PNCounter()
    expected: dict[str, int] = {}
    for r, amount, refund in ops:
        if refund:
            counter.decrement(r, amount)
        else:
            counter.increment(r, amount)
        expected[r] = expected.get(r, 0) + (-amount if refund else amount)
    assert counter.value == sum(expected.values())
    contributions = counter.contributions()
    assert sum(contributions.values()) == counter.value
    for r, v in contributions.items():
        assert v == expected[r]


@pytest.mark.parametrize("amount", [-1, 1.5, 2.0, True, None, "3", float("nan")])
def test_invalid_amounts_raise(amount: object) -> None:
    counter = GCounter()
    with pytest.raises(InvalidParameter):
        counter.increment("a", amount)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        counter.apply({"a": amount})  # type: ignore[dict-item]
    with pytest.raises(InvalidParameter):
        GCounter({"a": amount})  # type: ignore[dict-item]
    with pytest.raises(InvalidParameter):
        PNCounter().decrement("a", amount)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integers"):  # InvalidParameter is a ValueError
        counter.increment("a", amount)  # type: ignore[arg-type]
    assert counter.value == 0


def test_counters_are_unhashable_and_have_a_repr() -> None:
    g = GCounter({"a": 2})
    with pytest.raises(TypeError):
        hash(g)
    with pytest.raises(TypeError):
        hash(PNCounter())
    assert repr(g) == "GCounter({'a': 2})"
    assert "PNCounter" in repr(PNCounter(g))
    assert g != {"a": 2}
    assert PNCounter() != 0
