"""Limit rules: the default limit, rules matched by key prefix or tier, named limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crdt.limiter import RuleAlgorithm
from crdt.periods import PERIOD_SECONDS, CalendarUnit
from crdt.policy import bucket_problem, window_problem
from service.errors import ConfigError, UnknownRule
from service.rules.descriptor import EnvoyDescriptor

RULE_NAME_MAX = 64
RULE_NAME = rf"^[A-Za-z0-9._-]{{1,{RULE_NAME_MAX}}}$"
DEFAULT_RULE = "default"
MAX_RULES = 1000  # named rules besides the default


class InvalidRule(ConfigError):
    """A rule given to the rules topic (CLI, admin endpoint) is invalid; the message says why."""

    http_status = 422


class Rule(BaseModel):
    """One limit: a token bucket (rate, burst), a window (limit per window_s) or a
    calendar quota (limit per UTC minute, hour, day, week or month: `period`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=RULE_NAME)
    algorithm: RuleAlgorithm = "token_bucket"
    rate: float | None = Field(None, gt=0, allow_inf_nan=False)
    burst: int | None = Field(None, ge=1, le=10**12)
    limit: int | None = Field(None, ge=1, le=10**12)
    window_s: float | None = Field(None, gt=0, le=86_400 * 366, allow_inf_nan=False)
    period: CalendarUnit | None = None  # of calendar rules
    prefix: str | None = Field(None, min_length=1, max_length=256)
    tier: str | None = Field(None, min_length=1, max_length=64)
    shadow: bool = False
    # Set on rules from Envoy ratelimit configuration: the descriptor they answer (gRPC).
    envoy: EnvoyDescriptor | None = None

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.algorithm != "calendar" and self.period is not None:
            raise ValueError("period belongs to calendar rules")
        if self.algorithm == "token_bucket":
            if self.rate is None or self.burst is None:
                raise ValueError("a token_bucket rule needs rate and burst")
            if self.limit is not None or self.window_s is not None:
                raise ValueError("limit and window_s belong to window rules")
            # Every header, epoch and floor derived from the rule must stay finite.
            problem = bucket_problem(self.rate, self.burst)
        elif self.algorithm == "calendar":
            if self.limit is None or self.period is None:
                raise ValueError("a calendar rule needs limit and period")
            if self.rate is not None or self.burst is not None or self.window_s is not None:
                raise ValueError("a calendar rule takes limit and period only")
            problem = window_problem(PERIOD_SECONDS[self.period])
        else:
            if self.limit is None or self.window_s is None:
                raise ValueError(f"a {self.algorithm} rule needs limit and window_s")
            if self.rate is not None or self.burst is not None:
                raise ValueError("rate and burst belong to token_bucket rules")
            problem = window_problem(self.window_s)
        if problem:
            raise ValueError(problem)
        if self.prefix is not None and self.tier is not None:
            raise ValueError("match by prefix or by tier, not both")
        return self

    @property
    def limits(self) -> tuple[str | float | int | None, ...]:
        """What the limiter's state depends on (matching and shadow do not)."""
        limits = (self.algorithm, self.rate, self.burst, self.limit, self.window_s)
        # Only calendar rules add their period: other rules keep the digest in their wire
        # names (service.engine.wire_name) that nodes of earlier versions compute.
        return limits if self.period is None else (*limits, self.period)

    @property
    def capacity(self) -> int:
        """Most cost admitted at once: burst, or the window's limit."""
        value = self.burst if self.algorithm == "token_bucket" else self.limit
        assert value is not None
        return value

    @property
    def window(self) -> float:
        """Seconds over which `capacity` is granted (a bucket refills fully in burst/rate;
        a calendar period is stated at its longest, 31 days for a month)."""
        if self.period is not None:
            return float(PERIOD_SECONDS[self.period])
        if self.algorithm == "token_bucket":
            assert self.rate is not None
            assert self.burst is not None
            return self.burst / self.rate
        assert self.window_s is not None
        return self.window_s


class RuleSet(BaseModel):
    """The default rule plus named rules; the first matching rule applies to a user."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default: Rule
    # Matching walks the rules in order: beyond this many, refuse them with a clear error.
    rules: tuple[Rule, ...] = Field((), max_length=MAX_RULES)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [self.default.name, *(r.name for r in self.rules)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique, repeated: {', '.join(duplicates)}")
        if self.default.prefix is not None or self.default.tier is not None:
            raise ValueError("the default rule applies to everyone: no prefix or tier")
        return self

    def all(self) -> tuple[Rule, ...]:
        """Every rule, default first."""
        return (self.default, *self.rules)

    def get(self, name: str) -> Rule:
        """A rule by name, or UnknownRule."""
        for rule in self.all():
            if rule.name == name:
                return rule
        raise UnknownRule(f"no rule named {name!r}; known: {', '.join(r.name for r in self.all())}")

    def match(self, user: str, tier: str | None = None) -> Rule:
        """The rule for a user: first prefix or tier match, else the default."""
        for rule in self.rules:
            if rule.prefix is not None and user.startswith(rule.prefix):
                return rule
            if rule.tier is not None and tier == rule.tier:
                return rule
        return self.default


def default_rule(algorithm: str, rate: float, burst: int, window_s: float) -> Rule:
    """The default rule from the node's --algorithm/--rate/--burst/--window-s settings."""
    if algorithm == "token_bucket":
        return Rule(name=DEFAULT_RULE, rate=rate, burst=burst)
    return Rule.model_validate(
        {"name": DEFAULT_RULE, "algorithm": algorithm, "limit": burst, "window_s": window_s}
    )


def rule_from_mapping(data: Any, name: str | None = None) -> Rule:
    """Validate one rule (as sent to the rules topic); InvalidRule says what is wrong.

    `name`, when given (a URL path, a record key), fills in a missing name and must
    match a given one. The default rule applies to everyone: no prefix or tier.
    """
    if not isinstance(data, Mapping):
        raise InvalidRule(f"a rule is a JSON object, got {type(data).__name__}")
    document = dict(data)
    if name is not None:
        given = document.setdefault("name", name)
        if given != name:
            raise InvalidRule(f"the rule is named {given!r} but was sent as {name!r}")
    label = document.get("name", "?")
    try:
        rule = Rule.model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            where = ".".join(str(p) for p in error["loc"])
            problems.append(f"{where}: {message}" if where else message)
        raise InvalidRule(f"invalid rule {label!r}: " + "; ".join(problems)) from exc
    if rule.name == DEFAULT_RULE and (rule.prefix is not None or rule.tier is not None):
        raise InvalidRule("the default rule applies to everyone: no prefix or tier")
    return rule


def overlay(base: RuleSet, overrides: Mapping[str, Rule]) -> RuleSet:
    """`base` (the --rules file) with `overrides` (the rules topic) applied by name.

    A topic rule replaces the file rule of the same name in place (the default too);
    topic-only rules follow the file's rules, in name order, so every node matches
    users against the same list.
    """
    names = {rule.name for rule in base.rules}
    return RuleSet(
        default=overrides.get(DEFAULT_RULE, base.default),
        rules=(
            *(overrides.get(rule.name, rule) for rule in base.rules),
            *(overrides[n] for n in sorted(overrides) if n != DEFAULT_RULE and n not in names),
        ),
    )
