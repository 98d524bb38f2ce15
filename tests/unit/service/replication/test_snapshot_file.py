"""The local snapshot file: a node stopped gracefully writes its state with the offsets it
covers; restarted with the same --state-dir it loads it and reads only the rest of the
topic, and decides exactly as a node that read the whole topic."""

from __future__ import annotations

import marshal
from pathlib import Path

import pytest

from service.replication import snapshot
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


async def stopped_with_snapshot(tmp_path: Path, log: MemoryLog, clock: ManualClock) -> Path:
    """Node "a" admits 3 for each of USERS, stops (writing its file); the file's path."""
    a = memory_node(log, clock, "a", state_dir=tmp_path, rate=0.01, burst=20)
    await a.start()
    await a.wait_ready(5)
    for user in USERS:
        assert a.decide(user, 3, a.rules.default).allowed
    await a.stop()
    return snapshot_path(tmp_path, "a", a.settings.topic)


async def test_the_file_is_read_a_chunk_at_a_time_and_a_cut_one_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are marshalled in chunks (a million rows made at once scattered the memory of
    the keys kept); every chunk is loaded, and a file cut anywhere is not used."""
    monkeypatch.setattr(snapshot, "CHUNK_ROWS", 7)
    clock = ManualClock(T0)
    log = MemoryLog(4, broker_clock=clock)
    path = await stopped_with_snapshot(tmp_path, log, clock)
    found = read_snapshot(path, "ratelimiter.state", 4)
    assert found is not None
    [(_, chunks)] = found.limiters.values()
    assert len(chunks) == -(-len(USERS) // 7)
    again = memory_node(log, clock, "a", state_dir=tmp_path, rate=0.01, burst=20)
    await again.start()
    await again.wait_ready(5)
    try:
        assert again.replicator is not None
        assert again.replicator.snapshot_keys_loaded == len(USERS)
    finally:
        await again.stop()
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, len(snapshot.MAGIC) + 3):
        path.write_bytes(data[:cut])
        assert read_snapshot(path, "ratelimiter.state", 4) is None
    path.write_bytes(data + b"\x00" * 12)  # a frame longer than the file
    assert read_snapshot(path, "ratelimiter.state", 4) is None
    path.write_bytes(marshal.dumps({"v": 1, "topic": "ratelimiter.state", "partitions": 4}))
    assert read_snapshot(path, "ratelimiter.state", 4) is None  # the format before chunks


async def test_a_damaged_chunk_keeps_what_was_loaded_and_reads_the_whole_topic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot, "CHUNK_ROWS", 50)
    clock = ManualClock(T0)
    log = MemoryLog(4, broker_clock=clock)
    path = await stopped_with_snapshot(tmp_path, log, clock)
    data = bytearray(path.read_bytes())
    found = read_snapshot(path, "ratelimiter.state", 4)
    assert found is not None
    [(_, chunks)] = found.limiters.values()
    last = chunks[-1]
    start = len(data) - len(last)
    data[start : len(data)] = b"\xff" * len(last)  # the framing adds up, the content does not
    path.write_bytes(bytes(data))
    again = memory_node(log, clock, "a", state_dir=tmp_path, rate=0.01, burst=20)
    await again.start()
    await again.wait_ready(5)
    try:
        loaded = again.metrics.registry.get_sample_value(
            "ratelimiter_bootstrap_keys_loaded", {"source": "file"}
        )
        assert loaded == 150  # three chunks of 50 before the damaged one
        records = sum(map(len, log.partitions))
        assert again.metrics.bootstrap_records._value.get() == records  # the whole topic
        for user in USERS:
            assert again.engine.view(user, again.rules.default).consumed == 3
    finally:
        await again.stop()
