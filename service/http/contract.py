"""The decision API's contract, defined once: `/v1/check`'s request and answer (also the
library's result and the OpenAPI schema) and the 429 body every limited request gets."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from pydantic.json_schema import SkipJsonSchema

from service.engine import MAX_KEY_BYTES, Decision, validate_key
from service.errors import BadRequest
from service.http.headers import ceil_ms, policy_header, ratelimit_headers
from service.rules.model import RULE_NAME_MAX

MAX_COST = 10**12
MAX_BATCH = 1000  # checks in one POST /v1/check {"checks": [...]}
MAX_ALL = 64  # limits in one POST /v1/check {"all": [...]} (as descriptors in ShouldRateLimit)

_policy = functools.lru_cache(maxsize=1024)(policy_header)


class CheckRequest(BaseModel):
    """POST /v1/check: may `key` spend `cost` under rule `limit` (default rule when absent)?"""

    model_config = ConfigDict(extra="forbid")

    key: StrictStr = Field(min_length=1, max_length=MAX_KEY_BYTES)
    cost: StrictInt = Field(1, ge=1, le=MAX_COST)
    limit: StrictStr | None = Field(None, min_length=1, max_length=RULE_NAME_MAX)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        try:
            return validate_key(value, "key")
        except BadRequest as exc:
            raise ValueError(str(exc)) from None  # a field error: 422 like every other


class BatchCheckRequest(BaseModel):
    """POST /v1/check with several checks, decided one after the other and answered in order."""

    model_config = ConfigDict(extra="forbid")

    checks: list[CheckRequest] = Field(min_length=1, max_length=MAX_BATCH)


class AtomicCheckRequest(BaseModel):
    """POST /v1/check with several limits decided as one: admitted only if every check is,
    and only then is each cost taken; a denial takes nothing from any limit."""

    model_config = ConfigDict(extra="forbid")

    all: list[CheckRequest] = Field(min_length=1, max_length=MAX_ALL)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One decision as `POST /v1/check` answers it and `RateLimiter.check` returns it.

    Times are milliseconds; `retry_after_ms` is None when the cost can never fit. In
    process only (not in the HTTP body or schema): `shadow_denied`, True when a shadow
    rule would have denied (the request is allowed), and the engine's `decision`.
    """

    allowed: bool
    remaining: int
    limit: int
    retry_after_ms: int | None
    reset_after_ms: int
    rule: str
    shadow_denied: SkipJsonSchema[bool] = False
    decision: SkipJsonSchema[Decision | None] = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, decision: Decision) -> CheckResult:
        """The result of an engine decision."""
        return cls(
            allowed=decision.allowed,
            remaining=decision.remaining,
            limit=decision.limit,
            retry_after_ms=ceil_ms(decision.retry_after_s),
            reset_after_ms=ceil_ms(decision.reset_after_s) or 0,
            rule=decision.rule.name,
            shadow_denied=decision.shadow_denied,
            decision=decision,
        )

    def as_dict(self) -> dict[str, Any]:
        """The `POST /v1/check` response body."""
        return {
            "allowed": self.allowed,
            "remaining": self.remaining,
            "limit": self.limit,
            "retry_after_ms": self.retry_after_ms,
            "reset_after_ms": self.reset_after_ms,
            "rule": self.rule,
        }

    def headers(self) -> list[tuple[bytes, bytes]]:
        """RateLimit-Policy, RateLimit and (when denied) Retry-After, as a node sends them."""
        assert self.decision is not None, "headers() needs a result made by CheckResult.of"
        return ratelimit_headers(self.decision, _policy(self.decision.rule))


@dataclass(frozen=True, slots=True)
class CheckError:
    """A check of a batch that could not be decided (an unknown rule)."""

    error: str
    message: str


@dataclass(frozen=True, slots=True)
class BatchCheckResult:
    """The answers of several checks in their order: of a batch (`{"checks": [...]}`), or of
    an atomic check (`{"all": [...]}`), which also gives its verdict.

    `allowed` and `denied_by` come only with `{"all": [...]}`: `allowed` is true when every
    check admitted (each cost was taken), false when any denied (nothing was taken);
    `denied_by` names the rules of the checks that denied, in order. There each result's
    `allowed` says whether its own limit would have admitted.
    """

    results: list[CheckResult | CheckError]
    allowed: bool | None = None
    denied_by: list[str] | None = None


def rate_limited_body(key: str, remaining: int, retry_after_ms: int | None) -> bytes:
    """The JSON body of every 429: /protected, the middleware and the dependency."""
    return orjson.dumps(
        {
            "error": "rate_limited",
            "message": f"rate limit exceeded for {key!r}",
            "allowed": False,
            "remaining": remaining,
            "retry_after_ms": retry_after_ms,
        }
    )
