"""Embedding and rules with real processes: an app with the middleware shares a user's budget
with a node; a rule changed with the CLI reaches three nodes within a second; shadow mode."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from service.library import RateLimiter
from service.local.nodes import NodeProcess
from service.middleware import RateLimitMiddleware, by_header
from tests.e2e.conftest import Spawn
from tests.e2e.http import protected, wait_until
from tests.service_helpers import clean_env, wait_for

pytestmark = pytest.mark.e2e

BURST = 20
RATE = "0.05"  # one token in 20 s: nothing refills during a test


@pytest.fixture
def rules_topic() -> str:
    return f"e2e.rules.{uuid.uuid4().hex[:12]}"


def rules_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "rules", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def spawn_all(spawn: Spawn, kafka: str, ids: tuple[str, ...], *args: str) -> list[NodeProcess]:
    """Start the nodes together, then wait for each to be ready."""
    nodes = [spawn(node_id, kafka, *args, wait=False) for node_id in ids]
    return [node.wait_ready(90) for node in nodes]


async def test_an_app_with_the_middleware_and_a_node_share_one_users_budget(
    spawn: Spawn,
    kafka_bootstrap: str,
    topic: str,
    rules_topic: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clean_env(monkeypatch)
    args = ("--topic", topic, "--rules-topic", rules_topic, "--rate", RATE, "--burst", str(BURST))
    node = spawn("node", kafka_bootstrap, *args)
    limiter = RateLimiter(
        rate=float(RATE),
        burst=BURST,
        kafka=kafka_bootstrap,
        topic=topic,
        rules_topic=rules_topic,
        node_id="app",
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with limiter:
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(RateLimitMiddleware, limiter=limiter, key=by_header("X-User-ID"))

    @app.get("/work")
    async def work() -> dict[str, str]:
        return {"done": "yes"}

    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app") as ours,
        httpx.AsyncClient(base_url=node.url) as theirs,
    ):
        user = {"X-User-ID": "shared-user"}
        statuses = [(await ours.get("/work", headers=user)).status_code for _ in range(12)]
        assert statuses == [200] * 12

        async def node_sees_the_apps_spending() -> bool:
            view = (await theirs.get("/v1/keys/shared-user")).json()
            return bool(view["consumed"] >= 12)

        took = await wait_for(node_sees_the_apps_spending, 1.0, "the node merges the app's cells")
        print(f"app -> node in {took:.3f}s")
        on_node = [(await theirs.post("/protected", headers=user)).status_code for _ in range(10)]
        assert on_node == [200] * 8 + [429] * 2

        def app_sees_the_nodes_spending() -> bool:
            return limiter.node.engine.view("shared-user", limiter.rules.default).consumed >= BURST

        await wait_for(app_sees_the_nodes_spending, 1.0, "the app merges the node's cells")
        denied = await ours.get("/work", headers=user)
        assert denied.status_code == 429
        assert denied.json()["error"] == "rate_limited"
        assert denied.headers["ratelimit-policy"] == '"default";q=20;w=400'
        assert int(denied.headers["retry-after"]) >= 1
        view = (await theirs.get("/v1/keys/shared-user")).json()
        assert sum(view["contributions"].values()) == BURST


def test_a_rule_changed_with_the_cli_takes_effect_on_three_nodes_within_a_second(
    spawn: Spawn, kafka_bootstrap: str, topic: str, rules_topic: str
) -> None:
    args = ("--topic", topic, "--rules-topic", rules_topic, "--rate", RATE, "--burst", str(BURST))
    nodes = spawn_all(spawn, kafka_bootstrap, ("r1", "r2", "r3"), *args)
    probes = iter(range(10**6))

    def policies(client: httpx.Client) -> list[str]:
        return [
            client.post(
                f"{n.url}/protected", headers={"X-User-ID": f"probe-{next(probes)}"}
            ).headers["ratelimit-policy"]
            for n in nodes
        ]

    with httpx.Client() as client:
        assert policies(client) == ['"default";q=20;w=400'] * 3
        where = ("--kafka", kafka_bootstrap, "--topic", rules_topic)
        done = rules_cli("put", "default", "--rate", "1", "--burst", "3", *where)
        assert done.returncode == 0, done.stderr
        wanted = ['"default";q=3;w=3'] * 3
        took = wait_until(lambda: policies(client) == wanted, 1.0, "q=3 on all three nodes")
        print(f"CLI -> three nodes in {took:.3f}s")
        # In force, not only advertised: the new burst is what each node admits.
        assert [protected(client, nodes[0], "fresh") for _ in range(4)] == [200] * 3 + [429]

        # Shadow mode: the same limits, would-be denials counted, nothing denied.
        done = rules_cli("put", "default", "--rate", "1", "--burst", "3", "--shadow", *where)
        assert done.returncode == 0, done.stderr

        def shadowed() -> bool:
            return bool(client.get(f"{nodes[2].url}/v1/rules").json()["rules"][0]["shadow"])

        wait_until(shadowed, 1.0, "shadow mode on node r3")
        assert [protected(client, nodes[2], "trial") for _ in range(6)] == [200] * 6
        metrics = client.get(f"{nodes[2].url}/metrics").text
        assert 'ratelimiter_decisions_total{outcome="shadow_denied",rule="default"} 3.0' in metrics

        listed = rules_cli("list", *where)
        assert listed.returncode == 0
        assert "default" in listed.stdout
        assert "shadow" in listed.stdout
