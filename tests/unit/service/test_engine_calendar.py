"""Calendar quotas in the engine: decisions, exact Retry-After to the UTC boundary, headers,
request-given week and month limits, and one atomic decision with other limits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crdt.policy import SyncTiming
from service.clock import ORIGIN
from service.engine import Check, Engine
from service.http.headers import policy_header, ratelimit_headers
from service.rules.model import Rule, RuleSet, default_rule
from service.rules.override import override_rule, rule_of_override
from service.testing import ManualClock

MONTHLY = Rule.model_validate(
    {"name": "monthly", "algorithm": "calendar", "period": "month", "limit": 3}
)
PER_SECOND = Rule(name="burst", rate=10.0, burst=10)
RULES = RuleSet(default=default_rule("token_bucket", 10, 20, 1), rules=(MONTHLY, PER_SECOND))


def at(text: str) -> float:
    """Cluster seconds of an ISO UTC time."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() - ORIGIN


def engine(clock: ManualClock, replica: str = "me/1") -> Engine:
    return Engine(RULES, replica, clock, SyncTiming(1.0, 3.0), 1000)


def test_a_denial_on_feb_29_retries_at_march_1() -> None:
    clock = ManualClock(at("2028-02-03T10:00:00"))
    e = engine(clock)
    assert [e.decide("alice", 1, MONTHLY).allowed for _ in range(4)] == [True] * 3 + [False]
    clock.t = at("2028-02-29T23:59:59")
    denied = e.decide("alice", 1, MONTHLY)
    assert not denied.allowed
    assert denied.retry_after_s == pytest.approx(1.0, abs=1e-6)
    assert denied.reset_after_s == pytest.approx(1.0, abs=1e-6)
    headers = dict(ratelimit_headers(denied, policy_header(MONTHLY)))
    assert headers[b"retry-after"] == b"1"
    assert headers[b"ratelimit"] == b'"monthly";r=0;t=1'
    assert headers[b"ratelimit-policy"] == b'"monthly";q=3;w=2678400'
    clock.t = at("2028-03-01T00:00:00")
    admitted = e.decide("alice", 1, MONTHLY)
    assert admitted.allowed
    assert admitted.remaining == 2
    assert admitted.reset_after_s == pytest.approx(31 * 86_400, abs=1e-6)


def test_a_monthly_quota_and_a_bucket_decide_atomically() -> None:
    clock = ManualClock(at("2025-01-31T23:00:00"))
    e = engine(clock)
    both = [Check("alice", 1, MONTHLY), Check("alice", 1, PER_SECOND)]
    assert all(d.allowed for _ in range(3) for d in e.decide_all(both))
    out = e.decide_all(both)
    assert [d.allowed for d in out] == [False, True]  # the month denied: nothing taken
    assert e.view("alice", PER_SECOND).consumed == 3
    assert out[0].retry_after_s == pytest.approx(3600.0, abs=1e-6)


def test_week_and_month_overrides_are_calendar_quotas_shared_by_name() -> None:
    clock = ManualClock(at("2025-03-16T23:59:58"))  # a Sunday
    weekly = override_rule("week", 2)
    assert weekly.name == "override.week.2"
    assert (weekly.algorithm, weekly.period) == ("calendar", "week")
    assert rule_of_override("override.month.7") == override_rule("month", 7)
    assert rule_of_override("override.year.7") is None
    e, peer = engine(clock), engine(clock, "peer/1")
    assert peer.decide_all([Check("k", 2, override_rule("week", 2))])[0].allowed
    assert e.apply(peer.flush(clock()), clock()) == 0
    denied = e.decide_all([Check("k", 1, weekly)])[0]
    assert not denied.allowed
    assert denied.retry_after_s == pytest.approx(2.0, abs=1e-6)
    clock.t = at("2025-03-17T00:00:00")  # Monday
    assert e.decide_all([Check("k", 2, weekly)])[0].allowed
