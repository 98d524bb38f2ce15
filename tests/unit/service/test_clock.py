"""Clock discipline: wall-clock steps never reach decisions; a node measures its offset
from the broker's stamps and corrects it (or refuses readiness); one node's clock far
ahead does not deny users on the others."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from service.bootstrap import build_node
from service.clock import AnchoredClock, DisciplinedClock, Stamp
from service.http.app import create_app
from service.node import Node
from service.settings import load_settings
from service.testing import T0, ManualClock, MemoryLog
from tests.service_helpers import clean_env, memory_node, sample, served, wait_for


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


class FakeTime:
    """A stand-in for the `time` module: a wall clock and a monotonic one."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 100.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def test_the_node_clock_ignores_a_wall_clock_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10 s step back of the wall clock used to deny a user sending at half the rate for
    about 8 s: the default clock now advances with the monotonic clock."""
    fake = FakeTime()
    monkeypatch.setattr("service.clock.time", fake)
    node = build_node(load_settings(kafka="none", rate=10, burst=20))
    rule = node.rules.default
    denied = 0
    for i in range(200):
        fake.advance(0.2)  # 5 requests a second: half the rate
        if i == 100:
            fake.wall -= 10.0  # NTP steps the wall clock back
        if i == 150:
            fake.wall += 30.0  # ... and forward
        denied += not node.engine.decide("alice", 1, rule).allowed
    assert denied == 0


def test_anchored_clock_reads_the_wall_once() -> None:
    fake = FakeTime()
    clock = AnchoredClock(fake.time, fake.monotonic)
    start = clock()
    fake.wall -= 10.0
    fake.mono += 1.0
    assert clock() == pytest.approx(start + 1.0)


def _stamp(clock: DisciplinedClock, broker: float, rtt: float) -> Stamp:
    sent = clock()
    return Stamp(sent, broker + rtt / 2, sent + rtt)


def test_correct_mode_steps_to_the_broker_within_the_round_trip() -> None:
    source = ManualClock(T0 + 3600.0)  # an hour ahead of the broker at T0
    clock = DisciplinedClock(source, "correct", max_skew_s=1.0)
    assert math.isnan(clock.offset)
    clock.observe(_stamp(clock, T0, rtt=0.004))
    assert clock() == pytest.approx(T0, abs=0.004)
    assert clock.raw_offset == pytest.approx(-3600.0, abs=0.004)
    assert clock.problem() is None
    # Small offsets within the round trip's uncertainty are noise: no further step.
    steps = clock.steps
    clock.observe(_stamp(clock, clock() + 0.001, rtt=0.004))
    assert clock.steps == steps


def test_the_tightest_sample_wins() -> None:
    clock = DisciplinedClock(ManualClock(T0), "correct")
    clock.observe(Stamp(T0, T0 + 0.9, T0 + 0.2))  # slow round trip: offset 0.8 +- 0.1
    first = clock.correction
    clock.observe(Stamp(clock(), clock() + 0.0005, clock() + 0.001))  # tight: it agrees now
    assert clock.measured is not None
    assert clock.measured.uncertainty < 0.01
    assert clock.correction == pytest.approx(first, abs=0.01)


def test_refuse_mode_keeps_its_time_and_says_why() -> None:
    source = ManualClock(T0 + 8.0)
    clock = DisciplinedClock(source, "refuse", max_skew_s=1.0)
    assert clock.problem() is None  # unmeasured: nothing to refuse on yet
    clock.observe(_stamp(clock, T0, rtt=0.004))
    assert clock() == T0 + 8.0
    problem = clock.problem()
    assert problem is not None
    assert "+8.0" in problem
    assert "--max-clock-skew-s" in problem


def test_a_round_trip_slower_than_the_bound_is_not_trusted() -> None:
    clock = DisciplinedClock(ManualClock(T0), "correct", max_skew_s=0.5)
    clock.observe(Stamp(T0, T0 + 5.0, T0 + 3.0))
    assert clock.correction == 0.0
    problem = clock.problem()
    assert problem is not None
    assert "unknown within 0.5 s" in problem


async def _pair(log: MemoryLog, ahead: ManualClock, broker: ManualClock, **kw: Any) -> list[Node]:
    nodes = [
        memory_node(log, broker, "honest", rate=10, burst=20),
        memory_node(log, ahead, "ahead", rate=10, burst=20, **kw),
    ]
    for node in nodes:
        await node.start()
    for node in nodes:
        await node.wait_ready(5)
    return nodes


async def _round_robin_denials(nodes: list[Node], broker: ManualClock, ahead: ManualClock) -> int:
    """Alice sends at half her rate, alternating nodes; returns how many were denied."""
    denied = 0
    for i in range(60):
        broker.advance(0.2)
        ahead.advance(0.2)
        node = nodes[i % 2]
        denied += not node.decide("alice", 1, node.rules.default).allowed
        # Let both nodes flush and merge (the memory log delivers at once).
        for n in nodes:
            assert n.replicator is not None
            await n.replicator.flush()
        await wait_for(lambda: all(n.replicator and not n.engine.dirty_count() for n in nodes), 5)
        await _merged(nodes)
    return denied


async def _merged(nodes: list[Node]) -> None:
    for n in nodes:
        assert n.replicator is not None
        records = await n.replicator.log.fetch(0.0, 10_000)
        if records:
            await n.replicator._merge(records)


async def test_a_node_an_hour_ahead_is_corrected_and_denies_nobody() -> None:
    broker = ManualClock(T0)
    ahead = ManualClock(T0 + 3600.0)
    log = MemoryLog(4, broker_clock=broker)
    nodes = await _pair(log, ahead, broker)
    try:
        assert nodes[1].clock() == pytest.approx(broker(), abs=0.01)
        assert await _round_robin_denials(nodes, broker, ahead) == 0
        offset = sample(nodes[1], "ratelimiter_clock_offset_seconds")
        assert offset == pytest.approx(-3600.0, abs=0.01)
    finally:
        for node in nodes:
            await node.stop()


async def test_without_correction_receivers_bound_the_damage_of_a_clock_ahead() -> None:
    """An uncorrected node an hour ahead used to leave the user denied everywhere for about
    an hour; receivers now clamp its floors to now + C/r + the seal horizon."""
    broker = ManualClock(T0)
    ahead = ManualClock(T0 + 3600.0)
    log = MemoryLog(4, broker_clock=broker)
    nodes = await _pair(log, ahead, broker, clock_mode="off")
    try:
        honest, skewed = nodes
        assert skewed.decide("alice", 20, skewed.rules.default).allowed
        assert skewed.replicator is not None
        await skewed.replicator.flush()
        await _merged([honest])
        rule = honest.rules.default
        assert honest.engine.view("alice", rule).consumed == 20  # counted, not dropped
        problems = honest.engine.limiter(rule).stats.entry_problems
        assert problems == {"epoch_ahead": 1, "floor_ahead": 1}
        # Full after C/r (2 s) + seal horizon (3 s) + an epoch (1 s), not after an hour.
        broker.advance(6.2)
        assert honest.decide("alice", 20, rule).allowed
    finally:
        for node in nodes:
            await node.stop()


async def test_refuse_mode_is_not_ready_with_the_reason() -> None:
    broker = ManualClock(T0)
    ahead = ManualClock(T0 + 8.0)
    log = MemoryLog(4, broker_clock=broker)
    node = memory_node(log, ahead, "ahead", clock_mode="refuse")
    await node.start()
    try:
        await node.wait_ready(5)
        app = served(create_app(node.settings, node))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://n") as client:
            response = await client.get("/readyz")
        assert response.status_code == 503
        assert "+8.000 s from the broker" in response.json()["error"]
        assert sample(node, "ratelimiter_ready") == 0.0
    finally:
        await node.stop()
