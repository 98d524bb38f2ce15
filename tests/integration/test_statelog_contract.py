"""One StateLog contract, run against the in-memory fake and a real Kafka topic."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Protocol

import pytest

from service.clock import ORIGIN
from service.replication.statelog import (
    KafkaStateLog,
    LogRecord,
    OutRecord,
    PublishFailed,
    StateLog,
)
from service.replication.topic import ensure_state_topic
from service.testing import MemoryLog, MemoryStateLog
from tests.service_helpers import unique_topic

PARTITIONS = 3


class Backend(Protocol):
    """Makes started clients of one shared log (stopped when the test ends)."""

    async def client(self) -> StateLog: ...


class MemoryBackend:
    def __init__(self, stack: AsyncExitStack) -> None:
        # Stamped like a topic with LogAppendTime, on this machine's wall clock.
        self.log = MemoryLog(PARTITIONS, broker_clock=lambda: time.time() - ORIGIN)
        self.stack = stack

    async def client(self) -> StateLog:
        client = MemoryStateLog(self.log)
        await client.start()
        self.stack.push_async_callback(client.stop)
        return client


class KafkaBackend:
    def __init__(self, stack: AsyncExitStack, bootstrap: str, topic: str) -> None:
        self.stack = stack
        self.bootstrap = bootstrap
        self.topic = topic
        self.count = 0

    async def client(self) -> StateLog:
        self.count += 1
        client = KafkaStateLog(
            self.bootstrap, self.topic, PARTITIONS, client_id=f"contract-{self.count}"
        )
        await client.start()
        self.stack.push_async_callback(client.stop)
        return client


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            yield MemoryBackend(stack)
        else:
            bootstrap: str = request.getfixturevalue("kafka_bootstrap")
            topic = unique_topic("contract")
            await ensure_state_topic(bootstrap, topic, PARTITIONS)
            yield KafkaBackend(stack, bootstrap, topic)


async def read_to_end(log: StateLog, within: float = 15.0) -> list[LogRecord]:
    """Fetch until the positions reach the end offsets taken now."""
    ends = await log.end_offsets()
    out: list[LogRecord] = []
    deadline = time.monotonic() + within
    while True:
        positions = await log.positions()
        if all(positions[p] >= end for p, end in ends.items()):
            return out
        if time.monotonic() > deadline:
            pytest.fail(f"positions {positions} never reached {ends}")
        out.extend(await log.fetch(0.2, 1000))


def by_partition(records: list[LogRecord]) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
    out: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
    for r in records:
        out.setdefault(r.partition, []).append((r.key, r.value))
    return out


def sample_records(tag: str, per_partition: int = 4) -> list[OutRecord]:
    # Interleave partitions so per-partition order is not simply publication order.
    return [
        OutRecord(f"{tag}-k{i}-{p}".encode(), f'{{"i":{i},"p":{p}}}'.encode(), p)
        for i in range(per_partition)
        for p in range(PARTITIONS)
    ]


class TestStateLogContract:
    async def test_assign_reads_only_those_partitions_and_keeps_positions(
        self, backend: Backend
    ) -> None:
        writer = await backend.client()
        sent = sample_records("assign")
        await writer.publish(sent)
        expected = by_partition([LogRecord(r.key, r.value, r.partition, 0, 0) for r in sent])
        reader = await backend.client()
        await reader.assign([1])

        assert set(await reader.end_offsets()) == {1}
        assert set(await reader.positions()) == {1}
        got = by_partition(await read_to_end(reader))
        assert got == {1: expected[1]}

        # Partition 1 keeps its position (nothing read twice); partition 2, new, is read
        # from its beginning; partition 0 is not read at all.
        await writer.publish([OutRecord(b"late-1", b"{}", 1), OutRecord(b"late-0", b"{}", 0)])
        await reader.assign([1, 2])
        got = by_partition(await read_to_end(reader))
        assert got == {1: [(b"late-1", b"{}")], 2: expected[2]}

        await reader.assign([2])
        await writer.publish([OutRecord(b"later-1", b"{}", 1)])
        assert await read_to_end(reader) == []
        assert set(await reader.positions()) == {2}

    async def test_seek_reads_on_from_the_offsets_given(self, backend: Backend) -> None:
        writer = await backend.client()
        sent = sample_records("seek")
        await writer.publish(sent)
        reader = await backend.client()
        await reader.seek({0: 2, 1: 4})  # past every record of partition 1

        records = await read_to_end(reader)
        got = by_partition(records)
        expected = by_partition(
            [LogRecord(r.key, r.value, r.partition, 0, 0) for r in sent if r.partition != 1]
        )
        assert got[0] == expected[0][2:]
        assert 1 not in got
        assert got[2] == expected[2]

    async def test_publish_returns_the_log_stamp_of_its_records(self, backend: Backend) -> None:
        log = await backend.client()
        assert log.stamps
        before = int(time.time() * 1000)
        stamped = await log.publish([OutRecord(b"k", b"v", 1)])
        after = int(time.time() * 1000)

        assert stamped is not None
        assert before - 1 <= stamped <= after + 1
        [record] = await read_to_end(log)
        assert record.timestamp_ms == stamped

    async def test_a_new_log_is_empty(self, backend: Backend) -> None:
        log = await backend.client()

        assert log.partitions == PARTITIONS
        assert await log.end_offsets() == dict.fromkeys(range(PARTITIONS), 0)
        assert await log.positions() == dict.fromkeys(range(PARTITIONS), 0)
        assert await log.fetch(0.05, 100) == []

    async def test_publish_then_fetch_in_order_per_partition(self, backend: Backend) -> None:
        writer = await backend.client()
        reader = await backend.client()
        sent = sample_records("a")

        await writer.publish(sent[:5])
        await writer.publish(sent[5:])
        got = await read_to_end(reader)

        assert len(got) == len(sent)
        assert by_partition(got) == {
            p: [(r.key, r.value) for r in sent if r.partition == p] for p in range(PARTITIONS)
        }
        for p in range(PARTITIONS):
            offsets = [r.offset for r in got if r.partition == p]
            assert offsets == sorted(offsets)
            assert len(set(offsets)) == len(offsets)
        assert all(r.timestamp_ms > 0 for r in got)

    async def test_end_offsets_and_positions_meet_after_reading_everything(
        self, backend: Backend
    ) -> None:
        log = await backend.client()
        sent = sample_records("b", per_partition=3)
        await log.publish(sent)

        ends = await log.end_offsets()
        assert sum(ends.values()) == len(sent)
        got = await read_to_end(log)

        assert len(got) == len(sent)
        assert await log.positions() == ends == await log.end_offsets()
        assert await log.fetch(0.05, 100) == []

    async def test_reading_resumes_at_the_position(self, backend: Backend) -> None:
        writer = await backend.client()
        reader = await backend.client()
        first, second = sample_records("c1"), sample_records("c2")
        await writer.publish(first)
        assert len(await read_to_end(reader)) == len(first)

        await writer.publish(second)
        got = await read_to_end(reader)

        assert by_partition(got) == {
            p: [(r.key, r.value) for r in second if r.partition == p] for p in range(PARTITIONS)
        }

    async def test_a_later_reader_reads_everything_from_the_beginning(
        self, backend: Backend
    ) -> None:
        writer = await backend.client()
        sent = sample_records("d1")
        await writer.publish(sent)
        early = await backend.client()
        await read_to_end(early)
        more = sample_records("d2")
        await writer.publish(more)

        late = await backend.client()
        got = await read_to_end(late)

        assert by_partition(got) == {
            p: [(r.key, r.value) for r in sent + more if r.partition == p]
            for p in range(PARTITIONS)
        }

    async def test_tombstones(self, backend: Backend) -> None:
        log = await backend.client()
        await log.publish([OutRecord(b"user\x1frule\x1fw", b'{"v":1}', 1)])
        await log.publish([OutRecord(b"user\x1frule\x1fw", None, 1)])

        got = await read_to_end(log)

        assert [(r.key, r.value, r.partition) for r in got] == [
            (b"user\x1frule\x1fw", b'{"v":1}', 1),
            (b"user\x1frule\x1fw", None, 1),
        ]

    async def test_fetch_honours_max_records(self, backend: Backend) -> None:
        log = await backend.client()
        sent = sample_records("e", per_partition=5)
        await log.publish(sent)
        await read_to_end(await backend.client())  # everything is on the log

        got: list[LogRecord] = []
        deadline = time.monotonic() + 15
        while len(got) < len(sent) and time.monotonic() < deadline:
            chunk = await log.fetch(0.2, 4)
            assert len(chunk) <= 4
            got.extend(chunk)

        assert sorted((r.key, r.value) for r in got) == sorted((r.key, r.value) for r in sent)

    async def test_publishing_to_a_missing_partition_fails(self, backend: Backend) -> None:
        log = await backend.client()

        with pytest.raises(PublishFailed):
            await log.publish([OutRecord(b"k", b"v", 0), OutRecord(b"k", b"v", PARTITIONS)])
        with pytest.raises(PublishFailed):
            await log.publish([OutRecord(b"k", b"v", -1)])

    async def test_publish_nothing(self, backend: Backend) -> None:
        log = await backend.client()

        await log.publish([])

        assert await log.end_offsets() == dict.fromkeys(range(PARTITIONS), 0)
