"""The node's own metrics: the event-loop lag probe, histogram quantiles."""

from __future__ import annotations

import asyncio
import contextlib
import time

from service.metrics import Metrics
from tests.service_helpers import wait_for

LAG = "ratelimiter_event_loop_lag_seconds"


def observed(metrics: Metrics, suffix: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(LAG + suffix, labels or None) or 0.0


async def test_the_loop_lag_probe_sees_work_that_holds_the_loop() -> None:
    metrics = Metrics("probe")
    probe = asyncio.create_task(metrics.probe_loop_lag(0.005))
    try:
        await wait_for(lambda: observed(metrics, "_count") >= 3, what="a few quiet probes")
        assert observed(metrics, "_bucket", le="0.1") == observed(metrics, "_count")

        held_until = time.perf_counter() + 0.2
        while time.perf_counter() < held_until:  # hold the loop, as a big flush would
            pass
        before = observed(metrics, "_count")
        await wait_for(lambda: observed(metrics, "_count") > before, what="the next probe")
    finally:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe

    assert observed(metrics, "_sum") >= 0.15
    assert observed(metrics, "_bucket", le="0.1") < observed(metrics, "_count")
    assert b"ratelimiter_event_loop_lag_seconds_bucket" in metrics.render()
