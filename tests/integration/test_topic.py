"""The state topic against a real broker: creation, verification, user partitioning, read-to-end."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service.errors import TopicConfigMismatch
from service.partitioner import murmur2, partition_for_user, record_key, user_of, user_partitioner
from service.topic import (
    DEFAULT_PARTITIONS,
    STATE_TOPIC_CONFIG,
    admin_client,
    describe_topic,
    describe_topic_config,
    ensure_topic,
)

pytestmark = pytest.mark.integration


def unique_topic(label: str) -> str:
    return f"test.{label}.{uuid.uuid4().hex[:12]}"


async def test_creates_the_compacted_state_topic_as_configured(kafka_bootstrap: str) -> None:
    name = unique_topic("create")
    await ensure_topic(kafka_bootstrap, name)

    held = await describe_topic_config(kafka_bootstrap, name)
    for key, value in STATE_TOPIC_CONFIG.items():
        assert held[key] == value, key
    assert held["cleanup.policy"] == "compact"
    description = await describe_topic(kafka_bootstrap, name)
    assert description is not None
    assert description.partitions == DEFAULT_PARTITIONS == 12


async def test_second_ensure_is_idempotent(kafka_bootstrap: str) -> None:
    name = unique_topic("idempotent")
    await ensure_topic(kafka_bootstrap, name)
    before = await describe_topic(kafka_bootstrap, name)

    await ensure_topic(kafka_bootstrap, name)
    await ensure_topic(kafka_bootstrap, name, config={"min.cleanable.dirty.ratio": "0.10"})

    assert await describe_topic(kafka_bootstrap, name) == before


async def test_concurrent_ensures_agree(kafka_bootstrap: str) -> None:
    name = unique_topic("race")
    await asyncio.gather(*(ensure_topic(kafka_bootstrap, name) for _ in range(3)))
    description = await describe_topic(kafka_bootstrap, name)
    assert description is not None
    assert description.partitions == 12


async def test_missing_topic_is_described_as_none_and_not_created(kafka_bootstrap: str) -> None:
    name = unique_topic("missing")
    assert await describe_topic(kafka_bootstrap, name) is None
    async with admin_client(kafka_bootstrap) as admin:
        assert name not in await admin.list_topics()


async def test_different_partition_count_is_a_clear_mismatch(kafka_bootstrap: str) -> None:
    name = unique_topic("partitions")
    await ensure_topic(kafka_bootstrap, name, partitions=3)

    with pytest.raises(TopicConfigMismatch, match=r"partitions is 3, expected 12") as caught:
        await ensure_topic(kafka_bootstrap, name)
    assert name in str(caught.value)


async def test_different_config_is_a_clear_mismatch(kafka_bootstrap: str) -> None:
    name = unique_topic("config")
    await ensure_topic(
        kafka_bootstrap, name, config={**STATE_TOPIC_CONFIG, "cleanup.policy": "delete"}
    )

    with pytest.raises(TopicConfigMismatch) as caught:
        await ensure_topic(kafka_bootstrap, name)
    message = str(caught.value)
    assert "cleanup.policy is 'delete', expected 'compact'" in message
    assert "partitions" not in message


async def test_records_of_a_user_share_one_partition_and_are_all_read_back(
    kafka_bootstrap: str,
) -> None:
    name = unique_topic("partitioning")
    await ensure_topic(kafka_bootstrap, name)
    users = [f"user-{i}" for i in range(40)] + ["ünïcødé", ""]
    replicas = ["node-a", "node-b", "node-c"]
    produced: dict[bytes, bytes] = {}
    partitions_of: dict[str, set[int]] = {user: set() for user in users}

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, partitioner=user_partitioner, enable_idempotence=True
    )
    await producer.start()
    try:
        for round_ in range(2):  # the second round supersedes the first: compaction fodder
            for user in users:
                for replica in replicas:
                    key = record_key(user, replica)
                    value = f"{round_}".encode()
                    metadata = await producer.send_and_wait(name, value=value, key=key)
                    partitions_of[user].add(metadata.partition)
                    produced[key] = value
    finally:
        await producer.stop()

    for user, seen in partitions_of.items():
        expected = (murmur2(user.encode()) & 0x7FFFFFFF) % DEFAULT_PARTITIONS
        assert seen == {expected} == {partition_for_user(user, DEFAULT_PARTITIONS)}, user
    assert len({p for seen in partitions_of.values() for p in seen}) > 1

    latest = await read_to_end(kafka_bootstrap, name, wait_s=60.0)
    assert latest == produced
    assert {user_of(key) for key in latest} == set(users)


async def read_to_end(bootstrap: str, topic: str, wait_s: float) -> dict[bytes, bytes]:
    """Read every partition from the beginning to its end offset with no consumer group.

    Compares `position()` with `end_offsets()` rather than counting records, because
    compaction leaves offset gaps. Returns the last value read per key.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        description = await describe_topic(bootstrap, topic)
        assert description is not None
        partitions = [TopicPartition(topic, p) for p in range(description.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        latest: dict[bytes, bytes] = {}
        deadline = time.monotonic() + wait_s
        while not await _caught_up(consumer, ends):
            assert time.monotonic() < deadline, "did not reach the end offsets in time"
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    assert record.key is not None
                    latest[record.key] = record.value
        return latest
    finally:
        await consumer.stop()


async def _caught_up(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for partition, end in ends.items():
        if await consumer.position(partition) < end:
            return False
    return True
