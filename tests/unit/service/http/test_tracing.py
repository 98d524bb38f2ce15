"""Spans of HTTP decisions (in-memory exporter): one SERVER span per request, child of the
caller's `traceparent`, one `ratelimit.decision` span per decision with rule, outcome,
cost and hashed key; the raw key appears nowhere. Fast path and route alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from service.bootstrap import build_node
from service.http.app import create_app
from service.observability.tracing import COST, DENIED_BY, KEY_HASH, OUTCOME, REQUEST_ID, RULE
from service.testing import ManualClock
from tests.service_helpers import clean_env, served, standalone_settings
from tests.tracing_helpers import (
    PARENT_SPAN_ID,
    TRACE_ID,
    TRACEPARENT,
    Traced,
    hashed,
    in_memory_tracing,
    mentions,
)

USER = "user-4711@example.com"  # must never reach a span
RULES = """
rules:
  - {name: per-org, prefix: "never-", rate: 1, burst: 4}
  - {name: soft, prefix: "never-", rate: 1, burst: 1, shadow: true}
"""


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


@asynccontextmanager
async def traced_client(
    tmp_path: Path, traced: Traced, fast_path: bool
) -> AsyncIterator[httpx.AsyncClient]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    settings = standalone_settings(node_id="traced", rules=str(rules), rate=1, burst=2)
    app = create_app(settings, build_node(settings, clock=ManualClock()), tracing=traced.tracing)
    asgi = served(app) if fast_path else app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            yield client


@pytest.fixture
def traced() -> Traced:
    return in_memory_tracing()


@pytest.fixture(params=[True, False], ids=["fast-path", "route"])
async def client(
    request: pytest.FixtureRequest, tmp_path: Path, traced: Traced
) -> AsyncIterator[httpx.AsyncClient]:
    async with traced_client(tmp_path, traced, request.param) as c:
        yield c


async def test_protected_spans_follow_the_traceparent(
    client: httpx.AsyncClient, traced: Traced
) -> None:
    headers = {"X-User-ID": USER, "traceparent": TRACEPARENT, "X-Request-ID": "req-1"}
    statuses = [(await client.post("/protected", headers=headers)).status_code for _ in range(3)]

    assert statuses == [200, 200, 429]
    requests, decisions = traced.requests(), traced.decisions()
    assert len(requests) == len(decisions) == 3
    for request, decision, status in zip(requests, decisions, statuses, strict=True):
        assert request.name == "POST /protected"
        assert request.kind == SpanKind.SERVER
        assert request.context is not None
        assert request.parent is not None
        assert request.context.trace_id == TRACE_ID
        assert request.parent.span_id == PARENT_SPAN_ID
        assert request.parent.is_remote
        assert request.attributes is not None
        assert request.attributes["http.response.status_code"] == status
        assert request.attributes[REQUEST_ID] == "req-1"
        assert decision.parent is not None
        assert decision.parent.span_id == request.context.span_id
        assert decision.context is not None
        assert decision.context.trace_id == TRACE_ID
    assert [d.attributes for d in decisions] == [
        {RULE: "default", OUTCOME: outcome, COST: 1, KEY_HASH: hashed(USER)}
        for outcome in ("admitted", "admitted", "denied")
    ]
    assert not any(mentions(span, USER) for span in traced.spans())


async def test_without_a_traceparent_each_request_starts_a_trace(
    client: httpx.AsyncClient, traced: Traced
) -> None:
    for _ in range(2):
        await client.post("/protected", headers={"X-User-ID": USER})

    requests = traced.requests()
    assert [r.parent for r in requests] == [None, None]
    trace_ids = {r.context.trace_id for r in requests if r.context is not None}
    assert len(trace_ids) == 2
    assert TRACE_ID not in trace_ids


async def test_a_check_and_a_batch_are_a_span_per_decision(
    client: httpx.AsyncClient, traced: Traced
) -> None:
    headers = {"traceparent": TRACEPARENT}
    await client.post("/v1/check", json={"key": USER, "cost": 2}, headers=headers)
    checks = [{"key": USER}, {"key": "org-9", "cost": 3, "limit": "per-org"}, {"key": "x"}]
    await client.post("/v1/check", json={"checks": checks}, headers=headers)

    single, batch = traced.requests()
    assert single.name == batch.name == "POST /v1/check"
    decisions = traced.decisions()
    assert [d.attributes for d in decisions] == [
        {RULE: "default", OUTCOME: "admitted", COST: 2, KEY_HASH: hashed(USER)},
        {RULE: "default", OUTCOME: "denied", COST: 1, KEY_HASH: hashed(USER)},
        {RULE: "per-org", OUTCOME: "admitted", COST: 3, KEY_HASH: hashed("org-9")},
        {RULE: "default", OUTCOME: "admitted", COST: 1, KEY_HASH: hashed("x")},
    ]
    assert single.context is not None
    assert batch.context is not None
    parents = [d.parent.span_id for d in decisions if d.parent is not None]
    assert parents == [single.context.span_id] + [batch.context.span_id] * 3
    assert {r.context.trace_id for r in (single, batch) if r.context} == {TRACE_ID}
    assert not any(mentions(span, USER) or mentions(span, "org-9") for span in traced.spans())


async def test_an_atomic_check_names_what_denied(client: httpx.AsyncClient, traced: Traced) -> None:
    body = {
        "all": [
            {"key": USER, "limit": "soft", "cost": 2},
            {"key": "org-9", "cost": 5, "limit": "per-org"},
        ]
    }
    answer = (await client.post("/v1/check", json=body)).json()

    assert answer["denied_by"] == ["per-org"]
    (request,) = traced.requests()
    assert request.attributes is not None
    assert request.attributes[DENIED_BY] == ("per-org",)
    assert [(d.attributes or {}).get(OUTCOME) for d in traced.decisions()] == [
        "shadow_denied",
        "denied",
    ]


async def test_errors_are_request_spans_without_decisions(
    client: httpx.AsyncClient, traced: Traced
) -> None:
    missing = await client.post("/protected")
    unknown = await client.post("/v1/check", json={"key": USER, "limit": "nope"})

    assert (missing.status_code, unknown.status_code) == (400, 404)
    assert traced.decisions() == []
    codes = [(r.attributes or {}).get("http.response.status_code") for r in traced.requests()]
    assert codes == [400, 404]
    assert all(r.status.status_code != StatusCode.ERROR for r in traced.requests())


async def test_not_ready_is_an_error_span(tmp_path: Path, traced: Traced) -> None:
    settings = standalone_settings(node_id="cold")
    app = create_app(settings, build_node(settings, clock=ManualClock()), tracing=traced.tracing)
    transport = httpx.ASGITransport(app=served(app))  # no lifespan: the node never starts
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        response = await client.post("/protected", headers={"X-User-ID": USER})

    assert response.status_code == 503
    (request,) = traced.requests()
    assert request.status.status_code == StatusCode.ERROR


async def test_other_routes_make_no_spans(client: httpx.AsyncClient, traced: Traced) -> None:
    await client.get("/healthz")
    await client.get(f"/v1/keys/{USER}")

    assert traced.spans() == []
