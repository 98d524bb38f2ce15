"""The rules topic as a port (RulesLog) and its Kafka adapter, plus the CLI's read and write.

The topic is compacted and has one partition, so every node reads the same changes in the
same order and the newest record per name is the rule in force.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from service.errors import BrokerError, PoisonRecord, Unavailable
from service.kafka.topics import ensure_topic
from service.rules.codec import RuleRecord, decode_rule, encode_rule
from service.rules.model import Rule

RULES_TOPIC_CONFIG: Mapping[str, str] = {
    # The newest record per rule name is the rule; tombstones delete overrides.
    "cleanup.policy": "compact",
}
FETCH_TIMEOUT_S = 0.1

Changes = dict[str, Rule | None]


class RulesLog(Protocol):
    """The rules topic as a port: one ordered partition, read from the beginning."""

    async def start(self) -> None:
        """Connect (creating the topic if missing); reading starts at the beginning."""
        ...

    async def stop(self) -> None:
        """Disconnect."""
        ...

    async def read_to_end(self, timeout_s: float) -> list[RuleRecord]:
        """Every record up to the end offset taken now; TimeoutError after `timeout_s`."""
        ...

    async def fetch(self, timeout_s: float) -> list[RuleRecord]:
        """Records after the current position (possibly none once `timeout_s` passes)."""
        ...

    async def publish(self, key: bytes, value: bytes | None) -> None:
        """Return once the broker acknowledged the record."""
        ...


class KafkaRulesLog:
    """The rules topic on Kafka: a group-less reader of its one partition, and a writer."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        client_id: str = "ratelimiter-rules",
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
        await ensure_topic(self.bootstrap, self.topic, 1, RULES_TOPIC_CONFIG, options=self._options)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self._client_id}-consumer",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            **self._options,
        )
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()
            raise BrokerError(f"cannot read the rules topic {self.topic!r}: {exc}") from exc
        consumer.assign([self._tp])
        await consumer.seek_to_beginning(self._tp)
        self._consumer = consumer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> KafkaRulesLog:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise Unavailable("the rules topic reader is not started")
        return self._consumer

    async def read_to_end(self, timeout_s: float) -> list[RuleRecord]:
        consumer = self._reader()
        out: list[RuleRecord] = []
        try:
            async with asyncio.timeout(timeout_s):
                end = (await consumer.end_offsets([self._tp]))[self._tp]
                # Compaction leaves gaps in offsets: the position, not a count, says how far.
                while await consumer.position(self._tp) < end:
                    out.extend(await self.fetch(FETCH_TIMEOUT_S))
        except KafkaError as exc:
            raise BrokerError(f"reading the rules topic {self.topic!r} failed: {exc!r}") from exc
        return out

    async def fetch(self, timeout_s: float) -> list[RuleRecord]:
        try:
            batches = await self._reader().getmany(timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise BrokerError(f"reading the rules topic {self.topic!r} failed: {exc!r}") from exc
        return [RuleRecord(r.key, r.value) for records in batches.values() for r in records]

    async def publish(self, key: bytes, value: bytes | None) -> None:
        try:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id=f"{self._client_id}-producer",
                    enable_idempotence=True,
                    request_timeout_ms=5000,
                    **self._options,
                )
                await producer.start()
                self._producer = producer
            async with asyncio.timeout(10):
                await self._producer.send_and_wait(self.topic, value=value, key=key, partition=0)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerError(f"writing to the rules topic {self.topic!r} failed: {exc!r}") from exc


async def write_rules(
    bootstrap: str, topic: str, changes: Changes, options: Mapping[str, Any] | None = None
) -> None:
    """Write rule overrides (None: a tombstone) to the rules topic, creating it if missing."""
    async with KafkaRulesLog(bootstrap, topic, "ratelimiter-rules-cli", options) as rules_log:
        for name, rule in changes.items():
            await rules_log.publish(name.encode(), None if rule is None else encode_rule(rule))


async def read_rules(
    bootstrap: str,
    topic: str,
    options: Mapping[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> tuple[dict[str, Rule], list[str]]:
    """The overrides on the rules topic now, and a message per record skipped as bad."""
    async with KafkaRulesLog(bootstrap, topic, "ratelimiter-rules-cli", options) as rules_log:
        records = await rules_log.read_to_end(timeout_s)
    rules: dict[str, Rule] = {}
    skipped: list[str] = []
    for record in records:
        try:
            name, rule = decode_rule(record)
        except PoisonRecord as exc:
            skipped.append(f"{exc.kind}: {exc}")
            continue
        if rule is None:
            rules.pop(name, None)
        else:
            rules[name] = rule
    return rules, skipped
