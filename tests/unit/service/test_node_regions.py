"""Regions on in-memory logs: remote records merged, lag and freshness, region fail modes."""

from __future__ import annotations

from functools import partial

import httpx

from service.http.app import create_app
from service.node import Node
from service.regions import RegionLink
from service.testing import ManualClock, MemoryLog, MemoryRemoteLog
from tests.service_helpers import memory_node, sample, served, wait_for

STALE_S = 3.0


async def _regions(
    clock: ManualClock, mode: str
) -> tuple[MemoryRemoteLog, MemoryRemoteLog, Node, Node]:
    """A node in region a and one in region b, each mirroring the other's log."""
    log_a, log_b = MemoryLog(4, broker_clock=clock), MemoryLog(4, broker_clock=clock)
    mirror_to_a = MemoryRemoteLog({"b.ratelimiter.state": log_b})
    mirror_to_b = MemoryRemoteLog({"a.ratelimiter.state": log_a})
    common = {"region_fail_mode": mode, "region_stale_s": STALE_S, "rate": 1, "burst": 30}
    a = memory_node(log_a, clock, "a1", remote_log=mirror_to_a, region="a", **common)
    b = memory_node(log_b, clock, "b1", remote_log=mirror_to_b, region="b", **common)
    for node in (a, b):
        await node.start()
    for node in (a, b):
        await node.wait_ready(5)
    return mirror_to_a, mirror_to_b, a, b


def _newer(link: RegionLink, than: float) -> bool:
    return link.newest > than


def _consumed(node: Node, user: str, cost: int) -> bool:
    return node.engine.view(user, node.rules.default).consumed == cost


def _state(node: Node) -> str:
    [view] = node.regions_view()
    return str(view["state"])


async def test_consumption_in_one_region_is_merged_in_the_other() -> None:
    clock = ManualClock()
    _, _, a, b = await _regions(clock, "local")
    try:
        rule = a.rules.default
        assert sum(a.decide("ann", 1, rule).allowed for _ in range(30)) == 30
        await wait_for(lambda: b.engine.view("ann", rule).consumed == 30, 5, "b merged a's")
        assert not b.decide("ann", 1, rule).allowed
        assert _state(b) == "fresh"
        assert b.replicator is not None
        # Remote writers are not local peers: share mode's N stays this region's.
        assert b.replicator.alive_peers(60) == 0
        # Nothing of region a is ever written to b's own topic.
        assert b.replicator.regions.links["a"].records > 0
    finally:
        await a.stop()
        await b.stop()


async def test_an_idle_region_stays_fresh_through_its_heartbeats() -> None:
    clock = ManualClock()
    _, _, a, b = await _regions(clock, "share")
    try:
        assert b.replicator is not None
        regions = b.replicator.regions
        link = regions.links["a"]
        for _ in range(10):  # 10 s without a request anywhere
            clock.advance(1.0)
            seen = link.newest
            await wait_for(partial(_newer, link, seen), 5, "a heartbeat")
        assert _state(b) == "fresh"
        assert regions.lag("a", clock()) <= 1.0
        assert b.mode == "normal"
    finally:
        await a.stop()
        await b.stop()


async def test_share_mode_takes_one_rth_while_a_region_is_stale_and_sums_after_heal() -> None:
    clock = ManualClock()
    mirror_to_a, mirror_to_b, a, b = await _regions(clock, "share")
    try:
        rule = a.rules.default
        mirror_to_a.cut = mirror_to_b.cut = True
        clock.advance(STALE_S + 0.5)
        await wait_for(lambda: a.region_share and b.region_share, 5, "both regions in share")
        assert _state(a) == "stale"
        assert a.mode == "region_share"
        # Burst 30, two regions, one node each: each region may spend 15 while cut off.
        assert sum(a.decide("bo", 1, rule).allowed for _ in range(40)) == 15
        assert sum(b.decide("bo", 1, rule).allowed for _ in range(40)) == 15
        mirror_to_a.cut = mirror_to_b.cut = False
        await wait_for(lambda: not a.region_share and not b.region_share, 5, "fresh again")
        assert a.mode == "normal"
        # Nothing lost: each region holds both regions' consumption.
        for node in (a, b):
            await wait_for(partial(_consumed, node, "bo", 30), 5, "both regions' sum")
        assert not a.decide("bo", 1, rule).allowed
    finally:
        await a.stop()
        await b.stop()


async def test_local_mode_keeps_deciding_on_the_whole_limit_while_stale() -> None:
    clock = ManualClock()
    mirror_to_a, _, a, b = await _regions(clock, "local")
    try:
        mirror_to_a.cut = True
        clock.advance(STALE_S + 0.5)
        await wait_for(lambda: _state(a) == "stale", 5, "b stale in a")
        assert not a.region_share
        assert sum(a.decide("cy", 1, a.rules.default).allowed for _ in range(40)) == 30
    finally:
        await a.stop()
        await b.stop()


async def test_regions_endpoint_and_readyz_report_each_remote_region() -> None:
    clock = ManualClock()
    _, _, a, b = await _regions(clock, "share")
    try:
        app = served(create_app(a.settings, a))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
            body = (await client.get("/v1/regions")).json()
            assert body["region"] == "a"
            assert body["fail_mode"] == "share"
            [view] = body["regions"]
            assert view["region"] == "b"
            assert view["topics"] == ["b.ratelimiter.state"]
            assert view["state"] == "fresh"
            ready = (await client.get("/readyz")).json()
            assert ready["regions"] == {"b": "fresh"}
            metrics = (await client.get("/metrics")).text
            assert 'ratelimiter_region_fresh{region="b"} 1.0' in metrics
            assert 'ratelimiter_region_lag_seconds{region="b"}' in metrics
    finally:
        await a.stop()
        await b.stop()


async def test_a_region_found_after_start_is_read_from_its_beginning() -> None:
    clock = ManualClock()
    log_a, log_b = MemoryLog(4, broker_clock=clock), MemoryLog(4, broker_clock=clock)
    mirror_to_a = MemoryRemoteLog()  # region b's topic is not mirrored yet
    common = {"rate": 1, "burst": 30, "region_stale_s": STALE_S}
    a = memory_node(log_a, clock, "a1", remote_log=mirror_to_a, region="a", **common)
    b = memory_node(log_b, clock, "b1", remote_log=MemoryRemoteLog(), region="b", **common)
    for node in (a, b):
        await node.start()
    try:
        for node in (a, b):
            await node.wait_ready(5)
        rule = b.rules.default
        assert sum(b.decide("dee", 1, rule).allowed for _ in range(30)) == 30
        assert b.replicator is not None
        replicator = b.replicator
        await wait_for(
            lambda: replicator.buffered == 0 and b.engine.dirty_count() == 0, 5, "b published"
        )
        clock.advance(100.0)  # long repaid at 1/s
        applied = "ratelimiter_deltas_applied_total"
        assert sample(a, applied) == 0
        mirror_to_a.mirrored["b.ratelimiter.state"] = log_b  # MirrorMaker starts
        await wait_for(lambda: sample(a, applied) > 0, 5, "a merged b's history")
        # Long repaid, dee is idle once merged: the sweep may already have forgotten it.
        deleted = sample(a, "ratelimiter_store_events_total", kind="deleted_idle")
        assert _consumed(a, "dee", 30) or deleted == 1
        await wait_for(lambda: _state(a) == "fresh", 5, "b fresh in a")
        # Its history, long repaid: the user's bucket is full in region a.
        assert a.engine.view("dee", rule).tokens == 30
        assert sum(a.decide("dee", 1, rule).allowed for _ in range(30)) == 30
    finally:
        await a.stop()
        await b.stop()
