"""Several limits, one atomic decision: all admit and all are taken, or nothing is taken."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crdt.policy import SyncTiming
from service.engine import Check, Engine
from service.rules.model import Rule, RuleSet, default_rule
from service.rules.override import override_rule
from service.testing import ManualClock

USER = Rule(name="user", rate=1.0, burst=5)
ORG = Rule(name="org", rate=1.0, burst=8)
DAILY = Rule.model_validate(
    {"name": "daily", "algorithm": "fixed_window", "limit": 3, "window_s": 86_400.0}
)
SHADOW = Rule(name="soft", rate=1.0, burst=1, shadow=True)
RULES = RuleSet(default=default_rule("token_bucket", 10, 20, 1), rules=(USER, ORG, DAILY, SHADOW))


def engine(clock: ManualClock | None = None, replica: str = "me/1") -> Engine:
    return Engine(RULES, replica, clock or ManualClock(), SyncTiming(1.0, 3.0), 1000)


def consumed(e: Engine, key: str, rule: Rule) -> int:
    return e.view(key, rule).consumed


def test_all_admit_takes_from_every_limit() -> None:
    e = engine()
    out = e.decide_all([Check("alice", 2, USER), Check("acme", 2, ORG), Check("alice", 1, DAILY)])
    assert [d.allowed for d in out] == [True, True, True]
    assert [d.remaining for d in out] == [3, 6, 2]
    assert (consumed(e, "alice", USER), consumed(e, "acme", ORG)) == (2, 2)
    assert consumed(e, "alice", DAILY) == 1


def test_a_denial_takes_nothing_and_names_the_denying_limit() -> None:
    e = engine()
    for _ in range(3):
        assert all(d.allowed for d in e.decide_all([Check("bob", 1, DAILY)]))
    out = e.decide_all([Check("bob", 1, USER), Check("bob", 1, DAILY), Check("acme", 1, ORG)])
    assert [d.allowed for d in out] == [True, False, True]
    assert out[1].rule is DAILY
    assert out[1].retry_after_s > 0
    # Nothing was taken from the limits that admitted.
    assert consumed(e, "bob", USER) == 0
    assert consumed(e, "acme", ORG) == 0
    assert out[0].remaining == 5


def test_costs_on_the_same_limit_and_key_add_up() -> None:
    e = engine()
    out = e.decide_all([Check("carol", 3, USER), Check("carol", 3, USER)])
    assert not all(d.allowed for d in out)
    assert consumed(e, "carol", USER) == 0
    assert all(d.allowed for d in e.decide_all([Check("carol", 2, USER), Check("carol", 3, USER)]))
    assert consumed(e, "carol", USER) == 5


def test_cost_zero_only_looks() -> None:
    e = engine()
    out = e.decide_all([Check("dan", 0, USER), Check("dan", 0, DAILY)])
    assert [(d.allowed, d.remaining) for d in out] == [(True, 5), (True, 3)]
    assert consumed(e, "dan", USER) == 0
    e.decide_all([Check("dan", 5, USER)])
    # An empty bucket still answers a look with OK and nothing left (Envoy's hits_addend 0).
    assert [(d.allowed, d.remaining) for d in e.decide_all([Check("dan", 0, USER)])] == [(True, 0)]


def test_shadow_rules_never_deny_nor_block_the_others() -> None:
    e = engine()
    out = e.decide_all([Check("eve", 2, SHADOW), Check("eve", 1, USER)])
    assert [d.allowed for d in out] == [True, True]
    assert out[0].shadow_denied
    assert consumed(e, "eve", SHADOW) == 0
    assert consumed(e, "eve", USER) == 1


def test_overrides_are_limiters_named_by_their_limits() -> None:
    e = engine()
    rule = override_rule("minute", 2)
    assert rule.name == "override.minute.2"
    assert all(d.allowed for d in e.decide_all([Check("k", 2, rule)]))
    assert not e.decide_all([Check("k", 1, rule)])[0].allowed
    # A peer's records under the override's name are merged, not counted unknown.
    peer = engine(replica="peer/1")
    peer_rule = override_rule("minute", 2)
    peer.decide_all([Check("p", 1, peer_rule)])
    deltas = peer.flush(peer.clock())
    assert e.apply(deltas, e.clock()) == 0
    assert consumed(e, "p", rule) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(["u1", "u2"]), st.integers(0, 4), st.sampled_from([0, 1, 2])),
            min_size=1,
            max_size=4,
        ),
        min_size=1,
        max_size=12,
    )
)
def test_every_request_takes_all_its_costs_or_none(
    requests: list[list[tuple[str, int, int]]],
) -> None:
    rules = (USER, ORG, DAILY)
    clock = ManualClock()
    e = engine(clock)
    for request in requests:
        checks = [Check(key, cost, rules[r]) for key, cost, r in request]
        before = {(c.key, c.rule.name): consumed(e, c.key, c.rule) for c in checks}
        out = e.decide_all(checks)
        after = {(c.key, c.rule.name): consumed(e, c.key, c.rule) for c in checks}
        if all(d.allowed for d in out):
            for slot in before:
                cost = sum(c.cost for c in checks if (c.key, c.rule.name) == slot)
                assert after[slot] - before[slot] == cost
        else:
            assert after == before
            assert any(not d.allowed and c.cost > 0 for d, c in zip(out, checks, strict=True))
        clock.advance(0.25)
