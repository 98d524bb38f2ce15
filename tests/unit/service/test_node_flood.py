"""A flood of unique user ids: memory stays under the key cap and the node keeps serving."""

from __future__ import annotations

import httpx

from service.bootstrap import build_node
from service.http.app import create_app
from service.http.fastpath import FastPath
from service.rules.document import parse_rules
from service.rules.model import default_rule
from service.settings import load_settings
from service.testing import ManualClock


async def test_unique_key_flood_stays_under_the_cap_and_counts_evictions() -> None:
    clock = ManualClock()
    settings = load_settings(kafka="none", max_keys=2000)
    node = build_node(settings, clock=clock)
    app = create_app(settings, node)
    served = FastPath(app, app.state.protector, app.state.checker)  # as uvicorn serves it
    await node.start()
    try:
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            for i in range(20_000):
                if i % 100 == 0:
                    # 200 new users a second: the oldest keys of a full store have
                    # sealed and refilled, so they can go without changing a decision.
                    clock.advance(0.5)
                    node.maintain()  # what the sweep loop does every 250 ms
                response = await client.post("/protected", headers={"X-User-ID": f"flood-{i}"})
                assert response.status_code == 200
                assert node.engine.tracked_keys() <= 2000
            stats = node.engine.limiters["default"].stats
            gone = 20_000 - len(node.engine.limiters["default"])
            assert stats.deleted_idle + stats.evicted_active == gone
            assert stats.deleted_idle > 0.9 * gone, "idle keys are evicted first"
            codes = [
                (await client.post("/protected", headers={"X-User-ID": "alice"})).status_code
                for _ in range(25)
            ]
            assert codes.count(200) == 20, "still serving, and limiting exactly"
            metrics = node.metrics.render().decode()
            assert 'ratelimiter_store_events_total{kind="deleted_idle"}' in metrics
            assert 'ratelimiter_tracked_keys{kind="default"}' in metrics
    finally:
        await node.stop()


async def test_a_flood_faster_than_keys_can_idle_evicts_active_keys_and_counts_them() -> None:
    clock = ManualClock()
    node = build_node(load_settings(kafka="none", max_keys=1000), clock=clock)
    await node.start()
    try:
        rule = node.rules.default
        for i in range(5000):  # all within one instant: nothing can be idle yet
            assert node.decide(f"burst-{i}", 1, rule).allowed
        stats = node.engine.limiters["default"].stats
        assert len(node.engine.limiters["default"]) <= 1000
        assert stats.evicted_active == 4000
    finally:
        await node.stop()


async def test_the_key_cap_holds_across_rules() -> None:
    """--max-keys used to apply per rule: six rules held six times the cap."""
    clock = ManualClock()
    rules = parse_rules(
        {
            "default": {"rate": 10, "burst": 20},
            "rules": [
                {"name": f"r{i}", "prefix": f"r{i}-", "rate": 10, "burst": 20} for i in range(6)
            ],
        },
        default_rule("token_bucket", 10, 20, 1.0),
        source="test",
    )
    node = build_node(load_settings(kafka="none", max_keys=600), clock=clock, rules=rules)
    for i in range(6):
        for j in range(600):
            key = f"r{i}-{j}"
            assert node.engine.decide(key, 1, node.rules.match(key)).allowed
    assert node.engine.tracked_keys() == 600
    assert node.engine.key_budget.used == 600
    # Room is made in the rule holding the most: every rule keeps its share (the default
    # rule, holding none, counts among the seven).
    for name, limiter in node.engine.limiters.items():
        if name != "default":
            assert len(limiter) >= 600 // 7 - 1, name
