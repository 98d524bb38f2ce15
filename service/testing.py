"""Test doubles shipped on purpose: a settable clock and in-memory state and rules topics.

They implement the ports (`Clock`, `StateLog`, `RulesLog`) that the Kafka adapters
implement, and the contract suites run against both. Pass them to
`service.bootstrap.build_node` (or `RateLimiter`'s settings) to test without a broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence

from service.clock import Clock, to_unix_ms
from service.errors import BrokerError
from service.membership.log import MemberRecord
from service.replication.remotelog import Position, RemoteRecord
from service.replication.statelog import LogRecord, OutRecord, PublishFailed
from service.rules.codec import RuleRecord

__all__ = [
    "ManualClock",
    "MemoryLog",
    "MemoryMembers",
    "MemoryMembersLog",
    "MemoryRemoteLog",
    "MemoryRules",
    "MemoryRulesLog",
    "MemoryStateLog",
]

# Cluster seconds (since 2025-01-01) where frozen-clock tests live.
T0 = 1_000.0


class ManualClock:
    """A cluster clock that only moves when told: `clock.t = ...` or `clock.advance(s)`."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.t += seconds


class MemoryLog:
    """An in-process log shared by MemoryStateLog clients: the fake for unit tests."""

    def __init__(self, partitions: int, broker_clock: Clock | None = None) -> None:
        self.partitions: list[list[LogRecord]] = [[] for _ in range(partitions)]
        self.available = True
        self.clock_ms = 0
        # Set: records are stamped with this clock (as a topic with LogAppendTime).
        self.broker_clock = broker_clock

    def append(self, record: OutRecord) -> int:
        """Append one record to its partition; returns its timestamp (Unix ms)."""
        log = self.partitions[record.partition]
        if self.broker_clock is not None:
            self.clock_ms = to_unix_ms(self.broker_clock())
        else:
            self.clock_ms += 1
        log.append(LogRecord(record.key, record.value, record.partition, len(log), self.clock_ms))
        return self.clock_ms


class MemoryStateLog:
    """A StateLog over a MemoryLog; `log.available = False` simulates an outage."""

    def __init__(self, log: MemoryLog) -> None:
        self.log = log
        self.partitions = len(log.partitions)
        self.stamps = log.broker_clock is not None
        self._positions = dict.fromkeys(range(self.partitions), 0)
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def publish(self, records: Sequence[OutRecord]) -> int | None:
        if not self.log.available:
            raise PublishFailed("memory log unavailable")
        stamps = []
        for record in records:
            if not 0 <= record.partition < self.partitions:
                raise PublishFailed(f"no partition {record.partition}")
            stamps.append(self.log.append(record))
        return stamps[0] if stamps and self.log.broker_clock is not None else None

    async def end_offsets(self) -> dict[int, int]:
        return {p: len(self.log.partitions[p]) for p in self._positions}

    async def positions(self) -> dict[int, int]:
        return dict(self._positions)

    async def seek(self, offsets: dict[int, int]) -> None:
        for partition, offset in offsets.items():
            if partition in self._positions:
                self._positions[partition] = offset

    async def assign(self, partitions: Collection[int]) -> None:
        for p in partitions:
            if not 0 <= p < self.partitions:
                raise PublishFailed(f"no partition {p}")
        self._positions = {p: self._positions.get(p, 0) for p in sorted(set(partitions))}

    async def fetch(self, timeout_s: float, max_records: int) -> list[LogRecord]:
        out: list[LogRecord] = []
        if self.log.available:
            for p in list(self._positions):
                records = self.log.partitions[p]
                start = self._positions[p]
                chunk = records[start : start + max_records - len(out)]
                out.extend(chunk)
                self._positions[p] = start + len(chunk)
        if not out:
            await asyncio.sleep(min(timeout_s, 0.005))  # an idle poll waits, as Kafka's does
        return out


class MemoryRemoteLog:
    """A RemoteLog over other regions' MemoryLogs, by mirrored topic name: the mirror
    copies records as they are (source stamps kept). `cut = True` stops the copying."""

    def __init__(self, mirrored: dict[str, MemoryLog] | None = None) -> None:
        self.mirrored = dict(mirrored or {})
        self.cut = False
        self._positions: dict[Position, int] = {}

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(topic for topic, _ in self._positions)

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to release."""

    async def discover(self) -> list[str]:
        new = sorted(set(self.mirrored) - self.topics)
        for topic in new:
            for p in range(len(self.mirrored[topic].partitions)):
                self._positions[(topic, p)] = 0
        return new

    async def end_offsets(self, topics: Collection[str]) -> dict[Position, int]:
        return {
            (t, p): len(self.mirrored[t].partitions[p]) for t, p in self._positions if t in topics
        }

    async def positions(self, topics: Collection[str]) -> dict[Position, int]:
        return {tp: offset for tp, offset in self._positions.items() if tp[0] in topics}

    async def fetch(self, timeout_s: float, max_records: int) -> list[RemoteRecord]:
        out: list[RemoteRecord] = []
        if not self.cut:
            for (topic, p), start in list(self._positions.items()):
                chunk = self.mirrored[topic].partitions[p][start : start + max_records - len(out)]
                out.extend(RemoteRecord(topic, record) for record in chunk)
                self._positions[(topic, p)] = start + len(chunk)
        if not out:
            await asyncio.sleep(min(timeout_s, 0.005))  # an idle poll waits, as Kafka's does
        return out


class MemoryRules:
    """An in-process rules topic shared by MemoryRulesLog clients (the fake for unit tests)."""

    def __init__(self) -> None:
        self.records: list[RuleRecord] = []


class MemoryRulesLog:
    """A RulesLog over a MemoryRules."""

    def __init__(self, topic: MemoryRules) -> None:
        self.topic = topic
        self.position = 0

    async def start(self) -> None:
        self.position = 0

    async def stop(self) -> None:
        """Nothing to release."""

    async def read_to_end(self, timeout_s: float) -> list[RuleRecord]:
        return await self.fetch(0)

    async def fetch(self, timeout_s: float) -> list[RuleRecord]:
        out = self.topic.records[self.position :]
        self.position += len(out)
        if not out:
            await asyncio.sleep(min(timeout_s, 0.005))  # an idle poll waits, as Kafka's does
        return out

    async def publish(self, key: bytes, value: bytes | None) -> None:
        self.topic.records.append(RuleRecord(key, value))


class MemoryMembers:
    """An in-process members topic shared by MemoryMembersLog clients, stamped by `wall`."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.records: list[MemberRecord] = []
        self.wall = wall
        self.available = True


class MemoryMembersLog:
    """A MembersLog over a MemoryMembers; `topic.available = False` simulates an outage."""

    def __init__(self, topic: MemoryMembers) -> None:
        self.topic = topic
        self.position = 0
        self.started = False

    async def start(self) -> None:
        if not self.started:
            self.started = True
            self.position = 0

    async def stop(self) -> None:
        self.started = False

    async def read_to_end(self, timeout_s: float) -> list[MemberRecord]:
        return await self.fetch(0)

    async def fetch(self, timeout_s: float) -> list[MemberRecord]:
        out = self.topic.records[self.position :] if self.topic.available else []
        self.position += len(out)
        if not out:
            await asyncio.sleep(min(timeout_s, 0.005))  # an idle poll waits, as Kafka's does
        return out

    async def publish(self, key: bytes, value: bytes | None) -> None:
        if not self.topic.available:
            raise BrokerError("memory members topic unavailable")
        self.topic.records.append(MemberRecord(key, value, int(self.topic.wall() * 1000)))
