"""Follows the rules topic: read to its end at start, then every change handed to the node."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge

from service.errors import PoisonRecord, RateLimiterError
from service.metrics import Metrics
from service.rules.codec import RuleRecord, decode_rule, encode_rule
from service.rules.log import FETCH_TIMEOUT_S, Changes, RulesLog
from service.rules.model import Rule

log = logging.getLogger("ratelimiter.rules")

RETRY_S = 0.5


class RulesFeed:
    """Reads the rules topic to its end, then follows it, handing changes to `apply`.

    Bad records are skipped, counted by kind and logged once per kind.
    """

    def __init__(self, rules_log: RulesLog, metrics: Metrics) -> None:
        self.log = rules_log
        self._apply: Callable[[Changes], None] = lambda changes: None
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

    async def start(self, timeout_s: float, apply: Callable[[Changes], None]) -> int:
        """Connect and hand every rule on the topic to `apply` (then run `follow`); returns
        records read. `apply` gets every change of one fetch at once (None deletes one)."""
        self._apply = apply
        await self.log.start()
        try:
            records = await self.log.read_to_end(timeout_s)
        except BaseException:
            await self.log.stop()
            raise
        self._handle(records)
        log.info("rules topic read: %d records, %d rules in force", len(records), len(self._held))
        return len(records)

    async def stop(self) -> None:
        """Disconnect (whoever runs `follow` stops it first)."""
        await self.log.stop()

    async def publish(self, name: str, rule: Rule | None) -> None:
        """Write a rule (or a tombstone deleting it) to the topic."""
        await self.log.publish(name.encode(), None if rule is None else encode_rule(rule))

    async def follow(self) -> None:
        """Apply every change as it arrives (a supervised task: a bug propagates; a broker
        error is waited out)."""
        while True:
            try:
                records = await self.log.fetch(FETCH_TIMEOUT_S)
            except (RateLimiterError, OSError) as exc:
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
