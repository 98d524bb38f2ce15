"""Bootstrap time: write many users' state to a fresh topic as a node does, then time a new
node from spawn to /readyz 200 and read its ratelimiter_bootstrap_* metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from service.bootstrap import build_node
from service.clock import to_unix_ms
from service.local.nodes import NodeProcess
from service.local.process import free_port
from service.replication import codec
from service.replication.codec import partition_for_user
from service.replication.statelog import KafkaStateLog, OutRecord
from service.replication.topic import ensure_state_topic
from service.settings import Settings
from stress_test.bench_processes import (
    BenchError,
    buckets,
    histogram_delta,
    lag_summary,
    node,
    pid_of,
    profiled,
    scrape,
    total,
    vm_rss_mb,
)
from stress_test.bench_run import Bench

PARTITIONS = 12  # the node's default
# One admission per user refills in 1,000 s: every user's key is still in use (not idle,
# so not swept) while the readers start, and a peer hands all of them over.
RATE, BURST = 0.001, 20
HANDOFF_TOKEN = "bench-handoff-token-0123456789"  # noqa: S105 - a throwaway local node's
LOOP_LAG = "ratelimiter_event_loop_lag_seconds"
CHUNK = 25_000  # users admitted between two flushes of the writer
FLUSH_ATTEMPTS = 5
SHAPES = {
    "as_written": "the writer's Replicator: one batch record per partition per flush (every "
    f"{CHUNK} users) and one key record per user, nothing compacted yet (min.compaction.lag "
    "60 s, active segments): what a node reads within minutes of the writes",
    "snapshot_only": "one key record per user (service.replication.codec key records on the user's "
    "partition), no batches: what compaction leaves once segments roll",
}


async def write_state(kafka: str, topic: str, users: int, shape: str) -> dict[str, Any]:
    """One writer replica admits one request for each of `users` users (users `boot-<i>`)
    and publishes its state in `shape` (see SHAPES)."""
    # A fresh topic's leaders are still being elected: aiokafka logs an error and retries.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    settings = Settings(
        node_id="bench-writer", kafka=kafka, topic=topic, rate=RATE, burst=BURST,
        partitions=PARTITIONS, max_keys=users + 1000, max_buffered_keys=users + 1000,
        rules_topic="none",  # no rules feed: the writer only publishes state
    )  # fmt: skip
    statelog = KafkaStateLog(
        kafka, topic, PARTITIONS, client_id="bench-writer", request_timeout_ms=60_000
    )
    writer = build_node(settings, state_log=statelog)
    replicator = writer.replicator
    assert replicator is not None  # kafka is set: build_node wired a Replicator on statelog
    rule = writer.rules.default
    decide = writer.engine.decide
    started = time.monotonic()
    key_records = batch_records = 0
    await statelog.start()
    try:
        for first in range(0, users, CHUNK):
            for i in range(first, min(users, first + CHUNK)):
                decide(f"boot-{i}", 1, rule)
            if shape == "snapshot_only":
                now = writer.clock()
                records = [
                    OutRecord(
                        codec.key_record_key(name, delta.key, writer.replica),
                        codec.encode_key_record(name, delta, to_unix_ms(now)),
                        partition_for_user(delta.key, PARTITIONS),
                    )
                    for name, delta in writer.engine.flush(now)
                ]
                await statelog.publish(records)
                key_records += len(records)
                continue
            for _ in range(FLUSH_ATTEMPTS):
                await replicator.flush(final=True)
                if replicator.buffered == 0:
                    break
            else:
                raise BenchError(f"the broker did not acknowledge {replicator.buffered} keys")
    finally:
        await statelog.stop()
    produced = writer.metrics.registry.get_sample_value
    name = "ratelimiter_records_produced_total"
    return {
        "write_s": round(time.monotonic() - started, 1),
        "key_records": key_records + int(produced(name, {"kind": "key"}) or 0),
        "batch_records": batch_records + int(produced(name, {"kind": "batch"}) or 0),
    }


def read_state(
    bench: Bench, topic: str, args: list[str], name: str, port: int | None = None
) -> dict[str, Any]:
    """Start a node on `topic`: spawn to /readyz 200, and its bootstrap metrics."""
    profile: dict[str, Any] = {}
    started = time.monotonic()
    reader = NodeProcess(
        name, port or free_port(), bench.kafka(), [*args, "--topic", topic], bench.work_dir
    )
    try:
        pid = pid_of(reader.start())
        with profiled(pid, bench.args.profile, name, profile):
            reader.wait_ready(300)
            ready_s = time.monotonic() - started
        samples = scrape(reader.url)
        rss_mb = vm_rss_mb(pid)
    finally:
        stopping = time.monotonic()
        reader.stop(timeout_s=120)
        stop_s = time.monotonic() - stopping
    seconds = total(samples, "ratelimiter_bootstrap_seconds") or 0.0
    records = total(samples, "ratelimiter_bootstrap_records") or 0.0
    deltas = total(samples, "ratelimiter_deltas_applied_total") or 0.0
    return {
        "ready_after_s": round(ready_s, 2),
        "bootstrap_seconds_metric": round(seconds, 2),
        "bootstrap_records": int(records),
        "records_per_s": round(records / seconds) if seconds else None,
        "deltas_applied": int(deltas),
        "deltas_per_s": round(deltas / seconds) if seconds else None,
        "tracked_keys_at_ready": int(total(samples, "ratelimiter_tracked_keys") or 0),
        "rss_mb_at_ready": round(rss_mb, 1),
        "stop_s": round(stop_s, 2),
        **profile,
    }


def restart_state(bench: Bench, topic: str, args: list[str]) -> dict[str, Any]:
    """A node with --state-dir reads `topic`, stops gracefully (writing its snapshot file),
    and starts again: the second start is the restarted node's bootstrap."""
    state_dir = bench.work_dir / f"state-{topic}"
    with_state = [*args, "--state-dir", str(state_dir)]
    first = read_state(bench, topic, with_state, "bench-restarted")
    snapshot = next(state_dir.glob("*.snapshot"), None)
    again = read_state(bench, topic, with_state, "bench-restarted")
    return {
        "first_start": first,
        "snapshot_bytes": snapshot.stat().st_size if snapshot else None,
        "restart": again,
    }


def handoff_state(bench: Bench, topic: str, args: list[str]) -> dict[str, Any]:
    """A peer reads `topic` and serves; a new node started with --bootstrap-from it loads
    the peer's state (GET /v1/state) and reads the topic only from the offsets it covers.
    The peer's event-loop lag while it streams is read from its /metrics."""
    with_token = [*args, "--admin-token", HANDOFF_TOKEN]
    peer_args = [*with_token, "--topic", topic]
    with node("bench-peer", bench.kafka(), peer_args, bench.work_dir, 300) as peer:
        before = scrape(peer.url)
        joined = read_state(
            bench, topic, [*with_token, "--bootstrap-from", peer.url], "bench-joiner"
        )
        after = scrape(peer.url)
    lag = histogram_delta(buckets(before, LOOP_LAG), buckets(after, LOOP_LAG))
    return {**joined, "peer_event_loop_lag": lag_summary(lag)}


def run_bootstrap(bench: Bench) -> dict[str, Any]:
    """Time a node on an empty topic, then on topics holding `bootstrap_users` users' state
    in each shape; the target is judged on the `as_written` one (the larger)."""
    users = int(bench.args.bootstrap_users)
    kafka = bench.kafka()
    limit = ["--rate", str(RATE), "--burst", str(BURST)]
    args = [*limit, "--log-level", "warning", "--max-keys", str(users + 1000)]
    started = time.monotonic()
    with node(
        "bench-empty", kafka, [*args, "--topic", bench.fresh_topic("empty")], bench.work_dir
    ) as empty:
        empty_ready_s = time.monotonic() - started
        empty_rss_mb = vm_rss_mb(pid_of(empty))
    shapes: dict[str, Any] = {}
    for shape in SHAPES:
        topic = bench.fresh_topic(f"boot-{shape}")
        asyncio.run(ensure_state_topic(kafka, topic, PARTITIONS))
        bench.say(f"writing {users} users' state ({shape}) to {topic} ...")
        written = asyncio.run(write_state(kafka, topic, users, shape))
        shapes[shape] = {**written, **read_state(bench, topic, args, f"bench-reader-{shape}")}
        if shape == "as_written":
            bench.say("restarting a node with --state-dir on the same topic ...")
            shapes["restart_with_snapshot_file"] = restart_state(bench, topic, args)
            bench.say("starting a new node with --bootstrap-from a peer on the same topic ...")
            shapes["new_node_from_peer"] = handoff_state(bench, topic, args)
            bench.say("starting a node for which the writer is silent (a past deploy) ...")
            shapes["after_a_deploy"] = read_state(
                bench, topic, [*args, "--expire-writers-s", "1"], "bench-after-deploy"
            )
    first = shapes["as_written"]
    return {
        "users": users,
        "ready_after_s": first["ready_after_s"],
        "records_per_s": first["records_per_s"],
        "empty_topic_ready_after_s": round(empty_ready_s, 2),
        "empty_topic_rss_mb": round(empty_rss_mb, 1),
        **shapes,
        "notes": [f"{shape}: {text}; {PARTITIONS} partitions" for shape, text in SHAPES.items()]
        + [
            "ready_after_s: node spawn to /readyz 200 (Python start, topic check, read to "
            "the end offsets); empty_topic_ready_after_s is the same on an empty topic",
            f"limits: --rate {RATE} --burst {BURST} for the writer and every reader, so no "
            "key is idle (and swept) before the last reader starts",
            "restart_with_snapshot_file: a node with --state-dir on the as_written topic, "
            "stopped gracefully (stop_s includes writing the file), then started again: it "
            "loads the file and reads the topic from the offsets the file records",
            "new_node_from_peer: a new node with --bootstrap-from a live peer that read the "
            "as_written topic: it streams the peer's state (GET /v1/state) and reads the topic "
            "from the offsets that state covers; peer_event_loop_lag is the peer's own lag "
            "while the new node started (bucket bounds)",
            "after_a_deploy: a node reads the as_written topic with --expire-writers-s 1, so "
            "the writer counts as a silent one (a node of a past deploy) and the reader keeps "
            "its records to tombstone once settled",
            "rss_mb_at_ready: the reader's VmRSS when /readyz answered (it holds every "
            "user's key, with the writer's cells as a peer's); empty_topic_rss_mb is the same "
            "for the node on the empty topic: the difference is the synced node's memory "
            "for the users (transient read buffers included)",
        ],
    }
