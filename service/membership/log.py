"""The members topic as a port (MembersLog) and its Kafka adapter: one compacted partition."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from service.errors import BrokerError, Unavailable
from service.kafka.topics import ensure_topic

DEFAULT_MEMBERS_TOPIC = "ratelimiter.members"
MEMBERS_TOPIC_CONFIG: Mapping[str, str] = {
    # The newest record per node id is its last heartbeat; a tombstone is a graceful leave.
    "cleanup.policy": "compact",
    # Heartbeats are stamped by the broker: a member's age is judged on one clock.
    "message.timestamp.type": "LogAppendTime",
    # A heartbeat a second per node: clean often so a new node reads little.
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "600000",
}


class MemberRecord(NamedTuple):
    """A record of the members topic: node id, value (None: left), broker time (Unix ms)."""

    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class MembersLog(Protocol):
    """The members topic as a port: one ordered partition, read from the beginning."""

    async def start(self) -> None:
        """Connect (creating the topic if missing); reading starts at the beginning.
        Starting a started log does nothing."""
        ...

    async def stop(self) -> None:
        """Disconnect."""
        ...

    async def read_to_end(self, timeout_s: float) -> list[MemberRecord]:
        """Every record up to the end offset taken now; TimeoutError after `timeout_s`."""
        ...

    async def fetch(self, timeout_s: float) -> list[MemberRecord]:
        """Records after the current position (possibly none once `timeout_s` passes)."""
        ...

    async def publish(self, key: bytes, value: bytes | None) -> None:
        """Return once the broker acknowledged the record; BrokerError otherwise."""
        ...


class KafkaMembersLog:
    """The members topic on Kafka: a group-less reader of its one partition, and a writer."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = DEFAULT_MEMBERS_TOPIC,
        client_id: str = "ratelimiter-members",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._options = dict(options or {})
        self._client_id = client_id
        self._tp = TopicPartition(topic, 0)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._consumer is not None:
            return  # started already
        await ensure_topic(
            self.bootstrap, self.topic, 1, MEMBERS_TOPIC_CONFIG, options=self._options
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self._client_id}-consumer",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            **self._options,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self._client_id}-producer",
            request_timeout_ms=5000,
            **self._options,
        )
        try:
            await consumer.start()
            await producer.start()
        except KafkaError as exc:
            await consumer.stop()
            await producer.stop()
            raise BrokerError(f"cannot reach the members topic {self.topic!r}: {exc}") from exc
        consumer.assign([self._tp])
        await consumer.seek_to_beginning(self._tp)
        self._consumer, self._producer = consumer, producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise Unavailable("the members topic reader is not started")
        return self._consumer

    async def read_to_end(self, timeout_s: float) -> list[MemberRecord]:
        consumer = self._reader()
        out: list[MemberRecord] = []
        try:
            async with asyncio.timeout(timeout_s):
                end = (await consumer.end_offsets([self._tp]))[self._tp]
                # Compaction leaves gaps in offsets: the position, not a count, says how far.
                while await consumer.position(self._tp) < end:
                    out.extend(await self.fetch(0.1))
        except KafkaError as exc:
            raise BrokerError(f"reading the members topic {self.topic!r} failed: {exc!r}") from exc
        return out

    async def fetch(self, timeout_s: float) -> list[MemberRecord]:
        try:
            batches = await self._reader().getmany(timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise BrokerError(f"reading the members topic {self.topic!r} failed: {exc!r}") from exc
        return [
            MemberRecord(r.key, r.value, int(r.timestamp))
            for records in batches.values()
            for r in records
        ]

    async def publish(self, key: bytes, value: bytes | None) -> None:
        if self._producer is None:
            raise Unavailable("the members topic writer is not started")
        try:
            async with asyncio.timeout(5):
                await self._producer.send_and_wait(self.topic, value=value, key=key, partition=0)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerError(
                f"writing to the members topic {self.topic!r} failed: {exc!r}"
            ) from exc
