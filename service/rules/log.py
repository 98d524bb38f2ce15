"""The rules topic as a port (RulesLog) and its Kafka adapter, plus the CLI's read and write.

The topic is compacted and has one partition, so every node reads the same changes in the
same order and the newest record per name is the rule in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from service.errors import PoisonRecord
from service.kafka.compacted import FETCH_TIMEOUT_S, CompactedLog
from service.rules.codec import RuleRecord, decode_rule, encode_rule
from service.rules.model import Rule

RULES_TOPIC_CONFIG: Mapping[str, str] = {
    # The newest record per rule name is the rule; tombstones delete overrides.
    "cleanup.policy": "compact",
}
__all__ = ["FETCH_TIMEOUT_S", "Changes", "KafkaRulesLog", "RulesLog", "read_rules", "write_rules"]

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


class KafkaRulesLog(CompactedLog):
    """The rules topic on Kafka: a group-less reader of its one partition, and a writer
    started at the first publish (nodes only read)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        client_id: str = "ratelimiter-rules",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            bootstrap,
            topic,
            RULES_TOPIC_CONFIG,
            what="the rules topic",
            client_id=client_id,
            options=options,
            idempotent=True,
        )


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
