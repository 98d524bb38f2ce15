"""The state topic as a port: publish records, read every partition; Kafka and in-memory."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from service.errors import BrokerError, RateLimiterError
from service.replication.topic import ensure_state_topic

log = logging.getLogger("ratelimiter.statelog")

RECONNECT_BACKOFF_S = 0.5
LOG_APPEND_TIME = 1  # a record's timestamp type when the broker stamped it
# Fetched data waits in a consumer until read, this much per partition: at 8 MB, 90 MB of
# a new node's first fetches from the beginning were still held after it sought to a peer's
# offsets (a larger batch still comes, first in a fetch).
MAX_PARTITION_FETCH_BYTES = 1 << 20


async def _quietly_stop(producer: AIOKafkaProducer) -> None:
    try:
        async with asyncio.timeout(10):
            await producer.stop()
    except (KafkaError, TimeoutError):
        log.debug("a replaced producer did not stop cleanly")


class PublishFailed(RateLimiterError):
    """Some records were not acknowledged by the log; they must be sent again."""


class OutRecord(NamedTuple):
    """A record to publish: key, value (None is a tombstone), partition."""

    key: bytes
    value: bytes | None
    partition: int


class LogRecord(NamedTuple):
    """A record read back."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp_ms: int


class StateLog(Protocol):
    """A partitioned, ordered-per-partition log with every partition read by every node."""

    partitions: int
    # True when the log stamps records with its own time (the clock's reference).
    stamps: bool

    async def start(self) -> None:
        """Connect; reading starts at the beginning of every partition."""
        ...

    async def stop(self) -> None:
        """Disconnect (after publishing what was handed to `publish`)."""
        ...

    async def publish(self, records: Sequence[OutRecord]) -> int | None:
        """Return once every record is acknowledged, else raise PublishFailed.

        Returns the broker's append time (Unix ms) of the first record when the log stamps
        records itself (LogAppendTime), else None: the clock's reference.
        """
        ...

    async def end_offsets(self) -> dict[int, int]:
        """The next offset to be written, per partition."""
        ...

    async def positions(self) -> dict[int, int]:
        """The next offset this reader will return, per partition."""
        ...

    async def seek(self, offsets: dict[int, int]) -> None:
        """Read on from these offsets (partitions not named stay where they are)."""
        ...

    async def fetch(self, timeout_s: float, max_records: int) -> list[LogRecord]:
        """Records after the current positions (possibly none once `timeout_s` passes)."""
        ...

    async def assign(self, partitions: Collection[int]) -> None:
        """Read only these partitions from now on (all are read after `start`): those read
        already keep their positions, new ones are read from the beginning. `end_offsets`,
        `positions` and `fetch` then cover these partitions only."""
        ...


class KafkaStateLog:
    """The state topic on Kafka: an idempotent producer and a group-less consumer that is
    assigned all partitions (every node reads everything) unless told fewer (`assign`).

    Clients are made by `start()` (which creates or verifies the topic first), so one can
    be built outside the event loop and `start()` retried after a failure.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: int,
        client_id: str,
        *,
        linger_ms: int = 5,
        request_timeout_ms: int = 5000,
        publish_timeout_s: float = 2.0,
        security: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.stamps = True  # start() verifies message.timestamp.type=LogAppendTime
        self._security = security or {}
        self._producer_options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": f"{client_id}-producer",
            "enable_idempotence": True,  # implies acks=all; retries never duplicate or reorder
            "linger_ms": linger_ms,
            "max_batch_size": 1 << 20,
            "max_request_size": 8 << 20,
            "request_timeout_ms": request_timeout_ms,
            **self._security,
        }
        self._consumer_options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": f"{client_id}-consumer",
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": 50,
            "max_partition_fetch_bytes": MAX_PARTITION_FETCH_BYTES,
            "request_timeout_ms": max(request_timeout_ms, 10_000),
            **self._security,
        }
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer_broken = False
        self._retry_at = 0.0
        self._retired: set[asyncio.Task[None]] = set()
        # A flush waits at most this long for acknowledgements; unacknowledged keys stay
        # buffered and go out again with the next flush (absolute values: no harm).
        self._send_timeout = publish_timeout_s

    async def start(self) -> None:
        """Create or verify the topic (TopicConfigMismatch when it differs), then connect."""
        await ensure_state_topic(self.bootstrap, self.topic, self.partitions, self._security)
        producer = self._producer = AIOKafkaProducer(**self._producer_options)
        consumer = self._consumer = AIOKafkaConsumer(**self._consumer_options)
        try:
            await producer.start()
            await consumer.start()
        except KafkaError as exc:
            await self.stop()
            raise PublishFailed(f"cannot connect to Kafka: {exc}") from exc
        consumer.assign(self._tps)
        await consumer.seek_to_beginning(*self._tps)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        for old in list(self._retired):
            await _quietly_stop(old)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise PublishFailed("the state topic reader is not started")
        return self._consumer

    async def _replace_producer(self) -> None:
        # A producer that timed out or was rejected is replaced rather than retried:
        # aiokafka keeps retrying its timed-out batches for request_timeout_ms after the
        # broker returns, and never recovers an idempotent producer whose sequence
        # numbers the broker rejects (OutOfOrderSequenceNumber after a restart). A new
        # producer has a new producer id; resending is safe (absolute values).
        now = time.monotonic()
        if now < self._retry_at:
            raise PublishFailed("the Kafka producer is reconnecting")
        self._retry_at = now + RECONNECT_BACKOFF_S
        old, self._producer = self._producer, AIOKafkaProducer(**self._producer_options)
        if old is not None:
            task = asyncio.create_task(_quietly_stop(old))  # may take long: never wait for it
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        try:
            await self._producer.start()
        except KafkaError as exc:
            raise PublishFailed(f"cannot reconnect the producer: {exc!r}") from exc
        self._producer_broken = False
        log.info("reconnected the Kafka producer")

    async def publish(self, records: Sequence[OutRecord]) -> int | None:
        if self._producer is None:
            raise PublishFailed("the state topic writer is not started")
        if self._producer_broken:
            await self._replace_producer()
        producer = self._producer
        # aiokafka only asserts the partition exists, after earlier records were sent.
        for r in records:
            if not 0 <= r.partition < self.partitions:
                raise PublishFailed(f"no partition {r.partition} in topic {self.topic!r}")
        try:
            async with asyncio.timeout(self._send_timeout):
                futures = [
                    await producer.send(self.topic, value=r.value, key=r.key, partition=r.partition)
                    for r in records
                ]
                results = await asyncio.gather(*futures, return_exceptions=True)
        except (KafkaError, TimeoutError) as exc:
            self._producer_broken = True
            raise PublishFailed(f"publishing {len(records)} records failed: {exc!r}") from exc
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            self._producer_broken = True
            raise PublishFailed(f"{len(failed)} of {len(records)} records failed: {failed[0]!r}")
        first: Any = results[0] if results else None
        if first is not None and first.timestamp_type == LOG_APPEND_TIME:
            return int(first.timestamp)
        return None

    async def end_offsets(self) -> dict[int, int]:
        offsets = await self._reader().end_offsets(self._tps)
        return {tp.partition: int(offset) for tp, offset in offsets.items()}

    async def positions(self) -> dict[int, int]:
        # Compaction leaves gaps in offsets, so the consumer's position (not a count of
        # records read) says how far a partition has been read.
        consumer = self._reader()
        return {tp.partition: int(await consumer.position(tp)) for tp in self._tps}

    async def seek(self, offsets: dict[int, int]) -> None:
        consumer = self._reader()
        for tp in self._tps:
            if tp.partition in offsets:
                consumer.seek(tp, offsets[tp.partition])

    async def assign(self, partitions: Collection[int]) -> None:
        consumer = self._reader()
        wanted = sorted(set(partitions))
        for p in wanted:
            if not 0 <= p < self.partitions:
                raise PublishFailed(f"no partition {p} in topic {self.topic!r}")
        # aiokafka's assign() forgets every position: keep those of partitions read already
        # (their fetched but unreturned records are fetched again from there).
        try:
            kept = {
                tp: int(await consumer.position(tp)) for tp in self._tps if tp.partition in wanted
            }
        except KafkaError as exc:
            raise BrokerError(f"reading positions of {self.topic!r} failed: {exc!r}") from exc
        tps = [TopicPartition(self.topic, p) for p in wanted]
        consumer.assign(tps)
        for tp, offset in kept.items():
            consumer.seek(tp, offset)
        fresh = [tp for tp in tps if tp not in kept]
        self._tps = tps
        if fresh:
            try:
                await consumer.seek_to_beginning(*fresh)
            except KafkaError as exc:
                raise BrokerError(f"seeking in {self.topic!r} failed: {exc!r}") from exc

    async def fetch(self, timeout_s: float, max_records: int) -> list[LogRecord]:
        try:
            batches = await self._reader().getmany(
                timeout_ms=int(timeout_s * 1000), max_records=max_records
            )
        except KafkaError as exc:
            raise BrokerError(f"reading the state topic {self.topic!r} failed: {exc!r}") from exc
        out: list[LogRecord] = []
        for tp, records in batches.items():
            for r in records:
                out.append(LogRecord(r.key, r.value, tp.partition, r.offset, r.timestamp))
        return out
