"""Envoy's rate limit service on two nodes replicating through a real broker: rules
imported with `ratelimiter rules import`, a descriptor's budget spent through node A's
gRPC server is denied through node B's."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from service.bootstrap import build_node
from service.cli import main
from service.grpc.server import GrpcServer
from service.node import Node
from tests.service_helpers import clean_env, kafka_settings, unique_topic, wait_for

pytestmark = pytest.mark.integration

OK = rls_pb2.RateLimitResponse.Code.OK
OVER = rls_pb2.RateLimitResponse.Code.OVER_LIMIT
CONFIG = """
domain: api
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 5}
"""


def request(user: str) -> Any:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="user", value=user)
    return rls_pb2.RateLimitRequest(
        domain="api", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )


async def test_a_budget_spent_through_node_a_is_denied_through_node_b(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env(monkeypatch)
    state_topic, rules_topic = unique_topic("state"), unique_topic("rules")
    config = tmp_path / "envoy.yaml"
    config.write_text(CONFIG)
    imported = await asyncio.to_thread(
        main, ["rules", "import", str(config), "--kafka", kafka_bootstrap, "--topic", rules_topic]
    )
    assert imported == 0
    async with AsyncExitStack() as stack:
        nodes: list[Node] = []
        stubs: list[Any] = []
        for node_id in ("a", "b"):
            settings = kafka_settings(
                kafka_bootstrap, state_topic, node_id, rules_topic=rules_topic
            )
            node = build_node(settings)
            await node.start()
            stack.push_async_callback(node.stop)
            await node.wait_ready(30)
            server = GrpcServer(node, "127.0.0.1", 0, allow_limit_override=False)
            port = await server.start()
            stack.push_async_callback(server.stop, 0)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            stack.push_async_callback(channel.close)
            nodes.append(node)
            stubs.append(rls_pb2_grpc.RateLimitServiceStub(channel))
        a, b = stubs
        # Both nodes read the imported rules from the rules topic before they were ready.
        assert all("api.user" in {r.name for r in node.rules.all()} for node in nodes)
        answers = [await a.ShouldRateLimit(request("alice"), timeout=5) for _ in range(6)]
        assert [x.overall_code for x in answers] == [OK] * 5 + [OVER]
        rule = nodes[1].rules.get("api.user")
        await wait_for(
            lambda: nodes[1].engine.view("api/user=alice", rule).consumed == 5,
            10.0,
            "node b merged what node a admitted",
        )
        denied = await b.ShouldRateLimit(request("alice"), timeout=5)
        assert denied.overall_code == OVER
        assert denied.statuses[0].limit_remaining == 0
        fresh = await b.ShouldRateLimit(request("bob"), timeout=5)
        assert (fresh.overall_code, fresh.statuses[0].limit_remaining) == (OK, 4)
