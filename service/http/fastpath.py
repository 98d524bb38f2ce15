"""POST /protected and POST /v1/check as raw ASGI paths in front of FastAPI: the hot paths.

FastAPI's routing, dependency injection and response classes cost more than the decision
itself, so this middleware answers both directly (orjson in and out, the same validation
models and error bodies); everything else, and their OpenAPI description, stays FastAPI.
Every answer made here carries the request's `X-Request-ID` (taken or made), current in
the log while it is made; with tracing on, it is a span with a span per decision in it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.engine import Check, Decision, validate_key
from service.errors import BadRequest, RateLimiterError, Unavailable, UnknownRule
from service.http.contract import (
    AtomicCheckRequest,
    BatchCheckRequest,
    CheckRequest,
    CheckResult,
    rate_limited_body,
)
from service.http.errors import JSON, code_of, error_body, error_response, invalid_request
from service.http.forward import Forwarder, forwarded
from service.http.headers import ceil_ms, policy_header, ratelimit_headers
from service.node import Node
from service.observability.request_id import HEADER as REQUEST_ID_HEADER
from service.observability.request_id import RequestIds
from service.observability.request_id import current as current_request_id
from service.observability.tracing import Tracing, http_status
from service.rules.model import Rule, RuleSet

SAMPLE_EVERY = 16  # decision latency is observed for 1 request in 16
MAX_BODY_BYTES = 1 << 20  # any body; a /v1/check batch of 1,000 checks fits in a third of it
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
KEYS_PATH = "/v1/keys/"

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body
CheckBody = CheckRequest | BatchCheckRequest | AtomicCheckRequest


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

    def __init__(self, node: Node, tracing: Tracing | None = None) -> None:
        self.node = node
        self.tracing = tracing
        self.trust_tier = node.settings.trust_tier_header
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
            rule = node.rules.match(user, tier if self.trust_tier else None)
            self._count += 1
            if self._count % SAMPLE_EVERY and self.tracing is None:
                decision = node.decide(user, 1, rule)
            else:
                decision = self._observed(user, rule)
        except RateLimiterError as exc:
            return error_response(exc)
        headers = ratelimit_headers(decision, self.policies[rule.name])
        if decision.allowed:
            return 200, headers, orjson.dumps({"allowed": True, "remaining": decision.remaining})
        body = rate_limited_body(user, decision.remaining, ceil_ms(decision.retry_after_s))
        return 429, headers, body

    def _observed(self, user: str, rule: Rule) -> Decision:
        # A decision timed (1 in SAMPLE_EVERY) or traced: off the common path.
        started_ns = time.time_ns()
        started = time.perf_counter()
        decision = self.node.decide(user, 1, rule)
        if not self._count % SAMPLE_EVERY:
            self.node.metrics.decision_seconds.observe(time.perf_counter() - started)
        if self.tracing is not None:
            self.tracing.decision(user, 1, rule.name, decision, started_ns)
        return decision


class Checker:
    """Answers /v1/check: one check, a batch of checks answered in order, or several limits
    decided as one (all admitted and taken, or nothing taken)."""

    def __init__(self, node: Node, tracing: Tracing | None = None) -> None:
        self.node = node
        self.tracing = tracing

    def respond(self, body: bytes) -> Answer:
        """(status, headers, body) of one /v1/check request body."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            problem = {"loc": ["body"], "msg": f"JSON decode error: {exc}", "type": "json_invalid"}
            return 422, [], invalid_request([problem])
        request: CheckBody
        try:
            if isinstance(doc, dict) and "checks" in doc:
                request = BatchCheckRequest.model_validate(doc)
            elif isinstance(doc, dict) and "all" in doc:
                request = AtomicCheckRequest.model_validate(doc)
            else:
                request = CheckRequest.model_validate(doc)
        except ValidationError as exc:
            return 422, [], invalid_request(exc.errors(include_url=False), prefix=("body",))
        except RecursionError:
            return 400, [], error_body("bad_request", "JSON nested too deeply")
        return self.decide(request)

    def decide(self, request: CheckBody) -> Answer:
        """(status, headers, body) of a valid /v1/check request (the route's answer too)."""
        try:
            if isinstance(request, CheckRequest):
                return 200, [], orjson.dumps(self.answer(request).as_dict())
            if isinstance(request, BatchCheckRequest):
                return 200, [], orjson.dumps(self.answer_batch(request))
            return 200, [], orjson.dumps(self.answer_all(request))
        except RateLimiterError as exc:
            return error_response(exc)

    def answer(self, check: CheckRequest) -> CheckResult:
        """Decide one check; UnknownRule when `limit` names no rule."""
        rules = self.node.rules
        rule = rules.get(check.limit) if check.limit else rules.default
        tracing = self.tracing
        if tracing is None:
            return CheckResult.of(self.node.decide(check.key, check.cost, rule))
        started_ns = time.time_ns()
        decision = self.node.decide(check.key, check.cost, rule)
        tracing.decision(check.key, check.cost, rule.name, decision, started_ns)
        return CheckResult.of(decision)

    def answer_all(self, request: AtomicCheckRequest) -> dict[str, Any]:
        """Decide every check as one (`Node.decide_all`): admitted only if each limit admits,
        each cost taken only then. UnknownRule (nothing decided) when a `limit` names no rule.
        """
        rules = self.node.rules
        checks = [
            Check(check.key, check.cost, rules.get(check.limit) if check.limit else rules.default)
            for check in request.all
        ]
        started_ns = time.time_ns()
        decisions = self.node.decide_all(checks)
        results = [CheckResult.of(decision) for decision in decisions]
        denied_by = [result.rule for result in results if not result.allowed]
        if self.tracing is not None:
            for check, decision in zip(checks, decisions, strict=True):
                self.tracing.decision(check.key, check.cost, check.rule.name, decision, started_ns)
            self.tracing.denied_by(denied_by)
        return {
            "allowed": not denied_by,
            "denied_by": denied_by,
            "results": [result.as_dict() for result in results],
        }

    def answer_batch(self, batch: BatchCheckRequest) -> dict[str, Any]:
        """Decide every check in order; an unknown rule fails its own check only."""
        results: list[dict[str, Any]] = []
        for check in batch.checks:
            try:
                results.append(self.answer(check).as_dict())
            except UnknownRule as exc:
                results.append({"error": code_of(exc), "message": str(exc)})
        return {"results": results}


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when it is longer than `limit` bytes (read no further)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""  # the client went away: an empty body answers (to nobody)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes) -> Receive:
    """A `receive` handing over an already read body, then waiting for the disconnect."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # as a server does until the client goes away
        raise AssertionError("unreachable")

    return receive


def too_large(limit: int) -> Answer:
    """413 with a JSON body."""
    return 413, [], error_body("payload_too_large", f"the body is longer than {limit} bytes")


async def send_answer(send: Send, answer: Answer, request_id: str | None = None) -> None:
    """Send a whole JSON response from raw ASGI (with `X-Request-ID` when given)."""
    status, headers, body = answer
    if request_id is None:
        headers = [*headers, (b"content-type", JSON), (b"content-length", b"%d" % len(body))]
    else:
        headers = [
            *headers,
            (b"content-type", JSON),
            (b"content-length", b"%d" % len(body)),
            (REQUEST_ID_HEADER, request_id.encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def traced(
    tracing: Tracing,
    path: str,
    headers: list[tuple[bytes, bytes]],
    request_id: str,
    respond: Callable[[], Answer],
) -> Answer:
    """`respond()` inside the request span of POST `path` (child of its `traceparent`)."""
    attributes = {"http.request.method": "POST", "http.route": path, "url.path": path}
    with tracing.request(f"POST {path}", headers, request_id, attributes) as span:
        answer = respond()
        http_status(span, answer[0])
    return answer


def request_ids_of(app: ASGIApp, node: Node) -> RequestIds:
    """The request ids of `app` (those of `create_app`), else new ones for `node`."""
    ids = getattr(app, "request_ids", None)
    return ids if isinstance(ids, RequestIds) else RequestIds(node.settings.node_id)


async def send_forwarded(send: Send, answer: Answer) -> None:
    """Send an owner's answer as it came (its own Content-Type among its headers)."""
    status, headers, body = answer
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _check_keys(body: bytes) -> list[str] | None:
    """The keys a /v1/check body decides: one, or those of a batch (`checks`) or an atomic
    check (`all`), in order; None when the body is not one (answered here, as 400)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    items = doc.get("checks", doc.get("all"))
    if items is None:
        items = [doc]
    if not isinstance(items, list) or not items:
        return None
    keys: list[str] = []
    for item in items:
        key = item.get("key") if isinstance(item, dict) else None
        if not isinstance(key, str) or not key:
            return None
        keys.append(key)
    return keys


class Router:
    """Sends requests for users this node does not answer for (--replicas N) to a member
    that does: /protected, /v1/check (a batch or an atomic check goes whole to a node
    answering for all its keys, or is refused with 400 when none does) and
    GET /v1/keys/{key}."""

    def __init__(self, node: Node, forwarder: Forwarder) -> None:
        assert node.placement is not None
        self.placement = node.placement
        self.forwarder = forwarder
        self.closed = node.settings.fail_mode == "closed"

    async def answer(self, scope: Scope, body: bytes | None) -> tuple[Answer, bool] | None:
        """(answer, forwarded) when the request was forwarded (or refused under fail mode
        closed with no owner reachable); None: answer it here."""
        method, path, headers = scope["method"], scope["path"], scope["headers"]
        keys: list[str] | None = None
        if method == "POST" and path == "/protected":
            try:
                keys = [parse_user(headers)[0]]
            except BadRequest:
                return None  # answered here, as 400
        elif method == "POST" and path == "/v1/check" and body is not None:
            keys = _check_keys(body)
        elif method == "GET" and path.startswith(KEYS_PATH):
            keys = [path[len(KEYS_PATH) :]]
        if not keys or not all(keys) or forwarded(headers):
            return None
        placement = self.placement
        targets = placement.route(keys[0]) if len(keys) == 1 else placement.route_all(keys)
        if targets is None:
            return None
        if not targets and len(keys) > 1 and placement.spans_owners(keys):
            self.forwarder.outcomes.labels("spans_owners").inc()
            split = BadRequest(
                "with --replicas N one node must answer for every key of a batch, and no "
                "node answers for all of these (their partitions are owned by different "
                "nodes): send them in separate requests, or in batches of keys that share "
                "a partition"
            )
            return error_response(split), False
        target = scope.get("raw_path") or path.encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        answer = await self.forwarder.forward(targets, method, target, headers, body or b"")
        if answer is not None:
            return answer, True
        if self.closed:
            refused = Unavailable(
                "no node answering for this user is reachable and this node runs with "
                "--fail-mode closed"
            )
            return error_response(refused), False
        return None


class FastPath:
    """ASGI middleware: answers POST /protected and /v1/check itself, passes the rest on;
    with a `router`, first forwards requests for users other members answer for.

    Its answers carry request ids from `request_ids` (by default the app's own, so ids
    never repeat between the two) and spans from the Protector's tracing.
    """

    def __init__(
        self,
        app: ASGIApp,
        protector: Protector,
        checker: Checker,
        router: Router | None = None,
        *,
        request_ids: RequestIds | None = None,
    ) -> None:
        self.app = app
        self.protector = protector
        self.checker = checker
        self.tracing = protector.tracing
        self.request_ids = request_ids or request_ids_of(app, protector.node)
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.router is not None:
            if scope["method"] in BODY_METHODS and scope["path"] != "/protected":
                body = await read_body(scope, receive, MAX_BODY_BYTES)
                if body is None:
                    await send_answer(send, too_large(MAX_BODY_BYTES))
                    return
                receive = replay(body)
            else:
                body = None
            routed = await self.router.answer(scope, body)
            if routed is not None:
                answer, was_forwarded = routed
                await (send_forwarded if was_forwarded else send_answer)(send, answer)
                return
        # The id is current while the answer is made (its log lines), not while it is sent;
        # written out per route: a shared coroutine would cost a microsecond per request.
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path == "/protected":
                headers = scope["headers"]
                rid = self.request_ids.take(headers)
                token = current_request_id.set(rid)
                try:
                    if self.tracing is None:
                        answer = self.protector.respond(headers)
                    else:
                        answer = self._traced_protected(headers, rid)
                finally:
                    current_request_id.reset(token)
                await send_answer(send, answer, rid)
                return
            if path == "/v1/check":
                body = await read_body(scope, receive, MAX_BODY_BYTES)
                headers = scope["headers"]
                rid = self.request_ids.take(headers)
                token = current_request_id.set(rid)
                try:
                    if body is None:
                        answer = too_large(MAX_BODY_BYTES)
                    elif self.tracing is None:
                        answer = self.checker.respond(body)
                    else:
                        answer = self._traced_check(headers, rid, body)
                finally:
                    current_request_id.reset(token)
                await send_answer(send, answer, rid)
                return
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            # Every other body is read here first, up to the cap: FastAPI would read it all.
            body = await read_body(scope, receive, MAX_BODY_BYTES)
            if body is None:
                rid = self.request_ids.take(scope["headers"])
                await send_answer(send, too_large(MAX_BODY_BYTES), rid)
                return
            receive = replay(body)
        await self.app(scope, receive, send)

    def _traced_protected(self, headers: list[tuple[bytes, bytes]], rid: str) -> Answer:
        assert self.tracing is not None
        respond = self.protector.respond
        return traced(self.tracing, "/protected", headers, rid, lambda: respond(headers))

    def _traced_check(self, headers: list[tuple[bytes, bytes]], rid: str, body: bytes) -> Answer:
        assert self.tracing is not None
        respond = self.checker.respond
        return traced(self.tracing, "/v1/check", headers, rid, lambda: respond(body))
