"""The decision engine: one replicated limiter per rule, decisions and their headers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

from crdt.delta import Delta
from crdt.limiter import Limiter, make_limiter, timing
from crdt.policy import SyncTiming
from crdt.store import KeyView
from service.clock import Clock
from service.rules import Rule, RuleSet


class Decision(NamedTuple):
    """The answer to one request, with what the headers and /v1/check report."""

    allowed: bool
    remaining: int
    limit: int
    retry_after_s: float
    reset_after_s: float
    rule: Rule
    shadow_denied: bool


class Engine:
    """Routes keys to rules and decides locally; never touches the network."""

    def __init__(
        self,
        rules: RuleSet,
        replica: str,
        clock: Clock,
        sync_timing: SyncTiming,
        max_keys: int,
    ) -> None:
        self.replica = replica
        self.clock = clock
        self.sync_timing = sync_timing
        self.max_keys = max_keys
        self.rules = rules
        self.limiters: dict[str, Limiter] = {}
        for rule in rules.all():
            self.limiters[rule.name] = self._limiter_for(rule)

    def _limiter_for(self, rule: Rule) -> Limiter:
        return make_limiter(
            rule.algorithm,
            self.replica,
            rate=rule.rate if rule.rate is not None else 1.0,
            burst=rule.capacity,
            window=rule.window_s if rule.window_s is not None else 1.0,
            timing_=self.sync_timing,
            max_keys=self.max_keys,
        )

    def decide(self, key: str, cost: int, rule: Rule, now: float | None = None) -> Decision:
        """Admit or deny `cost` for `key` under `rule` (shadow rules never deny)."""
        if now is None:
            now = self.clock()
        limiter = self.limiters[rule.name]
        result = limiter.acquire(key, cost, now)
        allowed = result >= 0
        if rule.algorithm == "token_bucket" and allowed:
            # The common case, inlined: time to full is the missing tokens over the rate.
            assert rule.rate is not None
            retry, reset = 0.0, max(rule.capacity - result, 0.0) / rule.rate
        else:
            retry, reset = timing(limiter, key, result, cost, now)
        # +1e-6: float time near 6e7 s leaves ~1e-8 token of rounding; 18.99999998 is 19.
        remaining = math.floor((result if allowed else max(result + cost, 0.0)) + 1e-6)
        if not allowed and rule.shadow:
            return Decision(True, remaining, rule.capacity, 0.0, reset, rule, True)
        return Decision(allowed, remaining, rule.capacity, retry, reset, rule, False)

    def view(self, key: str, rule: Rule, now: float | None = None) -> KeyView:
        """The merged state of `key` under `rule`."""
        return self.limiters[rule.name].view(key, self.clock() if now is None else now)

    def flush(self, now: float) -> list[tuple[str, Delta]]:
        """(rule name, delta) for every key changed since the last flush."""
        out: list[tuple[str, Delta]] = []
        for name, limiter in self.limiters.items():
            out.extend((name, delta) for delta in limiter.flush(now))
        return out

    def apply(self, items: Iterable[tuple[str, Delta]], now: float) -> int:
        """Merge peers' deltas; returns how many named a rule this node does not have."""
        unknown = 0
        limiters = self.limiters
        for name, delta in items:
            limiter = limiters.get(name)
            if limiter is None:
                unknown += 1
                continue
            limiter.apply(delta, now)
        return unknown

    def sweep(self, now: float, budget: int) -> int:
        """Seal and delete idle keys across rules; returns keys deleted."""
        return sum(limiter.sweep(now, budget) for limiter in self.limiters.values())

    def set_bootstrapping(self, on: bool, now: float) -> None:
        """Enter or leave bootstrap mode on every limiter."""
        for limiter in self.limiters.values():
            if on:
                limiter.bootstrapping = True
            else:
                limiter.finish_bootstrap(now)

    def limiters_bootstrapping(self) -> bool:
        """True while merging the topic's history (no lag to measure then)."""
        return any(limiter.bootstrapping for limiter in self.limiters.values())

    def tracked_keys(self) -> int:
        """Keys held across rules."""
        return sum(len(limiter) for limiter in self.limiters.values())

    def dirty_count(self) -> int:
        """Keys waiting to be flushed across rules."""
        return sum(limiter.dirty_count() for limiter in self.limiters.values())
