"""The decision engine: what a key is, one replicated limiter per rule, decisions."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import orjson

from crdt.delta import Delta
from crdt.limiter import Limiter, make_limiter, timing
from crdt.policy import SyncTiming
from crdt.store import KeyBudget, KeyView
from service.clock import ORIGIN, Clock
from service.errors import BadRequest, UnknownRule
from service.rules.model import RULE_NAME_MAX, Rule, RuleSet
from service.rules.override import OVERRIDE_PREFIX, rule_of_override

MAX_KEY_BYTES = 256  # a user id (X-User-ID), a /v1/check key, a key on the wire
WIRE_SEP = "~"  # never in a rule name (RULE_NAME), so a wire name splits unambiguously
MAX_WIRE_CHARS = RULE_NAME_MAX  # a wire name is a rule name on the wire
MAX_OVERRIDES = 1000  # limiters of request-given limits (service.rules.override) at once
PEEK_SLACK = 1e-6  # of a token: a look admits what acquire admits (float noise aside)


def wire_name(rule: Rule, base: RuleSet) -> str:
    """The rule's name in state records: plain while its limits are those of the base
    (--rules file) rule of that name, else suffixed with a digest of its limits.

    A function of the rule and the file only, so every node (and a node started later)
    picks the same name for the same limits, and consumption recorded under other
    limits is never merged into this rule's buckets.
    """
    for held in base.all():
        if held.name == rule.name and held.limits == rule.limits:
            return rule.name
    digest = hashlib.sha256(orjson.dumps([rule.name, *rule.limits])).hexdigest()[:10]
    return f"{rule.name[: MAX_WIRE_CHARS - len(digest) - 1]}{WIRE_SEP}{digest}"


def validate_key(value: str | bytes, name: str = "key") -> str:
    """A key as every entry point takes it: 1-256 bytes of UTF-8, printable, without
    surrounding blanks; BadRequest naming `name` (a header, a field) otherwise."""
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bytes):
        raw = value
    else:
        raise BadRequest(f"{name} must be a string, got {type(value).__name__}")
    if len(raw) > MAX_KEY_BYTES:
        raise BadRequest(f"{name} is longer than {MAX_KEY_BYTES} bytes")
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{name} must be UTF-8") from None
    if not key.strip():
        raise BadRequest(f"{name} must not be empty")
    if not key.isprintable() or key != key.strip():
        raise BadRequest(f"{name} must not hold control characters or surrounding blanks")
    return key


class Decision(NamedTuple):
    """The answer to one request, with what the headers and /v1/check report."""

    allowed: bool
    remaining: int
    limit: int
    retry_after_s: float
    reset_after_s: float
    rule: Rule
    shadow_denied: bool


class Check(NamedTuple):
    """One limit of an atomic decision: `cost` for `key` under `rule` (0: look, take nothing)."""

    key: str
    cost: int
    rule: Rule


class Engine:
    """Routes keys to rules and decides locally; never touches the network.

    `limiters` holds one limiter per wire name (the rule name in state records): the
    rules in force and, until their keys are idle, retired ones whose limits changed.
    """

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
        self.base = rules  # these rules keep their plain names on the wire
        self.rules = rules
        self.limiters: dict[str, Limiter] = {}
        self.wire: dict[str, str] = {}  # rule name -> wire name
        self._active: dict[str, Limiter] = {}  # rule name -> limiter
        self._track_deletions = False
        # --max-keys bounds the keys of every rule together, not of each rule.
        self.key_budget = KeyBudget(max_keys)
        self._retired_deleted: list[tuple[str, str]] = []  # of limiters dropped since
        self.replace_rules(rules)

    def replace_rules(self, rules: RuleSet) -> list[str]:
        """Put `rules` in force; returns the names of rules whose limiter starts empty.

        A rule whose limits equal those of a limiter held (same wire name) keeps it and
        its state; changing only matching or `shadow` keeps state. A rule whose limits
        changed gets a new limiter, so every key is full under the new limits. The old
        limiter stays until its keys are idle: it ships what it admitted, keeps merging
        peers still on the old limits, and is taken up again if the limits come back.
        """
        bootstrapping = self.limiters_bootstrapping()
        active: dict[str, Limiter] = {}
        wire: dict[str, str] = {}
        fresh: list[str] = []
        for rule in rules.all():
            name = wire_name(rule, self.base)
            limiter = self.limiters.get(name)
            if limiter is None:
                limiter = self.limiters[name] = self._limiter_for(rule)
                limiter.bootstrapping = bootstrapping
                fresh.append(rule.name)
            active[rule.name] = limiter
            wire[rule.name] = name
        self.rules, self._active, self.wire = rules, active, wire
        return fresh

    def track_deletions(self) -> None:
        """From now on every limiter lists the keys it deletes as idle (`deleted_keys`)."""
        self._track_deletions = True
        for limiter in self.limiters.values():
            if limiter.deleted is None:
                limiter.deleted = []

    def deleted_keys(self) -> list[tuple[str, str]]:
        """(wire name, key) of keys deleted as idle since the last call."""
        out, self._retired_deleted = self._retired_deleted, []
        for name, limiter in self.limiters.items():
            if limiter.deleted:
                out.extend((name, key) for key in limiter.deleted)
                limiter.deleted.clear()
        return out

    def limiter(self, rule: Rule) -> Limiter:
        """The limiter in force for `rule`."""
        return self._active[rule.name]

    def _limiter_for(self, rule: Rule) -> Limiter:
        limiter = make_limiter(
            rule.algorithm,
            self.replica,
            rate=rule.rate if rule.rate is not None else 1.0,
            burst=rule.capacity,
            window=rule.window_s if rule.window_s is not None else 1.0,
            timing_=self.sync_timing,
            max_keys=self.max_keys,
            budget=self.key_budget,
            period=rule.period,
            origin=ORIGIN,  # calendar periods are UTC: the clock counts from ORIGIN
        )
        if self._track_deletions:
            limiter.deleted = []
        return limiter

    def decide(self, key: str, cost: int, rule: Rule, now: float | None = None) -> Decision:
        """Admit or deny `cost` for `key` under `rule` (shadow rules never deny)."""
        if now is None:
            now = self.clock()
        return self._decide(key, cost, rule, self._active[rule.name], now)

    def _decide(self, key: str, cost: int, rule: Rule, limiter: Limiter, now: float) -> Decision:
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

    def decide_all(
        self,
        checks: Sequence[Check],
        now: float | None = None,
        gates: Sequence[Limiter | None] = (),
    ) -> list[Decision]:
        """Admit every check or none: one decision per check, in order.

        Every limit is looked at first without consuming (costs of checks on the same
        limit and key add up); only when all admit is each cost taken. A denial takes
        nothing anywhere, and the checks that denied are answered not allowed (the others
        allowed, with nothing taken). Shadow rules never deny; checks of cost 0 only look.
        `gates[i]`, when given, is a second limiter check i must also pass (share mode's
        slice of a limit). Atomic because the event loop runs one decision at a time;
        should a take still fail after every look admitted (float noise), what was taken
        is given back and that check is the one denied.
        """
        if now is None:
            now = self.clock()
        limiters = [self._limiter_of(check.rule) for check in checks]
        gated = [gates[i] if i < len(gates) else None for i in range(len(checks))]
        needed: dict[tuple[int, str], int] = {}
        for check, limiter, gate in zip(checks, limiters, gated, strict=True):
            for held in (limiter, gate):
                if held is not None:
                    slot = (id(held), check.key)
                    needed[slot] = needed.get(slot, 0) + check.cost
        tokens: list[float] = []
        fits: list[bool] = []
        for check, limiter, gate in zip(checks, limiters, gated, strict=True):
            left = limiter.view(check.key, now).tokens
            fit = left - needed[(id(limiter), check.key)] >= -PEEK_SLACK
            if gate is not None:
                in_gate = gate.view(check.key, now).tokens
                fit = fit and in_gate - needed[(id(gate), check.key)] >= -PEEK_SLACK
                left = min(left, in_gate)
            tokens.append(left)
            fits.append(fit)
        blocked = any(not fit and not c.rule.shadow for c, fit in zip(checks, fits, strict=True))
        if blocked or all(check.cost == 0 for check in checks):
            return [
                self._looked(check, limiter, left, fit, now)
                for check, limiter, left, fit in zip(checks, limiters, tokens, fits, strict=True)
            ]
        return self._take_all(checks, limiters, gated, now)

    def _take_all(
        self,
        checks: Sequence[Check],
        limiters: Sequence[Limiter],
        gates: Sequence[Limiter | None],
        now: float,
    ) -> list[Decision]:
        taken: list[tuple[Limiter, str, int]] = []
        decisions: list[Decision] = []
        for check, limiter, gate in zip(checks, limiters, gates, strict=True):
            if check.cost == 0:
                left = limiter.view(check.key, now).tokens
                decisions.append(self._looked(check, limiter, left, left >= -PEEK_SLACK, now))
                continue
            if gate is not None:
                if gate.acquire(check.key, check.cost, now) >= 0:
                    taken.append((gate, check.key, check.cost))
                elif not check.rule.shadow:
                    return self._undo(taken, checks, limiters, check, now)
            decision = self._decide(check.key, check.cost, check.rule, limiter, now)
            if not decision.allowed:
                return self._undo(taken, checks, limiters, check, now)
            if not decision.shadow_denied:
                taken.append((limiter, check.key, check.cost))
            decisions.append(decision)
        return decisions

    def _undo(
        self,
        taken: list[tuple[Limiter, str, int]],
        checks: Sequence[Check],
        limiters: Sequence[Limiter],
        denied: Check,
        now: float,
    ) -> list[Decision]:
        for held, key, cost in taken:
            held.refund(key, cost, now)
        return [
            self._looked(
                check, limiter, limiter.view(check.key, now).tokens, check is not denied, now
            )
            for check, limiter in zip(checks, limiters, strict=True)
        ]

    def _looked(
        self, check: Check, limiter: Limiter, tokens: float, fits: bool, now: float
    ) -> Decision:
        # A check whose limit was looked at, not taken from: `remaining` is what is left
        # now; the times are those of its would-be result.
        rule = check.rule
        result = tokens - check.cost
        if fits:
            result = max(result, 0.0)  # admitted (inside the slack if below 0)
        elif result >= 0:
            result = -PEEK_SLACK  # denied for a sibling check on the same key
        retry, reset = timing(limiter, check.key, result, max(check.cost, 1), now)
        remaining = max(math.floor(tokens + 1e-6), 0)
        if fits:
            return Decision(True, remaining, rule.capacity, 0.0, reset, rule, False)
        if rule.shadow:
            return Decision(True, remaining, rule.capacity, 0.0, reset, rule, True)
        return Decision(False, remaining, rule.capacity, retry, reset, rule, False)

    def _limiter_of(self, rule: Rule) -> Limiter:
        """The limiter of a rule in force, or of a request-given limit (an override)."""
        limiter = self._active.get(rule.name)
        if limiter is not None:
            return limiter
        if rule_of_override(rule.name) != rule:
            raise UnknownRule(f"no rule named {rule.name!r} is in force")
        limiter = self._override_limiter(rule)
        if limiter is None:
            raise BadRequest(f"more than {MAX_OVERRIDES} different limit overrides are in use")
        return limiter

    def _override_limiter(self, rule: Rule) -> Limiter | None:
        limiter = self.limiters.get(rule.name)
        if limiter is None:
            held = sum(1 for name in self.limiters if name.startswith(OVERRIDE_PREFIX))
            if held >= MAX_OVERRIDES:
                return None
            bootstrapping = self.limiters_bootstrapping()
            limiter = self.limiters[rule.name] = self._limiter_for(rule)
            limiter.bootstrapping = bootstrapping
        return limiter

    def view(self, key: str, rule: Rule, now: float | None = None) -> KeyView:
        """The merged state of `key` under `rule`."""
        return self._limiter_of(rule).view(key, self.clock() if now is None else now)

    def flush(self, now: float, limit: int | None = None) -> list[tuple[str, Delta]]:
        """(rule name, delta) for every key changed since the last flush, or for about
        `limit` of them (the rest stay marked for the next call)."""
        out: list[tuple[str, Delta]] = []
        for name, limiter in self.limiters.items():
            room = None if limit is None else limit - len(out)
            if room is not None and room <= 0:
                break
            out.extend((name, delta) for delta in limiter.flush(now, limit=room))
        return out

    def forget_changes(self, now: float) -> None:
        """Clear every limiter's marks of keys changed since the last flush, building no
        deltas: a standalone node has no peers to ship them to, and a key still marked
        never counts as idle."""
        for limiter in self.limiters.values():
            limiter.flush(now, deltas=False)

    def apply(self, items: Iterable[tuple[str, Delta]], now: float) -> int:
        """Merge peers' deltas; returns how many named a rule this node does not have.

        Deltas of a known rule under limits no longer held (a retired wire name) are
        skipped without counting: they are history, not a misconfiguration.
        """
        unknown = 0
        limiters = self.limiters
        for name, delta in items:
            limiter = limiters.get(name)
            if limiter is None:
                override = rule_of_override(name)
                if override is not None:
                    limiter = self._override_limiter(override)
                if limiter is None:
                    if name.partition(WIRE_SEP)[0] not in self.wire:
                        unknown += 1
                    continue
            limiter.apply(delta, now)
        return unknown

    def sweep(self, now: float, budget: int) -> int:
        """Seal and delete idle keys across rules (dropping emptied retired limiters);
        returns keys deleted."""
        deleted = sum(limiter.sweep(now, budget) for limiter in self.limiters.values())
        live = set(self.wire.values())
        for name, limiter in list(self.limiters.items()):
            if name not in live and len(limiter) == 0 and limiter.dirty_count() == 0:
                if limiter.deleted:
                    self._retired_deleted.extend((name, key) for key in limiter.deleted)
                del self.limiters[name]
                members = self.key_budget.members
                self.key_budget.members = [m for m in members if id(m) != id(limiter)]
        return deleted

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
