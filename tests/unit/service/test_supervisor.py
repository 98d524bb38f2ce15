"""Background work never dies silently: a crash is logged, counted, restarted; repeated
crashes make the node not ready with the reason; stop still publishes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from crdt.delta import Delta
from service.engine import Engine
from service.testing import ManualClock, MemoryLog
from tests.service_helpers import clean_env, memory_node, sample, wait_for


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    monkeypatch.setattr("service.supervisor.RESTART_BACKOFF_S", 0.01)
    monkeypatch.setattr("service.supervisor.MAX_BACKOFF_S", 0.05)
    monkeypatch.setattr("service.supervisor.RECOVERY_S", 0.5)


def failing_apply(fail: int) -> Any:
    """An Engine.apply that raises an unexpected error on its first `fail` calls."""
    real = Engine.apply
    calls = {"n": 0}

    def apply(self: Engine, items: Iterable[tuple[str, Delta]], now: float) -> int:
        calls["n"] += 1
        if calls["n"] <= fail:
            raise RuntimeError("a bug while merging")
        return real(self, items, now)

    return apply


async def test_a_crashed_merge_is_counted_restarted_and_merging_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log, clock = MemoryLog(2), ManualClock()
    a = memory_node(log, clock, "a")
    b = memory_node(log, clock, "b")
    async with a, b:
        await a.wait_ready(5)
        await b.wait_ready(5)
        monkeypatch.setattr(Engine, "apply", failing_apply(1))
        assert a.decide("alice", 1, a.rules.default).allowed
        await wait_for(lambda: sample(b, "ratelimiter_task_failures_total", task="consume") == 1)
        assert a.decide("alice", 1, a.rules.default).allowed
        # The restarted consumer merges what comes next (the first record was not lost
        # either: absolute cells, the next flush carries it).
        await wait_for(
            lambda: b.engine.view("alice", b.rules.default).consumed == 2,
            what="b merging after the restart",
        )
        assert b.ready


async def test_repeated_crashes_make_the_node_not_ready_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log, clock = MemoryLog(2), ManualClock()
    a = memory_node(log, clock, "a")
    b = memory_node(log, clock, "b")
    async with a, b:
        await a.wait_ready(5)
        await b.wait_ready(5)
        monkeypatch.setattr(Engine, "apply", failing_apply(10**9))
        for i in range(3):  # each admission makes a record the consumer fails on
            a.decide(f"user-{i}", 1, a.rules.default)
            await wait_for(
                lambda: sample(b, "ratelimiter_task_failures_total", task="consume") > i,  # noqa: B023
                what=f"failure {i + 1}",
            )
        await wait_for(lambda: b.failing is not None, what="b to report the failing task")
        assert "consume" in (b.failing or "")
        assert "a bug while merging" in (b.failing or "")
        assert sample(b, "ratelimiter_ready") == 0
        monkeypatch.setattr(Engine, "apply", failing_apply(0))
        await wait_for(lambda: b.failing is None, within=10, what="recovery")
        assert sample(b, "ratelimiter_ready") == 1
