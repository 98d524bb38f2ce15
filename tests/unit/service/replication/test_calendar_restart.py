"""A monthly quota outlives its nodes: a node started mid-month reads the month's
consumption from the key records of the compacted topic and enforces the remainder; the
quota resets at the month boundary; silent writers' records go once their month is over."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.clock import ORIGIN
from service.node import Node
from service.replication import codec
from service.rules.model import Rule
from service.testing import ManualClock, MemoryLog
from tests.service_helpers import clean_env, memory_node, wait_for

OURS = """
rules:
  - {name: monthly, algorithm: calendar, period: month, limit: 10}
"""
ENVOY = """
domain: api
descriptors:
  - key: plan
    rate_limit: {unit: month, requests_per_unit: 10}
"""
EXPIRE_S = 600.0


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


def at(text: str) -> float:
    """Cluster seconds of an ISO UTC time."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() - ORIGIN


def live_key_writers(log: MemoryLog, user: str) -> set[str]:
    """Writers of live key records of `user` (what compaction keeps)."""
    latest: dict[bytes, bytes | None] = {}
    for partition in log.partitions:
        for record in partition:
            assert record.key is not None
            latest[record.key] = record.value
    out = set()
    for key, value in latest.items():
        parts = key.decode().split(codec.SEP)
        if value is not None and len(parts) == 3 and parts[0] == user:
            out.add(parts[2])
    return out


async def started(log: MemoryLog, clock: ManualClock, node_id: str, rules: Path) -> Node:
    node = memory_node(log, clock, node_id, rules=str(rules), expire_writers_s=EXPIRE_S)
    await node.start()
    await node.wait_ready(5)
    return node


def the_rule(node: Node) -> Rule:
    [rule] = node.rules.rules
    assert rule.algorithm == "calendar"
    assert rule.period == "month"
    return rule


@pytest.mark.parametrize("document", [OURS, ENVOY], ids=["rules", "envoy"])
async def test_a_node_started_mid_month_enforces_the_rest_of_the_quota(
    tmp_path: Path, document: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(document, encoding="utf-8")
    clock = ManualClock(at("2028-02-10T12:00:00"))
    log = MemoryLog(4, broker_clock=clock)

    first = await started(log, clock, "n1", rules)
    try:
        rule = the_rule(first)
        assert all(first.decide("alice", 2, rule).allowed for _ in range(3))  # 6 of 10
    finally:
        await first.stop()  # the final flush writes its key records
    assert live_key_writers(log, "alice") == {first.replica}

    # Days later (n1's writer long silent), still February: a new node on the same topic.
    clock.t = at("2028-02-29T23:59:50")
    second = await started(log, clock, "n2", rules)
    try:
        rule = the_rule(second)
        assert second.engine.view("alice", rule).consumed == 6
        assert [second.decide("alice", 1, rule).allowed for _ in range(5)] == [True] * 4 + [False]
        denied = second.decide("alice", 1, rule)
        assert not denied.allowed
        assert denied.retry_after_s == pytest.approx(10.0, abs=1e-6)  # to March 1st
        # The silent writer's records still matter this month: never expired.
        assert second.replicator is not None
        assert first.replica in second.replicator._silent
        for _ in range(3):
            await second.replicator.flush()
        assert first.replica in live_key_writers(log, "alice")

        clock.t = at("2028-03-01T00:00:00")
        assert [second.decide("alice", 5, rule).allowed for _ in range(3)] == [True, True, False]
    finally:
        await second.stop()

    # Two months on, a third node finds the February records settled and expires them.
    clock.t = at("2028-05-01T00:00:00")
    third = await started(log, clock, "n3", rules)
    try:
        rule = the_rule(third)
        assert third.decide("alice", 10, rule).allowed
        await wait_for(
            lambda: first.replica not in live_key_writers(log, "alice"),
            5,
            what="February's records expired",
        )
    finally:
        await third.stop()
