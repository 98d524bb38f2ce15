"""POST /protected as a raw ASGI path in front of FastAPI: the per-request hot path.

FastAPI's routing, dependency injection and response classes cost more than the decision
itself, so this middleware answers /protected directly; everything else (and the OpenAPI
description of /protected) stays FastAPI.
"""

from __future__ import annotations

import time

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from service.engine import validate_key
from service.errors import BadRequest, RateLimiterError
from service.http.contract import rate_limited_body
from service.http.errors import JSON, error_response
from service.http.headers import ceil_ms, policy_header, ratelimit_headers
from service.node import Node
from service.rules.model import RuleSet

SAMPLE_EVERY = 16  # decision latency is observed for 1 request in 16

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body


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
    return validate_key(raw, "X-User-ID"), _tier(tier)


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
        self.policies: dict[str, bytes] = {}
        self.refresh_policies(node.rules)
        node.rules_listeners.append(self.refresh_policies)
        self._count = 0

    def refresh_policies(self, rules: RuleSet) -> None:
        """Precompute each rule's RateLimit-Policy header (again when the rules change)."""
        self.policies = {rule.name: policy_header(rule) for rule in rules.all()}

    def respond(self, raw_headers: list[tuple[bytes, bytes]]) -> Answer:
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
            return error_response(exc)
        headers = ratelimit_headers(decision, self.policies[rule.name])
        if decision.allowed:
            return 200, headers, orjson.dumps({"allowed": True, "remaining": decision.remaining})
        body = rate_limited_body(user, decision.remaining, ceil_ms(decision.retry_after_s))
        return 429, headers, body


async def send_answer(send: Send, answer: Answer) -> None:
    """Send a whole JSON response from raw ASGI."""
    status, headers, body = answer
    headers = [
        *headers,
        (b"content-type", JSON),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FastPath:
    """ASGI middleware: answers POST /protected itself, passes everything else on."""

    def __init__(self, app: ASGIApp, protector: Protector) -> None:
        self.app = app
        self.protector = protector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/protected" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        await send_answer(send, self.protector.respond(scope["headers"]))
