"""The rules topic on a real broker: CLI and admin writes, live changes, bootstrap, bad records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import httpx
import pytest

from service.bootstrap import build_node
from service.cli import main
from service.http.app import create_app
from service.kafka.topics import describe_topic
from service.node import Node
from service.rules.log import KafkaRulesLog, read_rules
from tests.service_helpers import clean_env, kafka_settings, sample, served, unique_topic, wait_for

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer t0ken-for-the-admin-api"}


class Served:
    """A node and an HTTP client of what uvicorn would serve for it."""

    def __init__(self, node: Node, client: httpx.AsyncClient) -> None:
        self.node = node
        self.client = client

    async def policy(self, user: str) -> str:
        response = await self.client.post("/protected", headers={"X-User-ID": user})
        return response.headers["ratelimit-policy"]


StartNode = Callable[[str], Awaitable[Served]]


@pytest.fixture
def rules_topic() -> str:
    return unique_topic("rules")


@pytest.fixture
async def start(
    kafka_bootstrap: str, rules_topic: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartNode]:
    """Start ready nodes sharing a fresh state topic and a fresh rules topic."""
    clean_env(monkeypatch)
    topic = unique_topic("state")
    async with AsyncExitStack() as stack:

        async def start_node(node_id: str) -> Served:
            settings = kafka_settings(
                kafka_bootstrap,
                topic,
                node_id,
                rate=0.05,
                burst=20,
                rules_topic=rules_topic,
                admin_token="t0ken-for-the-admin-api",
            )
            node = build_node(settings)
            app = create_app(settings, node)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=served(app)), base_url=f"http://{node_id}"
                )
            )
            await node.wait_ready(30)
            return Served(node, client)

        yield start_node


def cli(*args: str) -> int:
    """`ratelimiter ...` in this process (call it in a thread: it runs its own loop)."""
    return main(list(args))


async def test_a_cli_change_reaches_every_node_within_a_second_and_new_nodes_start_with_it(
    start: StartNode, kafka_bootstrap: str, rules_topic: str
) -> None:
    a, b = await start("a"), await start("b")
    assert await a.policy("u1") == '"default";q=20;w=400'

    code = await asyncio.to_thread(
        cli, "rules", "put", "default", "--rate", "1", "--burst", "3",
        "--kafka", kafka_bootstrap, "--topic", rules_topic,
    )  # fmt: skip
    written = time.monotonic()
    assert code == 0
    await wait_for(
        lambda: a.node.rules.default.burst == b.node.rules.default.burst == 3,
        1.0,
        "the new default on both nodes",
    )
    assert time.monotonic() - written <= 1.0
    assert await b.policy("u2") == '"default";q=3;w=3'

    description = await describe_topic(kafka_bootstrap, rules_topic)
    assert description is not None
    assert description.partitions == 1
    assert description.config["cleanup.policy"] == "compact"

    c = await start("c")  # ready only after reading the rules topic to its end
    assert c.node.rules.default.burst == 3
    assert await c.policy("u3") == '"default";q=3;w=3'


async def test_admin_puts_a_shadow_rule_every_node_counts_would_be_denials(
    start: StartNode,
) -> None:
    a, b = await start("a"), await start("b")
    rule = {"rate": 0.05, "burst": 2, "prefix": "trial-", "shadow": True}
    put = await a.client.put("/v1/rules/trial", json=rule, headers=ADMIN)
    assert put.status_code == 200
    assert put.json()["applied"] is True
    await wait_for(lambda: "trial" in b.node.topic_rules, 1.0, "node b has the rule")

    statuses = [
        (await b.client.post("/protected", headers={"X-User-ID": "trial-1"})).status_code
        for _ in range(5)
    ]
    assert statuses == [200] * 5
    text = (await b.client.get("/metrics")).text
    assert 'ratelimiter_decisions_total{outcome="shadow_denied",rule="trial"} 3.0' in text
    assert 'ratelimiter_decisions_total{outcome="admitted",rule="trial"} 2.0' in text

    # Enforce it: the same limits, so the consumption already recorded still counts.
    put = await a.client.put("/v1/rules/trial", json={**rule, "shadow": False}, headers=ADMIN)
    assert put.status_code == 200
    await wait_for(lambda: not b.node.rules.get("trial").shadow, 1.0, "enforced on b")
    assert (await b.client.post("/protected", headers={"X-User-ID": "trial-1"})).status_code == 429


async def test_bad_records_are_skipped_and_counted_and_invalid_writes_refused(
    start: StartNode, kafka_bootstrap: str, rules_topic: str
) -> None:
    a = await start("a")
    async with KafkaRulesLog(kafka_bootstrap, rules_topic) as raw:
        await raw.publish(b"gold", b"{not json")
        await raw.publish(b"gold", b'{"v": 1, "tier": "gold", "rate": 0, "burst": 1}')
        await raw.publish(b"gold", b'{"v": 1, "tier": "gold", "rate": 1, "burst": 4}')

    await wait_for(lambda: "gold" in a.node.topic_rules, 1.0, "the good record applied")
    assert sample(a.node, "ratelimiter_rule_records_skipped_total", kind="bad_json") == 1
    assert sample(a.node, "ratelimiter_rule_records_skipped_total", kind="invalid_rule") == 1
    assert a.node.rules.get("gold").burst == 4

    bad = await a.client.put("/v1/rules/gold", json={"burst": 4}, headers=ADMIN)
    assert bad.status_code == 422
    assert "invalid rule 'gold'" in bad.json()["message"]
    code = await asyncio.to_thread(
        cli, "rules", "put", "gold", "--tier", "gold", "--rate", "-1", "--burst", "1",
        "--kafka", kafka_bootstrap, "--topic", rules_topic,
    )  # fmt: skip
    assert code == 2

    rules, skipped = await read_rules(kafka_bootstrap, rules_topic)
    assert list(rules) == ["gold"]
    assert len(skipped) == 2

    b = await start("b")  # a new node skips the same records and ends with the same rules
    assert b.node.rules == a.node.rules
    assert sample(b.node, "ratelimiter_rule_records_skipped_total", kind="bad_json") == 1


async def test_cli_list_and_delete(
    start: StartNode,
    kafka_bootstrap: str,
    rules_topic: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a = await start("a")
    where: tuple[str, ...] = ("--kafka", kafka_bootstrap, "--topic", rules_topic)
    put = ("rules", "put", "exports", "--algorithm", "fixed_window", "--limit", "5")
    assert await asyncio.to_thread(cli, *put, "--window-s", "60", *where) == 0
    assert await asyncio.to_thread(cli, "rules", "list", *where) == 0
    out = capsys.readouterr().out
    assert "1 rules on" in out
    assert "exports" in out
    assert "limit=5 per 60s" in out
    await wait_for(lambda: "exports" in a.node.topic_rules, 1.0, "exports applied")
    check = await a.client.post("/v1/check", json={"key": "k", "limit": "exports"})
    assert check.json()["limit"] == 5

    assert await asyncio.to_thread(cli, "rules", "delete", "exports", *where) == 0
    await wait_for(lambda: "exports" not in a.node.topic_rules, 1.0, "exports deleted")
    gone = await a.client.post("/v1/check", json={"key": "k", "limit": "exports"})
    assert gone.status_code == 404
    assert await asyncio.to_thread(cli, "rules", "delete", "exports", *where) == 1
    assert "no rule 'exports'" in capsys.readouterr().err
    assert await asyncio.to_thread(cli, "rules", "list", "--json", *where) == 0
    assert capsys.readouterr().out.strip() == "[]"
