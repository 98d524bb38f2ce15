"""The Replicator over an in-memory state log, alone and inside nodes: flush, merge,
bootstrap, outage, poison."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from crdt.delta import Delta, Entry
from crdt.policy import SyncTiming
from service.bootstrap import build_node
from service.clock import to_unix_ms
from service.engine import Engine
from service.errors import Unavailable
from service.metrics import Metrics
from service.node import Node
from service.replication import codec
from service.replication.codec import partition_for_user
from service.replication.replicator import COLLECT_SLICE, Replicator
from service.replication.statelog import OutRecord
from service.rules.model import RuleSet, default_rule
from service.settings import load_settings
from service.testing import ManualClock, MemoryLog, MemoryStateLog
from tests.service_helpers import clean_env, memory_node, sample, wait_for

PARTITIONS = 4
BURST = 20

StartNode = Callable[..., Awaitable[Node]]


@pytest.fixture(autouse=True)
def _memory_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog(PARTITIONS)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def nodes(log: MemoryLog, clock: ManualClock) -> AsyncIterator[StartNode]:
    """Start nodes on the shared log; every one still running is stopped at the end."""
    async with AsyncExitStack() as stack:

        async def start(node_id: str, **overrides: Any) -> Node:
            node = memory_node(log, clock, node_id, **overrides)
            await node.start()
            stack.push_async_callback(node.stop)
            await node.wait_ready(5)
            return node

        yield start


def replicator_on(
    log: MemoryLog,
    clock: ManualClock,
    replica: str,
    flush_s: float = 0.02,
    snapshot_s: float = 3600.0,
    rate: float = 10.0,
) -> Replicator:
    """A Replicator wired by hand (as bootstrap does) over its own engine and the log."""
    rules = RuleSet(default=default_rule("token_bucket", rate, BURST, 1.0))
    engine = Engine(rules, replica, clock, SyncTiming(1.0, 3.0), max_keys=100_000)
    return Replicator(
        engine,
        MemoryStateLog(log),
        Metrics(replica.partition("/")[0]),
        clock,
        lambda user: partition_for_user(user, PARTITIONS),
        flush_s=flush_s,
        snapshot_s=snapshot_s,
        max_buffered=100_000,
    )


def spend(replicator: Replicator, user: str, times: int) -> None:
    engine = replicator.engine
    for _ in range(times):
        assert engine.decide(user, 1, engine.rules.default).allowed


def published(log: MemoryLog) -> list[tuple[bytes | None, codec.Decoded]]:
    return [(r.key, codec.decode(r.value)) for part in log.partitions for r in part]


async def test_a_flush_ships_absolute_cells_in_one_batch_per_partition(
    log: MemoryLog, clock: ManualClock
) -> None:
    a = replicator_on(log, clock, "a/1")
    spend(a, "alice", 3)
    spend(a, "bob", 2)
    await a.flush()

    records = published(log)
    keys = {
        codec.batch_record_key("a/1", partition_for_user(u, PARTITIONS)) for u in ("alice", "bob")
    }
    assert {key for key, _ in records} == keys
    cells = {d.key: d.entries[-1].p for _, rec in records for _, d in rec.items}
    assert cells == {"alice": 3, "bob": 2}
    assert a.buffered == 0

    spend(a, "alice", 1)
    await a.flush()
    newest = log.partitions[partition_for_user("alice", PARTITIONS)][-1]
    # The cell value, not an increment: replaying any record is harmless.
    assert [(d.key, d.entries[-1].p) for _, d in codec.decode(newest.value).items] == [("alice", 4)]


async def test_a_failed_publish_keeps_everything_buffered_until_the_log_answers(
    log: MemoryLog, clock: ManualClock
) -> None:
    a = replicator_on(log, clock, "a/1")
    log.available = False
    spend(a, "alice", 5)
    await a.flush()
    assert not a.broker_ok
    assert a.buffered == 1
    spend(a, "alice", 2)
    spend(a, "bob", 1)
    await a.flush()  # backing off: collected, neither encoded nor sent
    assert a.buffered == 2
    assert published(log) == []

    log.available = True

    async def retried() -> bool:
        await a.flush()
        return a.broker_ok

    await wait_for(retried, what="the publish after the backoff")
    assert a.buffered == 0
    b = replicator_on(log, clock, "b/1")
    await b.bootstrap(1.0)
    assert b.engine.view("alice", b.engine.rules.default).contributions == {"a/1": 7}
    assert b.engine.view("bob", b.engine.rules.default).contributions == {"a/1": 1}


async def test_failed_flushes_encode_each_change_once(
    log: MemoryLog, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = replicator_on(log, clock, "a/1")
    encoded: list[int] = []
    real = codec.encode_batch_rows

    def counting(replica: str, rows: Any, since_ms: int, ts_ms: int) -> bytes:
        encoded.append(len(rows))
        return real(replica, rows, since_ms, ts_ms)

    monkeypatch.setattr(codec, "encode_batch_rows", counting)
    monkeypatch.setattr("service.replication.replicator.MAX_BACKOFF_S", 0.0)
    log.available = False
    for i in range(300):
        spend(a, f"user-{i}", 1)
    for _ in range(5):
        await a.flush()  # every attempt fails; the 300 keys are encoded the first time only
    assert sum(encoded) == 300
    assert a.buffered == 300

    log.available = True
    await a.flush()
    assert a.broker_ok
    assert sum(encoded) == 300
    assert {d.key for _, rec in published(log) for _, d in rec.items} == {
        f"user-{i}" for i in range(300)
    }


def key_record_keys(log: MemoryLog) -> list[bytes]:
    sep = codec.SEP.encode()
    return [r.key for part in log.partitions for r in part if r.key and not r.key.startswith(sep)]


async def test_snapshots_are_spread_over_flushes_not_written_at_once(
    log: MemoryLog, clock: ManualClock
) -> None:
    # Half a snapshot interval is 10 flushes: a round of 3,000 keys goes 300 per flush.
    a = replicator_on(log, clock, "a/1", flush_s=0.01, snapshot_s=0.2)
    for i in range(3000):
        spend(a, f"user-{i}", 1)
    written: list[int] = []

    async def all_snapshotted() -> bool:
        before = len(key_record_keys(log))
        await a.flush()
        written.append(len(key_record_keys(log)) - before)
        return len(set(key_record_keys(log))) == 3000

    await wait_for(all_snapshotted, what="every key's key record")
    assert max(written) == 300
    assert sum(1 for n in written if n) >= 10
    assert len(key_record_keys(log)) == 3000  # each key once


async def test_keys_idle_by_their_round_get_no_key_record_and_no_tombstone(
    log: MemoryLog, clock: ManualClock
) -> None:
    # Many users seen once: by the round that snapshots them (the interval after next),
    # their buckets are full and their epochs sealed. Forgetting them changes no decision,
    # so no key record is written for them (nor, later, a tombstone); a key still
    # draining gets its record as before.
    a = replicator_on(log, clock, "a/1", flush_s=0.01, snapshot_s=0.2)
    for i in range(200):
        spend(a, f"once-{i}", 1)
    await a.flush()  # their batch record
    clock.advance(10.0)  # refilled, and every epoch they touched sealed (seal 3 s)
    spend(a, "hot", BURST)  # 2 s of refill ahead: not idle for a while
    (wire,) = a.engine.limiters
    hot_key = codec.key_record_key(wire, "hot", "a/1")

    async def hot_snapshotted() -> bool:
        await a.flush()
        return hot_key in key_record_keys(log)

    await wait_for(hot_snapshotted, what="the draining key's key record")
    assert key_record_keys(log) == [hot_key]
    assert a.idle_skipped == 200
    assert a.engine.sweep(clock(), 10_000) == 200  # the sweep forgets the same keys
    await a.flush()
    assert a.tombstones_written == 0  # nothing of theirs was written to tombstone


async def test_a_flush_takes_many_changed_keys_a_slice_at_a_time(
    log: MemoryLog, clock: ManualClock
) -> None:
    # While a publish waits on an unreachable broker, tens of thousands of keys change:
    # the next flush moves them into the buffer a slice at a time, letting requests in.
    a = replicator_on(log, clock, "a/1")
    total = 3 * COLLECT_SLICE + 50
    for i in range(total):
        spend(a, f"u-{i}", 1)
    loop = asyncio.get_running_loop()
    seen = [a.engine.dirty_count()]
    flushing = True

    def watch() -> None:  # runs once per turn of the event loop while the flush runs
        seen.append(a.engine.dirty_count())
        if flushing:
            loop.call_soon(watch)

    loop.call_soon(watch)
    await a.flush()
    flushing = False
    assert seen[0] == total
    assert a.engine.dirty_count() == 0
    assert any(0 < n < total for n in seen), "the event loop ran between slices"
    assert {d.key for _, dec in published(log) for _, d in dec.items} == {
        f"u-{i}" for i in range(total)
    }


async def test_merging_skips_own_records_and_counts_poison(
    log: MemoryLog, clock: ManualClock
) -> None:
    a = replicator_on(log, clock, "a/1")
    b = replicator_on(log, clock, "b/1")
    spend(a, "alice", 3)
    spend(b, "alice", 2)
    await a.flush()
    await b.flush()
    log.append(OutRecord(b"junk", b"{not json", 0))

    await b.bootstrap(1.0)

    view = b.engine.view("alice", b.engine.rules.default)
    assert view.contributions == {"a/1": 3, "b/1": 2}
    poison = b.metrics.registry.get_sample_value(
        "ratelimiter_poison_records_total", {"kind": "bad_json"}
    )
    assert poison == 1
    assert b.peers == {}  # history read at bootstrap makes nobody alive

    consume = asyncio.create_task(b.consume_loop())
    try:
        spend(a, "alice", 1)
        await a.flush()
        await wait_for(lambda: set(b.peers) == {"a/1"}, what="a heard from after bootstrap")
    finally:
        consume.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consume


def consumed(node: Node, user: str) -> int:
    return node.engine.view(user, node.rules.default).consumed


def admit(node: Node, user: str, times: int) -> list[bool]:
    return [node.decide(user, 1, node.rules.default).allowed for _ in range(times)]


async def test_user_exhausted_on_one_node_is_denied_on_another(
    nodes: StartNode,
) -> None:
    a: Node = await nodes("a")
    b: Node = await nodes("b")

    assert admit(a, "alice", BURST + 1) == [True] * BURST + [False]
    await wait_for(lambda: consumed(b, "alice") == BURST, what="B to merge A's consumption")

    assert admit(b, "alice", 1) == [False]
    assert b.engine.view("alice", b.rules.default).contributions == {a.replica: BURST}
    assert admit(b, "bob", 1) == [True]


async def test_consumption_adds_up_across_nodes(nodes: StartNode) -> None:
    a: Node = await nodes("a")
    b: Node = await nodes("b")

    assert all(admit(a, "carol", 8))
    assert all(admit(b, "carol", 5))
    await wait_for(lambda: consumed(a, "carol") == consumed(b, "carol") == 13, what="merge")

    view = a.engine.view("carol", a.rules.default)
    assert view.contributions == {a.replica: 8, b.replica: 5}
    assert view.tokens == pytest.approx(BURST - 13)


async def test_a_later_node_bootstraps_and_denies_once_ready(
    nodes: StartNode, log: MemoryLog
) -> None:
    a: Node = await nodes("a")
    admit(a, "alice", BURST)
    assert a.replicator is not None
    await wait_for(lambda: a.replicator is not None and a.replicator.buffered == 0, what="flush")
    await wait_for(lambda: sum(map(len, log.partitions)) > 0, what="records on the log")

    c: Node = await nodes("c")

    assert consumed(c, "alice") == BURST
    assert sample(c, "ratelimiter_bootstrap_records") > 0
    assert sample(c, "ratelimiter_ready") == 1
    assert admit(c, "alice", 1) == [False]


async def test_not_ready_until_bootstrapped(log: MemoryLog, clock: ManualClock) -> None:
    node = memory_node(log, clock, "late")
    await node.start()
    try:
        assert not node.ready  # connecting runs in the background
        with pytest.raises(Unavailable, match="still reading the state topic"):
            node.decide("alice", 1, node.rules.default)
        await node.wait_ready(5)
        assert node.ready
    finally:
        await node.stop()
    assert not node.ready


async def test_outage_buffers_then_delivers_everything(nodes: StartNode, log: MemoryLog) -> None:
    a: Node = await nodes("a")
    b: Node = await nodes("b")

    log.available = False
    admitted = sum(admit(a, "dora", 7)) + sum(admit(a, "eve", 3))
    await wait_for(
        lambda: (
            sample(a, "ratelimiter_publish_failures_total") >= 1
            and sample(a, "ratelimiter_buffered_deltas") > 0
        ),
        what="a failed publish with keys buffered",
    )
    assert sample(a, "ratelimiter_broker_up") == 0
    assert admitted == 10
    assert consumed(b, "dora") == 0
    # Still deciding locally while the log is away.
    assert admit(a, "dora", 1) == [True]
    admitted += 1

    log.available = True
    await wait_for(
        lambda: consumed(b, "dora") + consumed(b, "eve") == admitted,
        what="B to see everything A admitted during the outage",
    )
    await wait_for(lambda: sample(a, "ratelimiter_buffered_deltas") == 0, what="buffer drained")

    assert sample(a, "ratelimiter_broker_up") == 1
    for user in ("dora", "eve"):
        view = b.engine.view(user, b.rules.default)
        assert sum(view.contributions.values()) == view.consumed
    assert b.engine.view("dora", b.rules.default).contributions == {a.replica: 8}


def _peer_records(clock: ManualClock, users: dict[str, int]) -> list[OutRecord]:
    """Good batch and key records from a peer replica that admitted `users[u]` for each u."""
    rules = RuleSet(default=default_rule("token_bucket", 10.0, BURST, 1.0))
    peer = Engine(rules, "peer/1", clock, SyncTiming(1.0, 3.0), 1000)
    for user, cost in users.items():
        assert peer.decide(user, cost, rules.default).allowed
    now_ms = to_unix_ms(clock())
    out: list[OutRecord] = []
    for rule, delta in peer.flush(clock()):
        partition = partition_for_user(delta.key, PARTITIONS)
        if len(out) % 2:
            value = codec.encode_key_record(rule, delta, now_ms)
            key = codec.key_record_key(rule, delta.key, delta.replica)
        else:
            value = codec.encode_batch(delta.replica, [(rule, delta)], now_ms, now_ms)
            key = codec.batch_record_key(delta.replica, partition)
        out.append(OutRecord(key, value, partition))
    return out


def _poison(partition: int) -> list[tuple[str, OutRecord]]:
    good_key = codec.encode_key_record(
        "default", Delta("mallory", "peer/2", (Entry(1, 1.0, 1, 0),)), 5
    )
    return [
        ("bad_json", OutRecord(b"k1", b"{nope", partition)),
        ("unknown_version", OutRecord(b"k2", b'{"v": 99, "kind": "key"}', partition)),
        ("bad_shape", OutRecord(b"k3", b"[1, 2, 3]", partition)),
        ("absurd_value", OutRecord(b"k4", good_key.replace(b'"ts":5', b'"ts":-5'), partition)),
        ("bad_key", OutRecord(b"not-the-right-key", good_key, partition)),
        ("bad_key", OutRecord(None, good_key, partition)),  # type: ignore[arg-type]
    ]


async def test_poison_records_are_skipped_counted_and_good_ones_applied(
    nodes: StartNode, log: MemoryLog, clock: ManualClock
) -> None:
    users = {f"user-{i}": i + 1 for i in range(8)}
    good = _peer_records(clock, users)
    poison = _poison(good[0].partition)
    # Interleave: poison, good, poison, good, ... before the node starts (bootstrap).
    for i, record in enumerate(good[:4]):
        log.append(poison[i % len(poison)][1])
        log.append(record)
    log.append(OutRecord(b"gone", None, 0))  # a tombstone is not poison
    b: Node = await nodes("b")

    # ... and while it runs (the consume loop).
    for i, record in enumerate(good[4:], start=4):
        log.append(poison[i % len(poison)][1])
        log.append(record)
    await wait_for(
        lambda: all(consumed(b, u) == cost for u, cost in users.items()),
        what="every good record applied",
    )

    expected: dict[str, int] = {}
    for i in range(len(good)):
        kind = poison[i % len(poison)][0]
        expected[kind] = expected.get(kind, 0) + 1
    for kind, count in expected.items():
        assert sample(b, "ratelimiter_poison_records_total", kind=kind) == count, kind
    assert consumed(b, "mallory") == 0
    text = b.metrics.render().decode()
    assert 'ratelimiter_poison_records_total{kind="bad_json"}' in text


async def test_unknown_rule_is_counted_as_poison(
    nodes: StartNode, log: MemoryLog, clock: ManualClock
) -> None:
    b: Node = await nodes("b")
    [record] = _peer_records(clock, {"zed": 2})
    assert record.value is not None
    renamed = record.value.replace(b'"default"', b'"platinum"')
    log.append(OutRecord(record.key, renamed, record.partition))
    [ok] = _peer_records(clock, {"yan": 1})
    log.append(ok)

    await wait_for(lambda: consumed(b, "yan") == 1, what="the good record")
    assert sample(b, "ratelimiter_poison_records_total", kind="unknown_rule") == 1


async def test_stop_publishes_what_was_admitted(
    log: MemoryLog, clock: ManualClock, nodes: StartNode
) -> None:
    # A flush interval far beyond the test: only stop() can publish these admissions.
    a = memory_node(log, clock, "a", flush_ms=10_000, snapshot_ms=20_000)
    await a.start()
    await a.wait_ready(5)
    assert all(admit(a, "frank", 7))
    assert sum(map(len, log.partitions)) == 0  # nothing awaited since: nothing published
    await a.stop()

    assert sum(map(len, log.partitions)) > 0
    c: Node = await nodes("c")
    assert consumed(c, "frank") == 7
    assert c.engine.view("frank", c.rules.default).contributions == {a.replica: 7}


async def test_own_records_are_not_merged_back(nodes: StartNode, log: MemoryLog) -> None:
    a: Node = await nodes("a")
    admit(a, "gus", 3)
    await wait_for(lambda: sum(map(len, log.partitions)) > 0, what="a flush")
    await wait_for(lambda: sample(a, "ratelimiter_records_consumed_total") > 0, what="read back")

    assert consumed(a, "gus") == 3
    assert sample(a, "ratelimiter_deltas_applied_total") == 0


async def test_records_land_in_the_users_partition(nodes: StartNode, log: MemoryLog) -> None:
    a: Node = await nodes("a", snapshot_ms=1)
    users = [f"u{i}" for i in range(12)]
    for user in users:
        admit(a, user, 1)
    await wait_for(lambda: a.replicator is not None and a.replicator.buffered == 0, what="flush")
    await wait_for(
        lambda: sample(a, "ratelimiter_records_produced_total", kind="key") >= len(users),
        what="a snapshot",
    )

    seen: set[str] = set()
    for partition, records in enumerate(log.partitions):
        for record in records:
            assert record.key is not None
            for rule, delta in codec.decode(record.value).items:
                assert partition == partition_for_user(delta.key, PARTITIONS)
                assert record.key in (
                    codec.batch_record_key(a.replica, partition),
                    codec.key_record_key(rule, delta.key, a.replica),
                )
                seen.add(delta.key)
    assert seen == set(users)


class _EndlessLog(MemoryStateLog):
    """A log whose end offsets lie beyond every record it holds: bootstrap never ends."""

    async def end_offsets(self) -> dict[int, int]:
        return dict.fromkeys(range(self.partitions), 1)


async def test_a_bootstrap_timeout_is_reported_and_stop_still_cleans_up(
    log: MemoryLog, clock: ManualClock
) -> None:
    reader = _EndlessLog(log)
    settings = load_settings(
        kafka="127.0.0.1:1", rules_topic="none", partitions=PARTITIONS, bootstrap_timeout_s=0.05
    )
    node = build_node(settings, clock=clock, state_log=reader)
    await node.start()
    try:
        with pytest.raises(Unavailable, match="bootstrap-timeout-s"):
            await node.wait_ready(5)
        assert not node.ready
        assert node.fatal is not None
    finally:
        await node.stop()
    assert not reader.started


async def test_the_outage_buffer_is_capped_in_keys_and_loses_no_decision(
    log: MemoryLog, clock: ManualClock
) -> None:
    slow = 0.01  # a token per 100 s: every bucket stays in use through the test
    a = replicator_on(log, clock, "a/1", rate=slow)
    a.max_buffered = 50
    log.available = False
    users = [f"flood-{i}" for i in range(1_000)]
    for user in users:
        spend(a, user, 3)
        await a.flush()
        assert a.buffered <= 100  # twice --max-buffered-keys at most
        clock.advance(0.01)
    assert a.shed_keys >= 900
    assert a.dropped_keys == 0  # every shed key is still held: its state is written later

    log.available = True
    clock.advance(5.0)  # the shed keys' epochs are sealed by now: floors carry them

    async def delivered() -> bool:
        await a.flush(final=True)
        return a.broker_ok and a.buffered == 0

    await wait_for(delivered, what="the buffer and the shed keys published")
    b = replicator_on(log, clock, "b/1", rate=slow)
    await b.bootstrap(1.0)
    rule = b.engine.rules.default
    # Every user's 3 tokens still weigh on b's decisions, shed ones included.
    for user in users:
        assert b.engine.view(user, rule).tokens <= BURST - 3 + 0.2, user
