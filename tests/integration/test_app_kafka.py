"""Nodes in process, replicating through a real Kafka topic, driven over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from service.bootstrap import build_node
from service.errors import Unavailable
from service.http.app import create_app
from service.node import Node
from tests.service_helpers import clean_env, kafka_settings, served, unique_topic, wait_for

pytestmark = pytest.mark.integration

BURST = 20
# Refill is negligible over a test: an exhausted user stays exhausted for minutes.
RATE = 0.05


class Served:
    """A node, its app and an HTTP client of that app."""

    def __init__(self, node: Node, client: httpx.AsyncClient) -> None:
        self.node = node
        self.client = client

    async def protected(self, user: str) -> httpx.Response:
        return await self.client.post("/protected", headers={"X-User-ID": user})

    async def key(self, user: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/keys/{user}")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body


StartNode = Callable[..., Awaitable[Served]]


@pytest.fixture
async def start(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartNode]:
    """Start app-wrapped nodes on one fresh topic (not waiting for readiness)."""
    clean_env(monkeypatch)
    topic = unique_topic("app")
    async with AsyncExitStack() as stack:

        async def start_node(node_id: str, **overrides: Any) -> Served:
            settings = kafka_settings(
                kafka_bootstrap, topic, node_id, rate=RATE, burst=BURST, **overrides
            )
            node = build_node(settings)
            app = create_app(settings, node)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=served(app)), base_url=f"http://{node_id}"
                )
            )
            return Served(node, client)

        yield start_node


async def ready(served: Served) -> None:
    async def answers_ready() -> bool:
        return (await served.client.get("/readyz")).status_code == 200

    await wait_for(answers_ready, within=30, what=f"{served.node.settings.node_id} ready")


async def test_user_exhausted_on_a_is_denied_on_b_within_a_second(start: StartNode) -> None:
    a, b = await start("a"), await start("b")
    await ready(a)
    await ready(b)

    statuses = [(await a.protected("alice")).status_code for _ in range(BURST + 1)]
    assert statuses == [200] * BURST + [429]

    async def b_has_merged() -> bool:
        return bool((await b.key("alice"))["consumed"] == BURST)

    lag = await wait_for(b_has_merged, within=1.0, what="B to merge A's consumption")
    denied = await b.protected("alice")

    assert denied.status_code == 429, f"admitted on B {lag:.3f}s after sync"
    assert "retry-after" in denied.headers
    state = await b.key("alice")
    assert state["contributions"] == {a.node.replica: BURST}
    assert state["tokens"] < 1
    assert (await b.protected("bob")).status_code == 200


async def test_a_node_started_later_is_ready_only_after_reading_to_the_end(
    start: StartNode,
) -> None:
    a = await start("a")
    await ready(a)
    for _ in range(BURST):
        assert (await a.protected("carol")).status_code == 200
    replicator = a.node.replicator
    assert replicator is not None
    await wait_for(lambda: replicator.buffered == 0, what="A's flush acknowledged")
    ends = await replicator.log.end_offsets()
    assert sum(ends.values()) > 0

    c = await start("c")
    # Bootstrapping runs in the background and needs the broker: not ready yet.
    assert not c.node.ready
    with pytest.raises(Unavailable):
        c.node.decide("carol", 1, c.node.rules.default)
    await ready(c)

    assert c.node.replicator is not None
    positions = await c.node.replicator.log.positions()
    assert all(positions[p] >= end for p, end in ends.items())
    assert c.node.metrics.registry.get_sample_value("ratelimiter_bootstrap_records")
    state = await c.key("carol")
    assert state["consumed"] == BURST
    assert state["contributions"] == {a.node.replica: BURST}
    assert (await c.protected("carol")).status_code == 429


async def test_check_and_keys_across_nodes(start: StartNode) -> None:
    a, b = await start("a"), await start("b")
    await ready(a)
    await ready(b)

    first = await a.client.post("/v1/check", json={"key": "dana", "cost": 12})
    second = await b.client.post("/v1/check", json={"key": "dana", "cost": 3})
    assert first.json()["allowed"]
    assert second.json()["allowed"]

    async def both_merged() -> bool:
        consumed = [(await node.key("dana"))["consumed"] for node in (a, b)]
        return consumed == [15, 15]

    await wait_for(both_merged, within=5, what="both nodes to merge")
    state = await a.key("dana")
    assert state["contributions"] == {a.node.replica: 12, b.node.replica: 3}
    too_much = await b.client.post("/v1/check", json={"key": "dana", "cost": 6})
    assert too_much.json()["allowed"] is False
    assert too_much.json()["retry_after_ms"] > 0
