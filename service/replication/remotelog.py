"""Mirrored state topics of other regions, read-only: found by name or pattern, read whole.

A node never writes them (MirrorMaker does) and never creates them: a topic created here
would get our LogAppendTime config, and its broker would restamp mirrored records with
the time they arrived, hiding how old they are.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from service.errors import BrokerError
from service.kafka.topics import describe_topic
from service.regions import TopicSelector
from service.replication.statelog import LOG_APPEND_TIME, MAX_PARTITION_FETCH_BYTES, LogRecord

log = logging.getLogger("ratelimiter.regions")

Position = tuple[str, int]  # (topic, partition)


class RemoteRecord(NamedTuple):
    """A record of a mirrored topic."""

    topic: str
    record: LogRecord


class RemoteLog(Protocol):
    """Mirrored state topics, each partition read from the beginning by every node."""

    @property
    def topics(self) -> frozenset[str]:
        """The topics read so far."""
        ...

    async def start(self) -> None:
        """Connect (no topic is read before `discover`)."""
        ...

    async def stop(self) -> None:
        """Disconnect."""
        ...

    async def discover(self) -> list[str]:
        """Read every matching topic not read yet, from its beginning; returns those."""
        ...

    async def end_offsets(self, topics: Collection[str]) -> dict[Position, int]:
        """The next offset to be written, per partition of `topics`."""
        ...

    async def positions(self, topics: Collection[str]) -> dict[Position, int]:
        """The next offset this reader returns, per partition of `topics`."""
        ...

    async def fetch(self, timeout_s: float, max_records: int) -> list[RemoteRecord]:
        """Records after the current positions (possibly none once `timeout_s` passes)."""
        ...


class KafkaRemoteLog:
    """Mirrored topics on the node's own cluster: a group-less consumer assigned every
    partition of every topic `selector` matches, found by listing topics now and then."""

    def __init__(
        self,
        bootstrap: str,
        selector: TopicSelector,
        client_id: str,
        *,
        request_timeout_ms: int = 10_000,
        security: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.selector = selector
        self._security = security or {}
        self._client_id = client_id
        self._consumer_options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": f"{client_id}-remote",
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": 50,
            "max_partition_fetch_bytes": MAX_PARTITION_FETCH_BYTES,
            "request_timeout_ms": request_timeout_ms,
            **self._security,
        }
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._tps: list[TopicPartition] = []
        self._topics: frozenset[str] = frozenset()
        self.restamped: set[str] = set()  # topics whose broker stamps records on arrival

    @property
    def topics(self) -> frozenset[str]:
        return self._topics

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(**self._consumer_options)
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self._client_id}-remote-admin",
            **self._security,
        )
        try:
            await consumer.start()
            await admin.start()
        except KafkaError as exc:
            await consumer.stop()
            await admin.close()
            raise BrokerError(f"cannot connect to Kafka for the remote topics: {exc!r}") from exc
        self._consumer, self._admin = consumer, admin

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise BrokerError("the remote topics reader is not started")
        return self._consumer

    async def discover(self) -> list[str]:
        consumer = self._reader()
        assert self._admin is not None
        try:
            names = await self._admin.list_topics()
        except KafkaError as exc:
            raise BrokerError(f"listing topics failed: {exc!r}") from exc
        new = sorted(t for t in names if t not in self._topics and self.selector.matches(t))
        if not new:
            return []
        added: list[TopicPartition] = []
        found: list[str] = []
        for topic in new:
            description = await describe_topic(self.bootstrap, topic, self._security)
            if description is None or description.partitions == 0:
                continue  # just created by MirrorMaker: looked at again next time
            if description.config.get("message.timestamp.type") == "LogAppendTime":
                self.restamped.add(topic)
                log.warning(
                    "the mirrored topic %r stamps records on arrival (LogAppendTime): the lag "
                    "of its region counts from the mirror's write, not from its source's; "
                    "exclude message.timestamp.type from MirrorMaker's config sync",
                    topic,
                )
            added.extend(TopicPartition(topic, p) for p in range(description.partitions))
            found.append(topic)
        if not found:
            return []
        try:
            # aiokafka's assign() forgets every position: keep those of the topics read.
            kept = {tp: int(await consumer.position(tp)) for tp in self._tps}
            self._tps = [*self._tps, *added]
            consumer.assign(self._tps)
            for tp, offset in kept.items():
                consumer.seek(tp, offset)
            await consumer.seek_to_beginning(*added)
        except KafkaError as exc:
            raise BrokerError(f"assigning the remote topics {found} failed: {exc!r}") from exc
        self._topics = self._topics | frozenset(found)
        return found

    async def end_offsets(self, topics: Collection[str]) -> dict[Position, int]:
        tps = [tp for tp in self._tps if tp.topic in topics]
        if not tps:
            return {}
        try:
            offsets = await self._reader().end_offsets(tps)
        except KafkaError as exc:
            raise BrokerError(f"reading end offsets of {sorted(topics)} failed: {exc!r}") from exc
        return {(tp.topic, tp.partition): int(offset) for tp, offset in offsets.items()}

    async def positions(self, topics: Collection[str]) -> dict[Position, int]:
        consumer = self._reader()
        try:
            return {
                (tp.topic, tp.partition): int(await consumer.position(tp))
                for tp in self._tps
                if tp.topic in topics
            }
        except KafkaError as exc:
            raise BrokerError(f"reading positions of {sorted(topics)} failed: {exc!r}") from exc

    async def fetch(self, timeout_s: float, max_records: int) -> list[RemoteRecord]:
        if not self._tps:
            return []
        try:
            batches = await self._reader().getmany(
                timeout_ms=int(timeout_s * 1000), max_records=max_records
            )
        except KafkaError as exc:
            raise BrokerError(f"reading the remote topics failed: {exc!r}") from exc
        out: list[RemoteRecord] = []
        for tp, records in batches.items():
            for r in records:
                if r.timestamp_type == LOG_APPEND_TIME and tp.topic not in self.restamped:
                    self.restamped.add(tp.topic)
                    log.warning("records of %r were restamped on arrival", tp.topic)
                out.append(
                    RemoteRecord(
                        tp.topic, LogRecord(r.key, r.value, tp.partition, r.offset, r.timestamp)
                    )
                )
        return out
