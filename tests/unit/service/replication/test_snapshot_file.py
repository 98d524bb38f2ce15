"""The local snapshot file: a node stopped gracefully writes its state with the offsets it
covers; restarted with the same --state-dir it loads it and reads only the rest of the
topic, and decides exactly as a node that read the whole topic."""

from __future__ import annotations

import marshal
from pathlib import Path

import pytest

from service.replication.snapshot import read_snapshot, snapshot_path
from service.testing import T0, ManualClock, MemoryLog
from tests.service_helpers import clean_env, memory_node

USERS = [f"u{i}" for i in range(200)]


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


async def test_a_restart_loads_the_snapshot_and_reads_only_the_rest(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    log = MemoryLog(4, broker_clock=clock)
    slow = {"rate": 0.01, "burst": 20}  # buckets stay in use through the test
    a = memory_node(log, clock, "a", state_dir=tmp_path, **slow)
    b = memory_node(log, clock, "b", **slow)
    for node in (a, b):
        await node.start()
        await node.wait_ready(5)
    for user in USERS:
        assert a.decide(user, 3, a.rules.default).allowed
        assert b.decide(user, 2, b.rules.default).allowed
    assert b.replicator is not None
    await b.replicator.flush()
    await a.stop()  # publishes, then writes the snapshot
    path = snapshot_path(tmp_path, "a", a.settings.topic)
    found = read_snapshot(path, a.settings.topic, 4)
    assert found is not None
    assert sum(found.offsets.values()) > 0

    # Written after the snapshot: must still be read by the restarted node.
    for user in USERS[:10]:
        assert b.decide(user, 1, b.rules.default).allowed
    await b.replicator.flush()

    again = memory_node(log, clock, "a", state_dir=tmp_path, **slow)
    fresh = memory_node(log, clock, "fresh", **slow)  # reads the whole topic
    for node in (again, fresh):
        await node.start()
        await node.wait_ready(5)
    try:
        assert again.replicator is not None
        assert again.replicator.snapshot_keys_loaded == len(USERS)
        records = sum(map(len, log.partitions))
        assert again.metrics.bootstrap_records._value.get() < records / 4  # only the rest
        rule = again.rules.default
        for user in USERS:
            mine, theirs = again.engine.view(user, rule), fresh.engine.view(user, rule)
            assert mine.tokens == pytest.approx(theirs.tokens)
            assert mine.contributions == theirs.contributions
            assert mine.consumed == (6 if user in USERS[:10] else 5)
    finally:
        for node in (again, fresh, b):
            await node.stop()


async def test_a_snapshot_of_other_limits_or_a_damaged_file_is_ignored(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    log = MemoryLog(4, broker_clock=clock)
    a = memory_node(log, clock, "a", state_dir=tmp_path, rate=0.01, burst=20)
    await a.start()
    await a.wait_ready(5)
    assert a.decide("alice", 5, a.rules.default).allowed
    await a.stop()
    changed = memory_node(log, clock, "a", state_dir=tmp_path, rate=0.01, burst=40)
    await changed.start()
    await changed.wait_ready(5)
    try:
        assert changed.replicator is not None
        assert changed.replicator.snapshot_keys_loaded == 0  # its limits differ: not loaded
    finally:
        await changed.stop()
    path = snapshot_path(tmp_path, "a", a.settings.topic)
    path.write_bytes(marshal.dumps({"v": 1})[:3])
    damaged = memory_node(log, clock, "a", state_dir=tmp_path, rate=0.01, burst=40)
    await damaged.start()
    await damaged.wait_ready(5)  # reads the whole topic instead
    try:
        assert damaged.engine.view("alice", damaged.rules.default).consumed == 5
    finally:
        await damaged.stop()
