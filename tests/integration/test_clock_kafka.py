"""Clock discipline against a real broker: the state topic stamps records (LogAppendTime),
a node an hour ahead corrects itself before deciding (or, in refuse mode, says why it is
not ready), and users of both nodes are never denied for its clock."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from service.bootstrap import build_node
from service.clock import ORIGIN
from service.http.app import create_app
from service.kafka.topics import describe_topic_config
from service.node import Node
from tests.service_helpers import clean_env, kafka_settings, sample, served, unique_topic, wait_for

pytestmark = pytest.mark.integration

HOUR = 3600.0


def ahead_clock() -> float:
    return time.time() - ORIGIN + HOUR


Start = Callable[..., Awaitable[tuple[Node, httpx.AsyncClient]]]


@pytest.fixture
async def start(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    clean_env(monkeypatch)
    topic = unique_topic("clock")
    async with AsyncExitStack() as stack:

        async def start_node(
            node_id: str, clock: Callable[[], float] | None = None, **overrides: Any
        ) -> tuple[Node, httpx.AsyncClient]:
            settings = kafka_settings(
                kafka_bootstrap, topic, node_id, rate=10, burst=20, **overrides
            )
            node = build_node(settings, clock=clock)
            app = create_app(settings, node)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=served(app)), base_url="http://n"
                )
            )
            return node, client

        yield start_node


async def test_the_state_topic_is_stamped_by_the_broker(start: Start, kafka_bootstrap: str) -> None:
    node, _ = await start("a")
    await node.wait_ready(30)
    config = await describe_topic_config(kafka_bootstrap, node.settings.topic)
    assert config["message.timestamp.type"] == "LogAppendTime"


async def test_a_node_an_hour_ahead_corrects_itself_before_deciding(start: Start) -> None:
    honest, honest_client = await start("honest")
    ahead, ahead_client = await start("ahead", clock=ahead_clock)
    await honest.wait_ready(30)
    await ahead.wait_ready(30)

    assert abs(ahead.clock() - (time.time() - ORIGIN)) < 0.2
    assert sample(ahead, "ratelimiter_clock_offset_seconds") == pytest.approx(-HOUR, abs=0.2)
    assert (await ahead_client.get("/readyz")).status_code == 200

    # Alice spends half her burst, alternating nodes, each request seen by the other node
    # before the next: never denied. (Uncorrected, the ahead node's floors would put her
    # TAT far past now on the honest node, which would then deny her.)
    statuses = []
    for i in range(10):
        client, other = (honest_client, ahead_client) if i % 2 else (ahead_client, honest_client)
        response = await client.post("/protected", headers={"X-User-ID": "alice"})
        statuses.append(response.status_code)

        async def seen(peer: httpx.AsyncClient = other, count: int = i + 1) -> bool:
            return bool((await peer.get("/v1/keys/alice")).json()["consumed"] == count)

        await wait_for(seen, within=5, what=f"request {i + 1} merged by the other node")
    assert statuses == [200] * 10

    # Consumption admitted on the corrected node counts on the honest one, in time.
    async def merged() -> bool:
        state = (await honest_client.get("/v1/keys/alice")).json()
        return ahead.replica in state["contributions"]

    await wait_for(merged, within=5, what="the honest node to merge the corrected node")
    limiter = honest.engine.limiter(honest.rules.default)
    assert limiter.stats.entry_problems == {}


async def test_refuse_mode_is_not_ready_and_says_why(start: Start) -> None:
    _, client = await start("ahead", clock=ahead_clock, clock_mode="refuse")

    async def refused() -> bool:
        response = await client.get("/readyz")
        return response.status_code == 503 and "from the broker" in response.json().get("error", "")

    await wait_for(refused, within=30, what="readiness refused for the clock")
    error = (await client.get("/readyz")).json()["error"]
    found = re.search(r"clock is ([+-][0-9.]+) s from the broker", error)
    assert found is not None, error
    assert float(found.group(1)) == pytest.approx(HOUR, abs=0.2)
    assert "--max-clock-skew-s" in error
