"""The sweep's budget follows the keys held: every key looked at about once per
SWEEP_PASS_S, never more than SWEEP_BUDGET keys per sweep; and idle keys still go."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from service.node import (
    SWEEP_BUDGET,
    SWEEP_INTERVAL_S,
    SWEEP_PASS_S,
    SWEEP_SLICE,
    sweep_slices,
)
from service.testing import T0, ManualClock, MemoryLog
from tests.service_helpers import memory_node, wait_for


@given(st.integers(min_value=0, max_value=5_000_000))
def test_a_pass_over_every_key_takes_about_sweep_pass_s_within_the_budget(tracked: int) -> None:
    slices = sweep_slices(tracked)
    per_sweep = slices * SWEEP_SLICE
    assert 1 <= slices <= SWEEP_BUDGET // SWEEP_SLICE
    sweeps_per_pass = SWEEP_PASS_S / SWEEP_INTERVAL_S
    if per_sweep < SWEEP_BUDGET:
        assert per_sweep * sweeps_per_pass >= tracked  # every key within a pass
        # ... and not much more often: at most a slice over what a pass needs.
        assert per_sweep - SWEEP_SLICE < max(1, math.ceil(tracked / sweeps_per_pass))


async def test_idle_keys_of_a_small_node_are_still_deleted_within_a_pass() -> None:
    clock = ManualClock(T0)
    node = memory_node(MemoryLog(2, broker_clock=clock), clock, "a", rate=1000, burst=5)
    await node.start()
    try:
        await node.wait_ready(5)
        for i in range(300):
            assert node.decide(f"u{i}", 1, node.rules.default).allowed
        assert node.engine.tracked_keys() == 300
        clock.advance(60)  # every epoch sealed, every bucket full: all idle
        await wait_for(lambda: node.engine.tracked_keys() == 0, 5, "the sweep deleted them")
    finally:
        await node.stop()
