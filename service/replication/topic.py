"""The compacted, user-partitioned state topic: its configuration, created and verified."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.kafka.topics import ensure_topic

DEFAULT_TOPIC = "ratelimiter.state"
DEFAULT_PARTITIONS = 12

STATE_TOPIC_CONFIG: Mapping[str, str] = {
    # Keep the last record per key. Key records are keyed (user, rule, writer) and batch
    # records (writer, partition): each key has one writer and carries absolute cell
    # values, so its last record is that writer's whole state (codec.py).
    "cleanup.policy": "compact",
    # The broker stamps every record with its own time: each node measures its clock's
    # offset from it on every publish (service/clock.py), and peers' liveness is judged
    # on one clock.
    "message.timestamp.type": "LogAppendTime",
    # Every flush rewrites each dirty key, so most of the log is superseded quickly;
    # cleaning at 10% dirty (default 50%) keeps what a new node must read at bootstrap small.
    "min.cleanable.dirty.ratio": "0.1",
    # The active segment is never compacted. Roll it every 10 minutes or 64 MiB (defaults:
    # 7 days, 1 GiB) so the uncompacted tail a new node replays stays bounded.
    "segment.ms": "600000",
    "segment.bytes": "67108864",
    # Batch records (keyed by writer and partition) are superseded by the next flush's,
    # but the keys they carry are only rewritten as key records by the snapshot round of
    # the interval after next (--snapshot-ms, 5 s by default, at most 20 s: 50 s at most):
    # keep every record a minute so a bootstrapping node never misses consumption. Force
    # a clean at least hourly when traffic is low.
    "min.compaction.lag.ms": "60000",
    "max.compaction.lag.ms": "3600000",
    # A tombstone stays a day, so a node offline for less still sees the deletion.
    "delete.retention.ms": "86400000",
}


async def ensure_state_topic(
    bootstrap: str,
    name: str = DEFAULT_TOPIC,
    partitions: int = DEFAULT_PARTITIONS,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Create the state topic if missing; TopicConfigMismatch when one exists unlike ours."""
    await ensure_topic(bootstrap, name, partitions, STATE_TOPIC_CONFIG, options=options)
