"""POST /protected as a raw ASGI path in front of FastAPI: the per-request hot path.

FastAPI's routing, dependency injection and response classes cost more than the decision
itself, so this middleware answers /protected directly; everything else (and the OpenAPI
description of /protected) stays FastAPI.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from service.engine import Decision
from service.errors import BadRequest, RateLimiterError
from service.http_errors import JSON, code_of, error_body, status_of
from service.node import Node
from service.rules import Rule

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_USER_ID_BYTES = 256
SAMPLE_EVERY = 16  # decision latency is observed for 1 request in 16
# Durations are differences of clock readings and carry float noise (2.0000000000000226 s
# for an empty bucket of 20 at 10/s): rounding up must not turn that into 3 s or 2001 ms.
_NOISE_S = 1e-6


def ceil_seconds(seconds: float) -> int:
    """Whole seconds rounded up, ignoring float noise below a microsecond."""
    return math.ceil(seconds - _NOISE_S)


def ceil_ms(seconds: float) -> int | None:
    """Milliseconds rounded up (None for never), ignoring float noise below a microsecond."""
    return None if math.isinf(seconds) else math.ceil((seconds - _NOISE_S) * 1000)


def policy_header(rule: Rule) -> bytes:
    """`RateLimit-Policy` (IETF httpapi ratelimit-headers): quota q per window w seconds."""
    return f'"{rule.name}";q={rule.capacity};w={max(1, ceil_seconds(rule.window))}'.encode()


@functools.lru_cache(maxsize=65536)
def _ratelimit_values(rule: str, remaining: int, reset: int, retry: int) -> tuple[bytes, bytes]:
    return f'"{rule}";r={remaining};t={reset}'.encode(), str(retry).encode()


def ratelimit_headers(decision: Decision, policy: bytes) -> list[tuple[bytes, bytes]]:
    """RateLimit-Policy, RateLimit (remaining r, seconds to full t), on 429 Retry-After."""
    reset = max(0, ceil_seconds(decision.reset_after_s))
    retry = 0
    if not decision.allowed:
        seconds = decision.retry_after_s
        retry = 86_400 if math.isinf(seconds) else max(1, ceil_seconds(seconds))
    # Cached: the header values repeat (remaining 0..burst, a few reset/retry seconds).
    ratelimit, retry_after = _ratelimit_values(decision.rule.name, decision.remaining, reset, retry)
    headers = [(b"ratelimit-policy", policy), (b"ratelimit", ratelimit)]
    if retry:
        headers.append((b"retry-after", retry_after))
    return headers


def parse_user(headers: list[tuple[bytes, bytes]]) -> tuple[str, str | None]:
    """(user, tier) from X-User-ID and X-User-Tier; BadRequest when the id is unusable."""
    raw: bytes | None = None
    tier: bytes | None = None
    for name, value in headers:
        if name == b"x-user-id":
            if raw is not None:
                raise BadRequest("send exactly one X-User-ID header")
            raw = value
        elif name == b"x-user-tier":
            tier = value
    if raw is None:
        raise BadRequest("the X-User-ID header is required")
    if len(raw) > MAX_USER_ID_BYTES:
        raise BadRequest(f"X-User-ID is longer than {MAX_USER_ID_BYTES} bytes")
    return validate_user_id(raw), _tier(tier)


def validate_user_id(raw: bytes) -> str:
    """A user id: 1-256 bytes of UTF-8 without control characters or surrounding blanks."""
    try:
        user = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("X-User-ID must be UTF-8") from None
    if not user.strip():
        raise BadRequest("X-User-ID must not be empty")
    if not user.isprintable() or user != user.strip():
        raise BadRequest("X-User-ID must not hold control characters or surrounding blanks")
    return user


def _tier(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("ascii") or None
    except UnicodeDecodeError:
        raise BadRequest("X-User-Tier must be ASCII") from None


class Protector:
    """Answers /protected: parse the user, decide, build status, headers and body."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.policies = {rule.name: policy_header(rule) for rule in node.rules.all()}
        self._count = 0

    def respond(
        self, raw_headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) of one /protected request."""
        node = self.node
        try:
            user, tier = parse_user(raw_headers)
            rule = node.rules.match(user, tier)
            self._count += 1
            if self._count % SAMPLE_EVERY:
                decision = node.decide(user, 1, rule)
            else:
                started = time.perf_counter()
                decision = node.decide(user, 1, rule)
                node.metrics.decision_seconds.observe(time.perf_counter() - started)
        except RateLimiterError as exc:
            status = status_of(exc)
            headers = [(b"retry-after", b"1")] if status == 503 else []
            return status, headers, error_body(code_of(exc), str(exc))
        headers = ratelimit_headers(decision, self.policies[rule.name])
        if decision.allowed:
            return 200, headers, orjson.dumps({"allowed": True, "remaining": decision.remaining})
        body = orjson.dumps(
            {
                "allowed": False,
                "remaining": decision.remaining,
                "error": "rate_limited",
                "message": f"rate limit exceeded for {user!r}",
                "retry_after_ms": ceil_ms(decision.retry_after_s),
            }
        )
        return 429, headers, body


class FastPath:
    """ASGI middleware: answers POST /protected itself, passes everything else on."""

    def __init__(self, app: ASGIApp, protector: Protector) -> None:
        self.app = app
        self.protector = protector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/protected" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        status, headers, body = self.protector.respond(scope["headers"])
        headers.append((b"content-type", JSON))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
