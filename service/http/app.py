"""The FastAPI application of a node: routes, error mapping, lifespan, the /protected fast path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import orjson
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from service.bootstrap import build_node
from service.engine import MAX_KEY_BYTES
from service.errors import BadRequest, Unavailable, UnknownRule
from service.http import errors
from service.http.auth import require_admin
from service.http.contract import (
    MAX_COST,
    AtomicCheckRequest,
    BatchCheckRequest,
    BatchCheckResult,
    CheckRequest,
    CheckResult,
)
from service.http.correlation import NodeApp
from service.http.dashboard import dashboard_router
from service.http.fastpath import Answer, Checker, FastPath, Protector, Router, traced
from service.http.forward import Forwarder
from service.node import Node
from service.observability.request_id import RequestIds
from service.observability.request_id import current as current_request_id
from service.observability.tracing import Tracing, tracing_from_env
from service.replication import handoff
from service.rules.model import RULE_NAME_MAX, Rule, rule_from_mapping
from service.settings import Settings


class RefundRequest(BaseModel):
    """POST /v1/refund (admin): give back `cost` admitted for `key` under `limit`."""

    model_config = ConfigDict(extra="forbid")

    key: StrictStr = Field(min_length=1, max_length=MAX_KEY_BYTES)
    cost: StrictInt = Field(ge=1, le=MAX_COST)
    limit: StrictStr | None = Field(None, min_length=1, max_length=RULE_NAME_MAX)


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _answer(answer: Answer) -> Response:
    status, headers, body = answer
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={k.decode(): v.decode() for k, v in headers},
    )


def create_app(
    settings: Settings, node: Node | None = None, *, tracing: Tracing | None = None
) -> FastAPI:
    """The app for one node; `node` is built from `settings` unless given (tests).

    With `tracing`, every decision is a span (see `service.observability.tracing`);
    every answer carries an `X-Request-ID` either way.
    """
    node = node if node is not None else build_node(settings)

    forwarder: Forwarder | None = None
    if node.placement is not None:
        forwarder = Forwarder(settings.node_id, node.metrics, settings.forward_timeout_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()
            if tracing is not None:
                tracing.shutdown()  # exports the spans still buffered
            if forwarder is not None:
                forwarder.close()

    app = NodeApp(
        title="Kafka CRDT rate limiter",
        version="0.1.0",
        summary="Local token-bucket decisions, consumption replicated as CRDT deltas on Kafka",
        lifespan=lifespan,
    )
    app.request_ids = RequestIds(settings.node_id)
    app.state.node = node
    app.state.tracing = tracing
    errors.install(app)
    protector = Protector(node, tracing)
    checker = Checker(node, tracing)

    @app.post(
        "/protected",
        responses={
            200: {"description": "admitted"},
            400: {"description": "missing, empty or oversized X-User-ID"},
            429: {"description": "rate limited; see Retry-After"},
            503: {"description": "not ready yet"},
        },
    )
    async def protected(
        request: Request,
        # Documented only: the Protector validates it, so a bad id is 400 as on the fast path.
        x_user_id: Annotated[
            str | None, Header(description=f"1-{MAX_KEY_BYTES} bytes of UTF-8")
        ] = None,
        x_user_tier: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Admit (200) or deny (429) one request for X-User-ID, with RateLimit headers.

        Served by a raw ASGI fast path in production; this route documents it and
        answers identically when the fast path is bypassed.
        """
        raw = list(request.headers.raw)
        if tracing is None:
            return _answer(protector.respond(raw))
        rid = current_request_id.get()
        return _answer(traced(tracing, "/protected", raw, rid, lambda: protector.respond(raw)))

    @app.post(
        "/v1/check",
        response_model=CheckResult | BatchCheckResult,
        responses={413: {"description": "the body is longer than 1 MiB"}},
    )
    async def check(
        body: CheckRequest | BatchCheckRequest | AtomicCheckRequest, request: Request
    ) -> Response:
        """Decide `cost` for `key` under the named `limit` (a cost above capacity is denied);
        with `{"checks": [...]}`, decide each in order and answer `{"results": [...]}`;
        with `{"all": [...]}`, decide every limit as one: admitted only if each admits, each
        cost taken only then (a denial takes nothing), answered `{"allowed", "denied_by",
        "results"}`.

        Served by a raw ASGI fast path in production; this route documents it and
        answers identically when the fast path is bypassed.
        """
        if tracing is None:
            return _answer(checker.decide(body))
        raw, rid = list(request.headers.raw), current_request_id.get()
        return _answer(traced(tracing, "/v1/check", raw, rid, lambda: checker.decide(body)))

    @app.post("/v1/refund", responses={401: {"description": "missing or wrong bearer token"}})
    async def refund(
        body: RefundRequest, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        """Admin: give up to `cost` back to `key` (a PN-counter decrement replicated to
        peers): at most what this node admitted for the key in the current epoch, so a
        refund never frees more than was consumed. `refunded` says how much was."""
        require_admin(settings, authorization)
        rule = node.rules.get(body.limit) if body.limit else node.rules.default
        refunded = node.engine.limiter(rule).refund(body.key, body.cost, node.clock())
        view = node.engine.view(body.key, rule)
        return _json(
            {
                "key": body.key,
                "rule": rule.name,
                "refunded": refunded,
                "tokens": round(view.tokens, 6),
            }
        )

    @app.get("/v1/keys/{key}")
    async def key_state(
        key: str,
        limit: Annotated[str | None, Query(min_length=1, max_length=RULE_NAME_MAX)] = None,
    ) -> Response:
        """This node's merged view of `key`: consumption per replica and tokens now."""
        if len(key.encode()) > MAX_KEY_BYTES:
            raise BadRequest(f"key is longer than {MAX_KEY_BYTES} bytes")
        rule = node.rules.get(limit) if limit else node.rules.default
        view = node.engine.view(key, rule)
        return _json(
            {
                "key": key,
                "rule": rule.name,
                "consumed": view.consumed,
                "contributions": view.contributions,
                "tokens": round(view.tokens, 6),
                "capacity": rule.capacity,
                "open_epochs": view.open_epochs,
                "node": node.settings.node_id,
                "replica": node.replica,
            }
        )

    @app.get(
        handoff.PATH,
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "every key's state and the topic offsets it covers, as "
                "newline-delimited JSON: a header, chunks of rows, an end line (what "
                "--bootstrap-from loads)",
                "content": {handoff.MEDIA_TYPE: {}},
            },
            401: {"description": "missing or wrong bearer token"},
            503: {"description": "not ready (or standalone): no state that covers the topic"},
        },
    )
    async def state(authorization: Annotated[str | None, Header()] = None) -> Response:
        """Admin: this node's whole state for a new node to start from (--bootstrap-from),
        streamed in chunks between which requests are answered."""
        require_admin(settings, authorization)
        replicator = node.replicator
        if replicator is None:
            raise Unavailable("a standalone node reads no state topic: nothing to hand over")
        if not node.ready:
            raise Unavailable("the node is still reading the state topic (see /readyz)")
        offsets = dict(replicator.merged_offsets)  # before any key is exported
        lines = handoff.state_lines(
            node.engine, replicator.topic, replicator.log.partitions, offsets
        )
        return StreamingResponse(lines, media_type=handoff.MEDIA_TYPE)

    @app.get("/v1/rules")
    async def list_rules() -> Response:
        """The rules in force, first match first: from the --rules file or the rules topic."""
        return _json(
            {
                "rules": [
                    {
                        **rule.model_dump(exclude_none=True),
                        "source": "topic" if rule.name in node.topic_rules else "file",
                        "wire": node.engine.wire[rule.name],
                    }
                    for rule in node.rules.all()
                ],
                "rules_topic": None if node.rules_feed is None else settings.rules_topic,
            }
        )

    @app.put("/v1/rules/{name}", responses={401: {"description": "missing or wrong token"}})
    async def put_rule(
        name: str, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        """Admin: put a rule (JSON body) on the rules topic; every node applies it."""
        require_admin(settings, authorization)
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from exc
        rule = rule_from_mapping(data, name)
        applied = await node.change_rule(name, rule)
        return _json({"rule": rule.model_dump(exclude_none=True), "applied": applied})

    @app.delete("/v1/rules/{name}", responses={401: {"description": "missing or wrong token"}})
    async def delete_rule(
        name: str, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        """Admin: delete a rule override from the rules topic (a file rule comes back)."""
        require_admin(settings, authorization)
        if name not in node.topic_rules:
            raise UnknownRule(
                f"no rule {name!r} on the rules topic (rules of the --rules file can be "
                "overridden, not deleted)"
            )
        applied = await node.change_rule(name, None)
        restored: Rule | None = next((r for r in node.rules.all() if r.name == name), None)
        return _json(
            {
                "deleted": name,
                "applied": applied,
                "now": None if restored is None else restored.model_dump(exclude_none=True),
            }
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        """The process is alive."""
        return _json({"status": "ok", "node": node.settings.node_id})

    @app.get("/readyz")
    async def readyz() -> Response:
        """200 once bootstrapped from the state topic (at once when standalone) and while no
        background task keeps failing; 503 with the reason otherwise."""
        ready = node.ready and node.failing is None
        body = {
            "ready": ready,
            "node": node.settings.node_id,
            "replica": node.replica,
            "standalone": node.settings.standalone,
            "mode": node.mode,
        }
        if node.settings.region is not None:
            body["region"] = node.settings.region
            body["regions"] = {view["region"]: view["state"] for view in node.regions_view()}
        reason = node.fatal or node.failing
        if not ready and not reason:
            reason = node.phase  # still starting: what it is waiting for
        if reason:
            body["error"] = reason
        if node.fatal:
            body["fatal"] = True  # it will not become ready by waiting: restart needed
        return _json(body, 200 if ready else 503)

    @app.get("/v1/regions")
    async def regions() -> Response:
        """This node's region and each remote one it merges: its mirrored topics, lag
        (seconds since its newest record merged here was written), and whether it is
        fresh (lag within --region-stale-s), stale or still being read."""
        return _json(
            {
                "region": node.settings.region,
                "fail_mode": node.settings.region_fail_mode,
                "stale_after_s": node.settings.region_stale_s,
                "mode": node.mode,
                "regions": node.regions_view(),
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(node.metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(dashboard_router(node))
    app.state.protector = protector
    app.state.checker = checker
    app.state.router = Router(node, forwarder) if forwarder is not None else None
    return app


def create_asgi(settings: Settings) -> FastPath:
    """What uvicorn serves: the /protected and /v1/check fast paths in front of the app.

    Outside FastAPI's middleware stack on purpose: Starlette's per-request wrapping costs
    more than the decision. Every other path (and the lifespan) goes to FastAPI. Tracing
    is on when an OTEL_* variable is set (`tracing_from_env`).
    """
    salt = settings.trace_key_salt
    tracing = tracing_from_env(
        settings.node_id, salt.get_secret_value().encode() if salt is not None else None
    )
    app = create_app(settings, tracing=tracing)
    return FastPath(app, app.state.protector, app.state.checker, app.state.router)
