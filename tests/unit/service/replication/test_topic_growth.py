"""The state topic stays the size of the live state: a node tombstones its key records of
keys deleted as idle, and the next node to bootstrap tombstones the records of writers
silent beyond --expire-writers-s once they cannot matter. Deploy after deploy, what a new
node reads is bounded by the active keys times the live writers."""

from __future__ import annotations

import pytest

from service.node import Node
from service.replication import codec
from service.testing import T0, ManualClock, MemoryLog
from tests.service_helpers import clean_env, memory_node, wait_for

USERS = [f"user-{i}" for i in range(40)]
EXPIRE_S = 60.0


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


def live_records(log: MemoryLog) -> dict[bytes, bytes]:
    """What compaction converges to: the newest value per key, tombstoned keys gone."""
    latest: dict[bytes, bytes | None] = {}
    for partition in log.partitions:
        for record in partition:
            assert record.key is not None
            latest[record.key] = record.value
    return {k: v for k, v in latest.items() if v is not None}


def key_records_by_writer(log: MemoryLog) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in live_records(log):
        if not key.startswith(codec.SEP.encode()):
            writer = key.decode().split(codec.SEP)[2]
            out[writer] = out.get(writer, 0) + 1
    return out


async def deploy(log: MemoryLog, clock: ManualClock, count: int, traffic: bool) -> list[Node]:
    nodes = [
        memory_node(log, clock, f"n{i}", rate=10, burst=20, expire_writers_s=EXPIRE_S)
        for i in range(count)
    ]
    for node in nodes:
        await node.start()
    for node in nodes:
        await node.wait_ready(5)
    if traffic:
        for node in nodes:
            for user in USERS:
                assert node.decide(user, 1, node.rules.default).allowed
    return nodes


async def stop(nodes: list[Node]) -> None:
    for node in nodes:
        await node.stop()  # the final flushes write every key record


async def test_deploys_do_not_grow_the_topic() -> None:
    """20 deploys x 3 nodes x 200 users used to leave 12,240 keys compaction kept forever;
    here 8 deploys x 3 nodes x 40 users: without expiry, 960 key records."""
    clock = ManualClock(T0)
    log = MemoryLog(4, broker_clock=clock)
    for _ in range(8):
        nodes = await deploy(log, clock, 3, traffic=True)
        await stop(nodes)
        clock.advance(EXPIRE_S + 10)  # the deploy's writers fall silent; buckets refill

    # The next deploy bootstraps, finds the silent writers, and tombstones their records
    # once they are settled (here at once: every bucket is full).
    nodes = await deploy(log, clock, 3, traffic=False)
    try:
        await wait_for(lambda: not key_records_by_writer(log), 10, what="silent writers expired")
        live = live_records(log)
        # What is left: batch records of the live nodes (their clock probes).
        assert all(key.startswith(codec.SEP.encode()) for key in live)
        writers = {key.decode().split(codec.SEP)[2] for key in live}
        assert writers <= {node.replica for node in nodes}
    finally:
        await stop(nodes)


async def test_silent_records_of_active_users_expire_once_the_bucket_is_full() -> None:
    clock = ManualClock(T0)
    log = MemoryLog(4, broker_clock=clock)
    old = await deploy(log, clock, 2, traffic=True)
    await stop(old)
    clock.advance(EXPIRE_S + 10)
    nodes = await deploy(log, clock, 1, traffic=False)
    node = nodes[0]
    try:
        # The user is active again (tracked), yet within its limit: the silent writers'
        # records of it cannot change a decision and go.
        for _ in range(3):
            assert node.decide("user-1", 1, node.rules.default).allowed
        clock.advance(1.0)
        await wait_for(
            lambda: set(key_records_by_writer(log)) <= {node.replica},
            10,
            what="silent writers' records expired",
        )
        assert node.decide("user-1", 20, node.rules.default).allowed
    finally:
        await stop(nodes)


async def test_a_writer_that_wrote_lately_is_not_expired() -> None:
    clock = ManualClock(T0)
    log = MemoryLog(4, broker_clock=clock)
    [first] = await deploy(log, clock, 1, traffic=True)
    assert first.replicator is not None
    await first.replicator.flush()
    await first.replicator.flush(final=True)
    clock.advance(EXPIRE_S + 10)  # its key records are older than the expiry ...
    assert first.decide("user-2", 1, first.rules.default).allowed
    await first.replicator.flush()  # ... but it wrote just now: it is alive
    [second] = await deploy(log, clock, 1, traffic=False)
    try:
        assert second.replicator is not None
        assert first.replica not in second.replicator._silent
    finally:
        await stop([first, second])


async def test_own_key_records_are_tombstoned_when_the_key_is_deleted_as_idle() -> None:
    clock = ManualClock(T0)
    log = MemoryLog(4, broker_clock=clock)
    [node] = await deploy(log, clock, 1, traffic=True)
    assert node.replicator is not None
    try:
        await node.replicator.flush()
        await node.replicator.flush(final=True)
        assert key_records_by_writer(log) == {node.replica: len(USERS)}
        clock.advance(30.0)  # every bucket full, every epoch sealed
        node.maintain(10_000)
        assert node.engine.tracked_keys() == 0
        await node.replicator.flush()
        assert key_records_by_writer(log) == {}
        assert node.replicator.tombstones_written == len(USERS)
    finally:
        await node.stop()
