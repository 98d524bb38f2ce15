"""A compacted topic of one partition on Kafka: a group-less reader from its beginning and a
writer; the adapter under the rules topic and the members topic."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from service.errors import BrokerError, Unavailable
from service.kafka.record import LogRecord
from service.kafka.topics import ensure_topic

FETCH_TIMEOUT_S = 0.1


class CompactedLog:
    """One compacted partition: every reader sees the same records in the same order.

    `what` names the topic in error messages ("the members topic"). The writer starts with
    the reader (`eager_writer`) or at the first publish (a reader that seldom writes keeps
    no producer); `idempotent` turns on the producer's idempotence.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        config: Mapping[str, str],
        *,
        what: str,
        client_id: str,
        options: Mapping[str, Any] | None = None,
        eager_writer: bool = False,
        idempotent: bool = False,
        publish_timeout_s: float = 10.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._config = config
        self._what = what
        self._client_id = client_id
        self._options = dict(options or {})
        self._eager_writer = eager_writer
        self._idempotent = idempotent
        self._publish_timeout_s = publish_timeout_s
        self._tp = TopicPartition(topic, 0)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect (creating the topic if missing); reading starts at the beginning.
        Starting a started log does nothing."""
        if self._consumer is not None:
            return
        await ensure_topic(self.bootstrap, self.topic, 1, self._config, options=self._options)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self._client_id}-consumer",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            **self._options,
        )
        producer = self._new_producer() if self._eager_writer else None
        try:
            await consumer.start()
            if producer is not None:
                await producer.start()
        except KafkaError as exc:
            await consumer.stop()
            if producer is not None:
                await producer.stop()
            raise BrokerError(f"cannot reach {self._what} {self.topic!r}: {exc}") from exc
        consumer.assign([self._tp])
        await consumer.seek_to_beginning(self._tp)
        self._consumer, self._producer = consumer, producer

    async def stop(self) -> None:
        """Disconnect."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self._client_id}-producer",
            enable_idempotence=self._idempotent,
            request_timeout_ms=5000,
            **self._options,
        )

    def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise Unavailable(f"the reader of {self._what} is not started")
        return self._consumer

    async def read_to_end(self, timeout_s: float) -> list[LogRecord]:
        """Every record up to the end offset taken now; TimeoutError after `timeout_s`."""
        consumer = self._reader()
        out: list[LogRecord] = []
        try:
            async with asyncio.timeout(timeout_s):
                end = (await consumer.end_offsets([self._tp]))[self._tp]
                # Compaction leaves gaps in offsets: the position, not a count, says how far.
                while await consumer.position(self._tp) < end:
                    out.extend(await self.fetch(FETCH_TIMEOUT_S))
        except KafkaError as exc:
            raise BrokerError(f"reading {self._what} {self.topic!r} failed: {exc!r}") from exc
        return out

    async def fetch(self, timeout_s: float) -> list[LogRecord]:
        """Records after the current position (possibly none once `timeout_s` passes)."""
        try:
            batches = await self._reader().getmany(timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise BrokerError(f"reading {self._what} {self.topic!r} failed: {exc!r}") from exc
        return [
            LogRecord(r.key, r.value, int(r.timestamp))
            for records in batches.values()
            for r in records
        ]

    async def publish(self, key: bytes, value: bytes | None) -> None:
        """Return once the broker acknowledged the record; BrokerError otherwise."""
        if self._producer is None and self._eager_writer:
            raise Unavailable(f"the writer of {self._what} is not started")
        try:
            if self._producer is None:
                producer = self._new_producer()
                await producer.start()
                self._producer = producer
            async with asyncio.timeout(self._publish_timeout_s):
                await self._producer.send_and_wait(self.topic, value=value, key=key, partition=0)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerError(f"writing to {self._what} {self.topic!r} failed: {exc!r}") from exc
