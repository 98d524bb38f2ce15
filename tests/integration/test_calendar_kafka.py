"""A monthly quota kept across a restart through a real Kafka topic: the node after the
restart (a new incarnation) reads the month's consumption from the compacted topic and
enforces what is left, with the reset at the start of the next UTC month."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.bootstrap import build_node
from service.clock import ORIGIN
from service.node import Node
from tests.service_helpers import clean_env, kafka_settings, unique_topic

pytestmark = pytest.mark.integration

RULES = """
rules:
  - {name: monthly, algorithm: calendar, period: month, limit: 10}
"""


def next_month(now: datetime) -> datetime:
    """The first instant of the UTC month after `now`."""
    return (
        now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + timedelta(days=32)
    ).replace(day=1)


async def started(bootstrap: str, topic: str, node_id: str, rules: Path) -> Node:
    node = build_node(kafka_settings(bootstrap, topic, node_id, rules=str(rules)))
    await node.start()
    await node.wait_ready(30)
    return node


async def test_a_restarted_node_enforces_the_rest_of_the_month(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env(monkeypatch)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    topic = unique_topic("calendar")
    first = await started(kafka_bootstrap, topic, "cal", rules)
    try:
        monthly = first.rules.get("monthly")
        wall = datetime.fromtimestamp(first.clock() + ORIGIN, UTC)
        if next_month(wall) - wall < timedelta(minutes=2):
            pytest.skip("too close to a month end for both nodes to decide in one month")
        assert all(first.decide("alice", 3, monthly).allowed for _ in range(2))  # 6 of 10
    finally:
        await first.stop()  # the final flush writes its key records

    # The same node id again: a new incarnation, which knows the month only from the topic.
    second = await started(kafka_bootstrap, topic, "cal", rules)
    try:
        assert second.replica != first.replica
        monthly = second.rules.get("monthly")
        assert second.engine.view("alice", monthly).consumed == 6
        assert [second.decide("alice", 2, monthly).allowed for _ in range(3)] == [
            True,
            True,
            False,
        ]
        denied = second.decide("alice", 1, monthly)
        now = second.clock()
        expected = next_month(datetime.fromtimestamp(now + ORIGIN, UTC)).timestamp() - ORIGIN - now
        assert not denied.allowed
        assert denied.retry_after_s == pytest.approx(expected, abs=1e-3)
        assert second.decide("bob", 10, monthly).allowed  # per key
    finally:
        await second.stop()
