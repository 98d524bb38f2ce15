"""Fail modes while the broker is unreachable: local, share (1/N of limits), closed (503)."""

from __future__ import annotations

import httpx
import pytest

from service.http.app import create_app
from service.node import Node
from service.testing import ManualClock, MemoryLog
from tests.service_helpers import memory_node, served, wait_for


async def _cluster(
    monkeypatch: pytest.MonkeyPatch, mode: str, clock: ManualClock
) -> tuple[MemoryLog, list[Node]]:
    log = MemoryLog(4)
    nodes = [memory_node(log, clock, f"n{i}", fail_mode=mode, rate=1, burst=30) for i in range(3)]
    for node in nodes:
        await node.start()
    for node in nodes:
        await node.wait_ready(5)
    # Every node hears from both peers (so share mode counts N = 3).
    for i, node in enumerate(nodes):
        node.decide(f"hello-{i}", 1, node.rules.default)
    await wait_for(lambda: all(n.replicator and len(n.replicator.peers) == 2 for n in nodes), 5)
    return log, nodes


async def _cut(log: MemoryLog, node: Node) -> None:
    log.available = False
    node.decide("trigger", 1, node.rules.default)  # something to publish
    await wait_for(lambda: node.replicator is not None and not node.replicator.broker_ok, 5)


async def test_closed_mode_answers_503_json_while_cut_off_and_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock()
    log, nodes = await _cluster(monkeypatch, "closed", clock)
    try:
        node = nodes[0]
        await _cut(log, node)
        app = served(create_app(node.settings, node))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://n") as client:
            response = await client.post("/protected", headers={"X-User-ID": "zed"})
            assert response.status_code == 503
            assert response.json()["error"] == "unavailable"
            assert response.headers["retry-after"] == "1"
            assert (await client.get("/readyz")).json()["mode"] == "closed"
            log.available = True
            await wait_for(lambda: node.replicator is not None and node.replicator.broker_ok, 5)
            response = await client.post("/protected", headers={"X-User-ID": "zed"})
            assert response.status_code == 200
            assert (await client.get("/readyz")).json()["mode"] == "normal"
    finally:
        for node in nodes:
            await node.stop()


async def test_share_mode_admits_one_nth_of_the_burst_while_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock()
    log, nodes = await _cluster(monkeypatch, "share", clock)
    try:
        node = nodes[0]
        await _cut(log, node)
        rule = node.rules.default
        admitted = sum(node.decide("yan", 1, rule).allowed for _ in range(40))
        assert admitted == 10  # burst 30 shared by 3 nodes
        assert node.mode == "share"
        log.available = True
        await wait_for(lambda: node.replicator is not None and node.replicator.broker_ok, 5)
        assert node.mode == "normal"
        # Back to the shared bucket: 30 - 10 left for this user.
        assert sum(node.decide("yan", 1, rule).allowed for _ in range(40)) == 20
    finally:
        for node in nodes:
            await node.stop()


async def test_local_mode_keeps_the_full_limit_while_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock()
    log, nodes = await _cluster(monkeypatch, "local", clock)
    try:
        node = nodes[0]
        await _cut(log, node)
        assert sum(node.decide("xia", 1, node.rules.default).allowed for _ in range(40)) == 30
        assert node.replicator is not None
        assert node.replicator.buffered > 0
    finally:
        for node in nodes:
            await node.stop()


async def test_share_mode_counts_live_peers_not_past_deploys() -> None:
    clock = ManualClock()
    log = MemoryLog(4)
    # Twenty earlier incarnations admitted something and went away (past deploys).
    for i in range(20):
        old = memory_node(log, clock, f"old-{i}", fail_mode="share", rate=1, burst=30)
        await old.start()
        await old.wait_ready(5)
        old.decide(f"user-{i}", 1, old.rules.default)
        await old.stop()
    clock.advance(60)  # long before the outage: none of them is alive
    node = memory_node(log, clock, "new", fail_mode="share", rate=1, burst=30)
    async with node:
        await node.wait_ready(5)
        assert node.replicator is not None
        assert node.replicator.alive_peers(node.settings.peer_timeout_s) == 0
        await _cut(log, node)
        admitted = sum(node.decide("solo", 1, node.rules.default).allowed for _ in range(40))
    assert admitted == 30  # the whole burst: no live peer shares it (1/21 gave 1)
