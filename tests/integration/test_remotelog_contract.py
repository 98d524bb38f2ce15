"""One RemoteLog contract, run against the in-memory fake and real (mirrored-like) topics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Protocol

import pytest
from aiokafka import AIOKafkaProducer

from service.kafka.topics import ensure_topic
from service.regions import TopicSelector
from service.replication.remotelog import KafkaRemoteLog, RemoteLog, RemoteRecord
from service.replication.statelog import LogRecord
from service.testing import MemoryLog, MemoryRemoteLog
from tests.service_helpers import unique_topic

PARTITIONS = 2
STAMP_MS = 1_790_000_000_000  # a source broker's append time, kept by the mirror


class Backend(Protocol):
    """Mirrored topics (as MirrorMaker makes them) and a started reader of them."""

    @property
    def reader(self) -> RemoteLog: ...

    async def mirror(self, topic: str) -> None: ...

    async def write(self, topic: str, partition: int, key: bytes, stamp_ms: int) -> None: ...


class MemoryBackend:
    def __init__(self) -> None:
        self.memory = MemoryRemoteLog()

    @property
    def reader(self) -> RemoteLog:
        return self.memory

    async def mirror(self, topic: str) -> None:
        self.memory.mirrored[topic] = MemoryLog(PARTITIONS)

    async def write(self, topic: str, partition: int, key: bytes, stamp_ms: int) -> None:
        records = self.memory.mirrored[topic].partitions[partition]
        records.append(LogRecord(key, b"{}", partition, len(records), stamp_ms))


class KafkaBackend:
    def __init__(self, bootstrap: str, producer: AIOKafkaProducer, reader: KafkaRemoteLog):
        self.bootstrap = bootstrap
        self.producer = producer
        self.kafka = reader

    @property
    def reader(self) -> RemoteLog:
        return self.kafka

    async def mirror(self, topic: str) -> None:
        # What MirrorMaker creates: the source's compaction, not its LogAppendTime.
        await ensure_topic(self.bootstrap, topic, PARTITIONS, {"cleanup.policy": "compact"})

    async def write(self, topic: str, partition: int, key: bytes, stamp_ms: int) -> None:
        await self.producer.send_and_wait(
            topic, b"{}", key=key, partition=partition, timestamp_ms=stamp_ms
        )


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Backend, str]]:
    local = unique_topic("remote")
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            backend: Backend = MemoryBackend()
        else:
            bootstrap: str = request.getfixturevalue("kafka_bootstrap")
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
            await producer.start()
            stack.push_async_callback(producer.stop)
            selector = TopicSelector.parse(None, local, "here")
            backend = KafkaBackend(bootstrap, producer, KafkaRemoteLog(bootstrap, selector, "rc"))
        await backend.reader.start()
        stack.push_async_callback(backend.reader.stop)
        yield backend, local


async def read_all(
    reader: RemoteLog, topics: list[str], within: float = 15.0
) -> list[RemoteRecord]:
    ends = await reader.end_offsets(topics)
    out: list[RemoteRecord] = []
    deadline = time.monotonic() + within
    while True:
        positions = await reader.positions(topics)
        if all(positions.get(tp, 0) >= end for tp, end in ends.items()):
            return out
        assert time.monotonic() < deadline, "the remote topics were not read to their end"
        out.extend(await reader.fetch(0.2, 1000))


async def test_topics_are_found_read_from_the_beginning_with_their_source_stamps(
    backend: tuple[Backend, str],
) -> None:
    mirror, local = backend
    first = f"eu.{local}"
    await mirror.mirror(first)
    await mirror.write(first, 0, b"k0", STAMP_MS)
    await mirror.write(first, 1, b"k1", STAMP_MS + 5)
    assert first in await mirror.reader.discover()
    assert first in mirror.reader.topics
    records = await read_all(mirror.reader, [first])
    assert sorted((r.topic, r.record.key, r.record.timestamp_ms) for r in records) == [
        (first, b"k0", STAMP_MS),
        (first, b"k1", STAMP_MS + 5),
    ]
    assert await mirror.reader.discover() == []  # found once

    # A region that appears later is read from its beginning; the first keeps its place.
    second = f"us.{local}"
    await mirror.mirror(second)
    await mirror.write(second, 1, b"u1", STAMP_MS + 9)
    await mirror.write(first, 0, b"k2", STAMP_MS + 10)
    assert await mirror.reader.discover() == [second]
    records = await read_all(mirror.reader, [first, second])
    assert sorted((r.topic, r.record.key) for r in records) == [(first, b"k2"), (second, b"u1")]
    ends = await mirror.reader.end_offsets([first, second])
    assert ends == {(first, 0): 2, (first, 1): 1, (second, 0): 0, (second, 1): 1}


@pytest.mark.integration
async def test_a_copy_that_restamps_records_is_flagged(kafka_bootstrap: str) -> None:
    local = unique_topic("remote")
    copy = f"eu.{local}"
    await ensure_topic(kafka_bootstrap, copy, 1, {"message.timestamp.type": "LogAppendTime"})
    reader = KafkaRemoteLog(kafka_bootstrap, TopicSelector.parse(None, local, "here"), "rs")
    await reader.start()
    try:
        assert await reader.discover() == [copy]
        assert reader.restamped == {copy}
    finally:
        await reader.stop()
