"""The state topic against a real broker: creation, verification, user partitioning, read-to-end."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service.errors import TopicConfigMismatch
from service.kafka.topics import admin_client, describe_topic, describe_topic_config, ensure_topic
from service.replication.codec import key_record_key, murmur2, partition_for_user
from service.replication.topic import DEFAULT_PARTITIONS, STATE_TOPIC_CONFIG, ensure_state_topic

pytestmark = pytest.mark.integration


def unique_topic(label: str) -> str:
    return f"test.{label}.{uuid.uuid4().hex[:12]}"


async def test_creates_the_compacted_state_topic_as_configured(kafka_bootstrap: str) -> None:
    name = unique_topic("create")
    await ensure_state_topic(kafka_bootstrap, name)

    held = await describe_topic_config(kafka_bootstrap, name)
    for key, value in STATE_TOPIC_CONFIG.items():
        assert held[key] == value, key
    assert held["cleanup.policy"] == "compact"
    description = await describe_topic(kafka_bootstrap, name)
    assert description is not None
    assert description.partitions == DEFAULT_PARTITIONS == 12


async def test_second_ensure_is_idempotent(kafka_bootstrap: str) -> None:
    name = unique_topic("idempotent")
    await ensure_state_topic(kafka_bootstrap, name)
    before = await describe_topic(kafka_bootstrap, name)

    await ensure_state_topic(kafka_bootstrap, name)
    await ensure_topic(
        kafka_bootstrap, name, DEFAULT_PARTITIONS, {"min.cleanable.dirty.ratio": "0.10"}
    )

    assert await describe_topic(kafka_bootstrap, name) == before


async def test_concurrent_ensures_agree(kafka_bootstrap: str) -> None:
    name = unique_topic("race")
    await asyncio.gather(*(ensure_state_topic(kafka_bootstrap, name) for _ in range(3)))
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
    await ensure_state_topic(kafka_bootstrap, name, partitions=3)

    with pytest.raises(TopicConfigMismatch, match=r"partitions is 3, expected 12") as caught:
        await ensure_state_topic(kafka_bootstrap, name)
    assert name in str(caught.value)


async def test_different_config_is_a_clear_mismatch(kafka_bootstrap: str) -> None:
    name = unique_topic("config")
    await ensure_topic(
        kafka_bootstrap,
        name,
        DEFAULT_PARTITIONS,
        {**STATE_TOPIC_CONFIG, "cleanup.policy": "delete"},
    )

    with pytest.raises(TopicConfigMismatch) as caught:
        await ensure_state_topic(kafka_bootstrap, name)
    message = str(caught.value)
    assert "cleanup.policy is 'delete', expected 'compact'" in message
    assert "partitions" not in message


async def test_a_users_records_go_where_kafkas_partitioner_puts_the_user_id(
    kafka_bootstrap: str,
) -> None:
    name = unique_topic("partitioning")
    await ensure_state_topic(kafka_bootstrap, name)
    users = [f"user-{i}" for i in range(40)] + ["ünïcødé"]
    replicas = ["node-a", "node-b", "node-c"]
    produced: dict[bytes, bytes] = {}

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for user in users:
            # Kafka's own default partitioner, given the user id as the key, picks the
            # partition our codec computes for every record of that user.
            metadata = await producer.send_and_wait(name, value=b"probe", key=user.encode())
            expected = (murmur2(user.encode()) & 0x7FFFFFFF) % DEFAULT_PARTITIONS
            assert metadata.partition == expected == partition_for_user(user, DEFAULT_PARTITIONS)
            produced[user.encode()] = b"probe"
        for round_ in range(2):  # the second round supersedes the first: compaction fodder
            for user in users:
                for replica in replicas:
                    key = key_record_key("default", user, replica)
                    value = f"{round_}".encode()
                    partition = partition_for_user(user, DEFAULT_PARTITIONS)
                    await producer.send_and_wait(name, value=value, key=key, partition=partition)
                    produced[key] = value
    finally:
        await producer.stop()
    assert len({partition_for_user(user, DEFAULT_PARTITIONS) for user in users}) > 1

    latest = await read_to_end(kafka_bootstrap, name, wait_s=60.0)
    assert latest == produced


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
