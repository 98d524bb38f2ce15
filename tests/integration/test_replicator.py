"""Replication through a real Kafka topic: what lands on the topic, shutdown, restarts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.bootstrap import build_node
from service.node import Node
from service.replication import codec
from service.replication.codec import partition_for_user
from tests.service_helpers import clean_env, kafka_settings, unique_topic, wait_for

pytestmark = pytest.mark.integration

BURST = 20
RATE = 0.05  # refill is negligible over a test
PARTITIONS = 6

StartNode = Callable[..., Awaitable[Node]]


@pytest.fixture
def topic() -> str:
    return unique_topic("replicator")


@pytest.fixture
async def start(
    kafka_bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartNode]:
    """Start ready nodes on one fresh topic; every one still running is stopped at the end."""
    clean_env(monkeypatch)
    async with AsyncExitStack() as stack:

        async def start_node(node_id: str, **overrides: Any) -> Node:
            values = {"rate": RATE, "burst": BURST, "partitions": PARTITIONS, **overrides}
            node = build_node(kafka_settings(kafka_bootstrap, topic, node_id, **values))
            await node.start()
            stack.push_async_callback(node.stop)
            await node.wait_ready(30)
            return node

        yield start_node


def admit(node: Node, user: str, times: int) -> int:
    return sum(node.decide(user, 1, node.rules.default).allowed for _ in range(times))


def consumed(node: Node, user: str) -> int:
    return node.engine.view(user, node.rules.default).consumed


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record on the topic now, read with a plain consumer."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[Any] = []

        async def at_end() -> bool:
            for tp, end in ends.items():
                if await consumer.position(tp) < end:
                    batches = await consumer.getmany(timeout_ms=200)
                    out.extend(r for records in batches.values() for r in records)
                    return False
            return True

        await wait_for(at_end, within=15, what="the whole topic")
        return out
    finally:
        await consumer.stop()


async def test_records_on_the_topic_decode_and_are_partitioned_by_user(
    start: StartNode, kafka_bootstrap: str, topic: str
) -> None:
    a = await start("a", snapshot_ms=50)
    users = {f"user-{i}": i + 1 for i in range(10)}
    for user, times in users.items():
        assert admit(a, user, times) == times
    await wait_for(
        lambda: (
            (
                a.metrics.registry.get_sample_value(
                    "ratelimiter_records_produced_total", {"kind": "key"}
                )
                or 0
            )
            >= len(users)
        ),
        within=10,
        what="a snapshot of every user",
    )

    records = await read_topic(kafka_bootstrap, topic)

    key_records: dict[str, int] = {}
    batch_users: set[str] = set()
    for record in records:
        decoded = codec.decode(record.value)
        if record.offset == 0 and record.partition == 0 and not decoded.items:
            continue  # the clock probe: an empty batch record written before bootstrap
        assert decoded.items, record
        if record.key.startswith(codec.SEP.encode()):
            assert record.key == codec.batch_record_key(a.replica, record.partition)
            batch_users.update(delta.key for _, delta in decoded.items)
        else:
            [(rule, delta)] = decoded.items
            assert record.key == codec.key_record_key(rule, delta.key, a.replica)
            assert rule == "default"
            key_records[delta.key] = sum(e.p - e.n for e in delta.entries)
        for _, delta in decoded.items:
            assert delta.replica == a.replica
            assert record.partition == partition_for_user(delta.key, PARTITIONS), delta.key
    assert batch_users == set(users)
    assert key_records == users


async def test_peers_converge_through_kafka(start: StartNode) -> None:
    a, b = await start("a"), await start("b")

    assert admit(a, "alice", 12) == 12
    assert admit(b, "alice", 5) == 5
    await wait_for(
        lambda: consumed(a, "alice") == consumed(b, "alice") == 17, what="both to see 17"
    )

    assert a.engine.view("alice", a.rules.default).contributions == {
        a.replica: 12,
        b.replica: 5,
    }
    assert admit(a, "alice", 4) == 3  # 20 - 17
    await wait_for(lambda: consumed(b, "alice") == BURST, what="B to see the rest")
    assert admit(b, "alice", 1) == 0


async def test_stop_publishes_what_was_admitted(start: StartNode) -> None:
    a = await start("a", flush_ms=200, snapshot_ms=20_000)
    assert admit(a, "frank", 7) == 7
    # Nothing awaited since admitting: the flush loop has not taken these yet.
    assert a.engine.dirty_count() == 1
    await a.stop()

    c = await start("c")

    assert consumed(c, "frank") == 7
    assert c.engine.view("frank", c.rules.default).contributions == {a.replica: 7}


async def test_a_restarted_node_keeps_its_earlier_consumption(start: StartNode) -> None:
    first = await start("a")
    assert admit(first, "gina", BURST) == BURST
    await first.stop()

    again = await start("a")

    assert again.replica != first.replica  # a new incarnation, never a reused cell
    assert consumed(again, "gina") == BURST
    assert admit(again, "gina", 1) == 0
