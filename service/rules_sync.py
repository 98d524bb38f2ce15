"""The rules topic: rule overrides keyed by rule name, read to its end at start, then followed.

Records are keyed by the rule name; the value is the rule as versioned JSON,
`{"v":1,"name":"premium","algorithm":"token_bucket","rate":100.0,"burst":200,...}`,
and a tombstone (null value) deletes the override. The topic is compacted and has one
partition, so every node reads the same changes in the same order and the newest
record per name is the rule in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from service.errors import BrokerError, PoisonRecord, RateLimiterError, Unavailable
from service.metrics import Metrics
from service.rules import InvalidRule, Rule, rule_from_mapping
from service.topic import ensure_topic

if TYPE_CHECKING:
    from service.node import Node

log = logging.getLogger("ratelimiter.rules")

VERSION = 1
RULES_TOPIC_CONFIG: Mapping[str, str] = {
    # The newest record per rule name is the rule; tombstones delete overrides.
    "cleanup.policy": "compact",
}
FETCH_TIMEOUT_S = 0.1
RETRY_S = 0.5

Changes = dict[str, Rule | None]


class RuleRecord(NamedTuple):
    """A record of the rules topic (value None: a tombstone)."""

    key: bytes | None
    value: bytes | None


def encode_rule(rule: Rule) -> bytes:
    """The record value of a rule: versioned compact JSON."""
    return orjson.dumps({"v": VERSION, **rule.model_dump(exclude_none=True)})


def decode_rule(record: RuleRecord) -> tuple[str, Rule | None]:
    """(rule name, rule or None for a deletion); PoisonRecord(kind, message) when unusable."""
    if not record.key:
        raise PoisonRecord("bad_key", "rules records are keyed by the rule name")
    try:
        name = record.key.decode("utf-8")
    except UnicodeDecodeError:
        raise PoisonRecord("bad_key", "a rule name key must be UTF-8") from None
    if record.value is None:
        return name, None
    try:
        doc = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise PoisonRecord("bad_json", f"rule {name!r}: not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise PoisonRecord("bad_shape", f"rule {name!r}: the value is not a JSON object")
    version = doc.pop("v", None)
    if version != VERSION:
        raise PoisonRecord("unknown_version", f"rule {name!r}: unknown version {version!r}")
    try:
        return name, rule_from_mapping(doc, name)
    except InvalidRule as exc:
        raise PoisonRecord("invalid_rule", str(exc)) from exc


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
        batches = await self._reader().getmany(timeout_ms=int(timeout_s * 1000))
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


class RulesFeed:
    """Reads the rules topic to its end, then follows it, handing changes to `apply`.

    Bad records are skipped, counted by kind and logged once per kind. `apply` gets
    every change of one fetch at once (name -> rule, None deletes the override).
    """

    def __init__(
        self, rules_log: RulesLog, metrics: Metrics, apply: Callable[[Changes], None]
    ) -> None:
        self.log = rules_log
        self._apply = apply
        self.skipped = Counter(
            "ratelimiter_rule_records_skipped",
            "Rules topic records skipped as unusable, by kind",
            ["kind"],
            registry=metrics.registry,
        )
        self.changes = Counter(
            "ratelimiter_rule_changes",
            "Rule overrides put or deleted through the rules topic and applied",
            registry=metrics.registry,
        )
        self.topic_rules = Gauge(
            "ratelimiter_topic_rules",
            "Rules in force from the rules topic",
            registry=metrics.registry,
        )
        self._logged: set[str] = set()
        self._held: dict[str, Rule] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float) -> int:
        """Connect, apply every rule on the topic, then follow it; returns records read."""
        await self.log.start()
        try:
            records = await self.log.read_to_end(timeout_s)
        except BaseException:
            await self.log.stop()
            raise
        self._handle(records)
        log.info("rules topic read: %d records, %d rules in force", len(records), len(self._held))
        self._task = asyncio.create_task(self._follow(), name="rules")
        return len(records)

    async def stop(self) -> None:
        """Stop following and disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.log.stop()

    async def publish(self, name: str, rule: Rule | None) -> None:
        """Write a rule (or a tombstone deleting it) to the topic."""
        await self.log.publish(name.encode(), None if rule is None else encode_rule(rule))

    async def _follow(self) -> None:
        while True:
            try:
                records = await self.log.fetch(FETCH_TIMEOUT_S)
            except Exception as exc:
                log.warning("reading the rules topic failed: %r", exc)
                await asyncio.sleep(RETRY_S)
                continue
            if records:
                self._handle(records)

    def _handle(self, records: Sequence[RuleRecord]) -> None:
        changes: Changes = {}
        for record in records:
            try:
                name, rule = decode_rule(record)
            except PoisonRecord as exc:
                self.skip(exc.kind, str(exc))
                continue
            changes[name] = rule
        if not changes:
            return
        try:
            self._apply(changes)
        except RateLimiterError as exc:
            self.skip("rejected", f"rule changes {sorted(changes)} not applied: {exc}")
            return
        for name, rule in changes.items():
            if rule is None:
                self._held.pop(name, None)
            else:
                self._held[name] = rule
        self.changes.inc(len(changes))
        self.topic_rules.set(len(self._held))

    def skip(self, kind: str, message: str) -> None:
        """Count a skipped record; log the first of each kind."""
        self.skipped.labels(kind).inc()
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(
                "skipping rules record (%s): %s; further ones are only counted", kind, message
            )


async def change_rule(node: Node, name: str, rule: Rule | None, wait_s: float = 2.0) -> bool:
    """Put (or with None delete) a rule override through the node's rules topic.

    Returns once this node applied it (True) or after `wait_s` (False: written, not yet
    seen). A node without a rules topic applies the change to itself only.
    """
    feed = node.rules_feed
    if feed is None:
        node.set_topic_rules({name: rule})
        return True
    if not node.ready:
        raise Unavailable("the node is still reading its topics (see /readyz)")
    try:
        await feed.publish(name, rule)
    except BrokerError as exc:
        raise Unavailable(f"the rule was not written: {exc}") from exc
    deadline = time.monotonic() + wait_s
    while node.topic_rules.get(name) != rule:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


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
