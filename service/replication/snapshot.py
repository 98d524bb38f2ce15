"""A local snapshot file: a restarted node loads the state it held at its last graceful
stop and reads the state topic only from the offsets recorded with it.

The file is marshal (Python's own fast format for plain values), written to a temporary
name and renamed, so a crash mid-write leaves the previous file whole. It holds, per
limiter, the state of every key (`Limiter.export_keys`) with the limits it was kept
under; a limiter whose limits changed since is not loaded (its keys start from the topic).
What the topic holds beyond the recorded offsets is merged on top as in any bootstrap:
merges are idempotent, so reading a record twice is harmless, and the file is trusted
only up to its offsets.
"""

from __future__ import annotations

import gc
import logging
import marshal
import os
from pathlib import Path
from typing import Any, NamedTuple

from service.engine import Engine

log = logging.getLogger("ratelimiter.snapshot")

VERSION = 1


class Snapshot(NamedTuple):
    """What a snapshot file holds."""

    topic: str
    partitions: int
    offsets: dict[int, int]  # per partition: every record before it is in the state
    writer: str  # the replica that wrote it (its own cells become a peer's on load)
    limiters: dict[str, tuple[str, list[tuple[Any, ...]]]]  # wire name -> (limits, rows)


def snapshot_path(state_dir: Path, node_id: str, topic: str) -> Path:
    """Where the node `node_id` keeps its snapshot of `topic`."""
    return state_dir / f"{node_id}.{topic}.snapshot"


def limits_of(limiter: object) -> str:
    """The limits a limiter keeps its state under (policy, timing, window kind)."""
    return repr(
        (
            type(limiter).__name__,
            getattr(limiter, "policy", None),
            getattr(limiter, "timing", None),
            getattr(limiter, "sliding", None),
        )
    )


def write_snapshot(
    path: Path, engine: Engine, topic: str, partitions: int, offsets: dict[int, int]
) -> int:
    """Write the engine's state with the offsets it covers; returns the keys written."""
    limiters = {
        name: (limits_of(limiter), limiter.export_keys())
        for name, limiter in engine.limiters.items()
    }
    doc = {
        "v": VERSION,
        "topic": topic,
        "partitions": partitions,
        "offsets": dict(offsets),
        "writer": engine.replica,
        "limiters": limiters,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        out.write(marshal.dumps(doc))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return sum(len(rows) for _, rows in limiters.values())


def read_snapshot(path: Path, topic: str, partitions: int) -> Snapshot | None:
    """The snapshot at `path` if it is whole and of this topic, else None (logged)."""
    try:
        data = path.read_bytes()  # whole: marshal.load reads a file object in small steps
        collecting = gc.isenabled()
        gc.disable()  # marshal builds millions of tuples and dicts: see load_snapshot
        try:
            # Our own file in the operator's --state-dir, written by write_snapshot.
            doc = marshal.loads(data)  # noqa: S302
        finally:
            if collecting:
                gc.enable()
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, TypeError) as exc:
        log.warning("ignoring the unreadable snapshot %s: %s", path, exc)
        return None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        log.warning("ignoring the snapshot %s: not version %d", path, VERSION)
        return None
    if doc.get("topic") != topic or doc.get("partitions") != partitions:
        log.warning(
            "ignoring the snapshot %s of topic %r with %s partitions (now %r, %d)",
            path,
            doc.get("topic"),
            doc.get("partitions"),
            topic,
            partitions,
        )
        return None
    return Snapshot(topic, partitions, doc["offsets"], doc["writer"], doc["limiters"])


def load_snapshot(snapshot: Snapshot, engine: Engine) -> int:
    """Load the snapshot's keys into the engine's limiters kept under the same limits;
    returns the keys loaded."""
    loaded = 0
    # Millions of long-lived objects: the cyclic GC would rescan them again and again
    # while they are made (they hold no cycles); the node freezes its heap once ready.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for name, (limits, rows) in snapshot.limiters.items():
            limiter = engine.limiters.get(name)
            if limiter is None or limits_of(limiter) != limits:
                log.info("snapshot: limiter %r skipped (gone, or its limits changed)", name)
                continue
            loaded += limiter.import_keys(rows, snapshot.writer)
    finally:
        if collecting:
            gc.enable()
    return loaded
