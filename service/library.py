"""The limiter as a library: `await limiter.check(key)` inside your own asyncio app.

In-process by default; given a Kafka bootstrap address it joins a fleet of nodes (same
state topic, same wire format, same rules topic), so the app and the nodes share every
key's budget. It is a `Node` without HTTP: the same engine, replication and rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from service.bootstrap import build_node
from service.clock import Clock
from service.engine import validate_key
from service.errors import Unavailable
from service.http.contract import CheckResult
from service.rules.document import parse_rules
from service.rules.model import Rule, RuleSet, default_rule
from service.settings import load_settings

__all__ = ["CheckResult", "RateLimiter", "Rule", "RuleSet"]

RulesSpec = str | Path | Mapping[str, Any] | RuleSet | None


class RateLimiter:
    """An async rate limiter: token buckets (or windows) per key, decided in memory.

    `rate`/`burst` make the default rule; `rules` adds named rules (a YAML path like
    `--rules`, the same document as a mapping, or a RuleSet). With `kafka="host:port"`
    it replicates through `topic` and follows `rules_topic` like a node; `start()`
    returns once both were read to their end. Other keyword arguments are node
    settings (`flush_ms`, `fail_mode`, `partitions`, ...); settings not given come from
    RATELIMITER_* variables, then the defaults, as for `ratelimiter serve`.
    """

    def __init__(
        self,
        rate: float = 10.0,
        burst: int = 20,
        *,
        kafka: str | None = None,
        rules: RulesSpec = None,
        node_id: str = "app",
        clock: Clock | None = None,
        **settings: Any,
    ) -> None:
        values: dict[str, Any] = {
            "rate": rate,
            "burst": burst,
            "kafka": kafka or "none",
            "node_id": node_id,
            **settings,
        }
        ruleset: RuleSet | None = None
        if isinstance(rules, str | Path):
            values["rules"] = Path(rules)
        self.settings = load_settings(**values)
        s = self.settings
        if isinstance(rules, RuleSet):
            ruleset = rules
        elif isinstance(rules, Mapping):
            fallback = default_rule(s.algorithm, s.rate, s.burst, s.window_s)
            ruleset = parse_rules(rules, fallback, source="rules")
        self.node = build_node(s, clock=clock, rules=ruleset)
        self._started = False

    # -- lifecycle -------------------------------------------------------------

    async def start(self, timeout_s: float | None = None) -> None:
        """Start; with Kafka, return once the rules and state topics were read to their end."""
        if self._started:
            return
        await self.node.start()
        try:
            await self.node.wait_ready(timeout_s or self.settings.bootstrap_timeout_s)
        except BaseException:
            await self.node.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        """Stop; with Kafka, publish what was admitted first."""
        if self._started:
            self._started = False
            await self.node.stop()

    async def __aenter__(self) -> RateLimiter:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- decisions -------------------------------------------------------------

    @property
    def rules(self) -> RuleSet:
        """The rules in force (the rules topic may change them at any time)."""
        return self.node.rules

    def rule_for(self, key: str, tier: str | None = None) -> Rule:
        """The rule `POST /protected` applies to `key`: prefix or tier match, else default."""
        return self.node.rules.match(key, tier)

    async def check(self, key: str, cost: int = 1, limit: str | None = None) -> CheckResult:
        """Spend `cost` for `key` under the rule named `limit` (the default rule when None)
        if the budget allows; BadRequest for an unusable key, UnknownRule for a name no
        rule has, Unavailable before `start()` or in fail mode `closed`."""
        if not self._started:
            raise Unavailable("the limiter is not started: `await limiter.start()` or `async with`")
        rules = self.node.rules
        rule = rules.get(limit) if limit else rules.default
        return CheckResult.of(self.node.decide(validate_key(key, "key"), cost, rule))

    def metrics(self) -> bytes:
        """Prometheus text of this limiter's metrics (decisions by rule and outcome, ...)."""
        return self.node.metrics.render()
