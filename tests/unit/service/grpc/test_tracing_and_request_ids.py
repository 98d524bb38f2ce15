"""ShouldRateLimit with tracing and request ids on a real grpc.aio server: a span per call,
child of the `traceparent` metadata, a span per decision with rule, outcome, cost and hashed
key (never the raw one); `x-request-id` taken or made, sent back in trailing metadata and
current in the log; the services are listed by server reflection."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import yaml
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.trace import SpanKind, StatusCode

from service.bootstrap import build_node
from service.engine import Check, Decision
from service.grpc.server import GrpcServer
from service.node import Node
from service.observability.request_id import RequestIdFilter
from service.observability.tracing import COST, DENIED_BY, KEY_HASH, OUTCOME, REQUEST_ID, RULE
from service.rules.document import parse_rules
from service.rules.model import default_rule
from service.testing import ManualClock
from tests.service_helpers import standalone_settings
from tests.tracing_helpers import (
    PARENT_SPAN_ID,
    TRACE_ID,
    TRACEPARENT,
    Traced,
    hashed,
    in_memory_tracing,
    mentions,
)

OK = rls_pb2.RateLimitResponse.Code.OK
OVER = rls_pb2.RateLimitResponse.Code.OVER_LIMIT
USER = "user-4711@example.com"
CONFIG = """
domain: api
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: org
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: soft
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
"""
MADE = re.compile(r"[0-9a-f]{32}")


@dataclass
class Served:
    node: Node
    channel: Any
    stub: Any
    traced: Traced


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    rules = parse_rules(yaml.safe_load(CONFIG), default_rule("token_bucket", 10, 20, 1))
    node = build_node(standalone_settings(), clock=ManualClock(1_200.0), rules=rules)
    traced = in_memory_tracing()
    server = GrpcServer(node, "127.0.0.1", 0, False, tracing=traced.tracing)
    port = await server.start()
    await node.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(node, channel, rls_pb2_grpc.RateLimitServiceStub(channel), traced)
    finally:
        await channel.close()
        await server.stop(0)
        await node.stop()


def request(*entries: tuple[str, str], domain: str = "api") -> Any:
    descriptors = [
        ratelimit_pb2.RateLimitDescriptor(
            entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v)]
        )
        for k, v in entries
    ]
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors)


async def call(
    served: Served, message: Any, metadata: Sequence[tuple[str, str]] = ()
) -> tuple[Any, dict[str, str]]:
    """(response, trailing metadata) of one ShouldRateLimit."""
    rpc = served.stub.ShouldRateLimit(message, metadata=tuple(metadata), timeout=5)
    response = await rpc
    return response, dict(await rpc.trailing_metadata())


async def test_a_span_per_call_and_per_decision_under_the_traceparent(served: Served) -> None:
    metadata = [("traceparent", TRACEPARENT), ("x-request-id", "g-1")]
    codes = []
    for _ in range(3):
        response, _ = await call(served, request(("user", USER)), metadata)
        codes.append(response.overall_code)

    assert codes == [OK, OK, OVER]
    calls, decisions = served.traced.requests(), served.traced.decisions()
    assert len(calls) == len(decisions) == 3
    for span, decision in zip(calls, decisions, strict=True):
        assert span.name == "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
        assert span.kind == SpanKind.SERVER
        assert span.context is not None
        assert span.parent is not None
        assert span.context.trace_id == TRACE_ID
        assert span.parent.span_id == PARENT_SPAN_ID
        assert span.attributes is not None
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.grpc.status_code"] == 0
        assert span.attributes[REQUEST_ID] == "g-1"
        assert decision.parent is not None
        assert decision.parent.span_id == span.context.span_id
    assert [d.attributes for d in decisions] == [
        {RULE: "api.user", OUTCOME: outcome, COST: 1, KEY_HASH: hashed(f"api/user={USER}")}
        for outcome in ("admitted", "admitted", "denied")
    ]
    assert (calls[-1].attributes or {})[DENIED_BY] == ("api.user",)
    assert not any(mentions(span, USER) for span in served.traced.spans())


async def test_several_descriptors_are_a_span_each(served: Served) -> None:
    response, _ = await call(served, request(("soft", "s"), ("org", "acme"), ("none", "x")))
    response, _ = await call(served, request(("soft", "s"), ("org", "acme")))

    assert response.overall_code == OK
    outcomes = [(d.attributes or {}).get(OUTCOME) for d in served.traced.decisions()]
    assert outcomes == ["admitted", "admitted", "shadow_denied", "admitted"]
    assert [r.parent for r in served.traced.requests()] == [None, None]


async def test_a_refused_call_is_an_error_span_without_decisions(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(served, request(("user", "x"), domain=""), [("x-request-id", "bad-1")])

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(refused.value.trailing_metadata() or ())["x-request-id"] == "bad-1"
    (span,) = served.traced.requests()
    assert served.traced.decisions() == []
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert (span.attributes or {})["rpc.grpc.status_code"] == invalid
    assert span.status.status_code == StatusCode.UNSET  # the caller's fault, not ours


async def test_an_unavailable_node_is_an_error_span(served: Served) -> None:
    await served.node.stop()  # not ready: every decision is refused

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(served, request(("user", "x")))

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    (span,) = served.traced.requests()
    assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert span.status.status_code == StatusCode.ERROR


async def test_request_ids_taken_or_made_and_sent_back(served: Served) -> None:
    _, given = await call(served, request(("user", "a")), [("x-request-id", "abc-123")])
    _, made_1 = await call(served, request(("user", "a")))
    _, made_2 = await call(served, request(("user", "a")), [("x-request-id", "no spaces")])
    _, made_3 = await call(served, request(("user", "a")), [("x-request-id", "x" * 129)])

    assert given["x-request-id"] == "abc-123"
    made = [m["x-request-id"] for m in (made_1, made_2, made_3)]
    assert all(MADE.fullmatch(rid) for rid in made)
    assert len(set(made)) == 3


async def test_log_lines_of_a_call_carry_its_id(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    node = served.node
    decide_all = node.decide_all
    logger = logging.getLogger("ratelimiter.node")

    def logged(checks: Sequence[Check]) -> list[Decision]:
        logger.info("deciding for a test")
        return decide_all(checks)

    node.decide_all = logged  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    request_ids = RequestIdFilter()
    caplog.handler.addFilter(request_ids)
    try:
        await call(served, request(("user", "b")), [("x-request-id", "log-1")])
        _, trailing = await call(served, request(("user", "b")))
        logger.info("after the calls")
    finally:
        caplog.handler.removeFilter(request_ids)

    lines = [
        (r.getMessage(), r.request_id)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "ratelimiter.node"
    ]
    assert lines == [
        ("deciding for a test", "log-1"),
        ("deciding for a test", trailing["x-request-id"]),
        ("after the calls", "-"),
    ]


async def test_server_reflection_lists_the_services(served: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = [answer async for answer in stub.ServerReflectionInfo(iter([ask]), timeout=5)]

    names = {s.name for s in answers[0].list_services_response.service}
    assert {
        "envoy.service.ratelimit.v3.RateLimitService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
