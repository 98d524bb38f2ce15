"""A local snapshot file: a restarted node loads the state it held at its last graceful
stop and reads the state topic only from the offsets recorded with it.

The file is MAGIC, then frames (an 8-byte big-endian length, then that many bytes of
marshal, Python's own fast format for plain values): a header (topic, partitions, offsets,
writer, and per limiter its limits and number of chunks), then each limiter's rows
(`Limiter.export_keys`) in chunks of CHUNK_ROWS. Chunks are unmarshalled one at a time
while loading: a million rows made at once and then dropped left their memory scattered
among the keys kept (589 MB resident after a restart, BENCHMARKS.md). It is written to a
temporary name and renamed, so a crash mid-write leaves the previous file whole; a file
whose frames do not add up is ignored. A limiter whose limits changed since is not loaded
(its keys start from the topic).
What the topic holds beyond the recorded offsets is merged on top as in any bootstrap:
merges are idempotent, so reading a record twice is harmless, and the file is trusted
only up to its offsets.
"""

from __future__ import annotations

import gc
import logging
import marshal
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

from service.engine import Engine

log = logging.getLogger("ratelimiter.snapshot")

VERSION = 2
MAGIC = b"ratelimiter snapshot\x00"
CHUNK_ROWS = 10_000
_LENGTH = struct.Struct(">Q")


class Snapshot(NamedTuple):
    """What a snapshot file holds."""

    topic: str
    partitions: int
    offsets: dict[int, int]  # per partition: every record before it is in the state
    writer: str  # the replica that wrote it (its own cells become a peer's on load)
    # wire name -> (limits, chunks of rows, each still marshalled)
    limiters: dict[str, tuple[str, list[memoryview]]]


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
    rows = {name: limiter.export_keys() for name, limiter in engine.limiters.items()}
    header = {
        "v": VERSION,
        "topic": topic,
        "partitions": partitions,
        "offsets": dict(offsets),
        "writer": engine.replica,
        "limiters": {
            name: (limits_of(engine.limiters[name]), -(-len(held) // CHUNK_ROWS))
            for name, held in rows.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        out.write(MAGIC)
        _frame(out, header)
        for held in rows.values():
            for i in range(0, len(held), CHUNK_ROWS):
                _frame(out, held[i : i + CHUNK_ROWS])
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return sum(map(len, rows.values()))


def _frame(out: Any, value: Any) -> None:
    data = marshal.dumps(value)
    out.write(_LENGTH.pack(len(data)))
    out.write(data)


def _frames(data: bytes) -> list[memoryview] | None:
    """The frames of a file's bytes, or None when they do not add up."""
    if not data.startswith(MAGIC):
        return None
    view = memoryview(data)
    frames = []
    pos = len(MAGIC)
    while pos < len(data):
        if pos + _LENGTH.size > len(data):
            return None
        (length,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        if pos + length > len(data):
            return None
        frames.append(view[pos : pos + length])
        pos += length
    return frames


def read_snapshot(path: Path, topic: str, partitions: int) -> Snapshot | None:
    """The snapshot at `path` if it is whole and of this topic, else None (logged)."""
    try:
        data = path.read_bytes()
        frames = _frames(data)
        if frames is None:
            log.warning("ignoring the snapshot %s: not a whole version %d file", path, VERSION)
            return None
        # Our own file in the operator's --state-dir, written by write_snapshot.
        doc = marshal.loads(frames[0])  # noqa: S302
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, TypeError, IndexError) as exc:
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
    limiters: dict[str, tuple[str, list[memoryview]]] = {}
    rest = frames[1:]
    try:
        for name, (limits, count) in doc["limiters"].items():
            if len(rest) < count:
                raise ValueError(f"limiter {name!r} has {count} chunks, {len(rest)} are left")
            limiters[name], rest = (limits, rest[:count]), rest[count:]
        if rest:
            raise ValueError(f"{len(rest)} chunks more than the header names")
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring the snapshot %s: its chunks do not match its header: %s", path, exc)
        return None
    return Snapshot(topic, partitions, doc["offsets"], doc["writer"], limiters)


class SnapshotDamaged(Exception):
    """A chunk of a whole-looking file could not be read; `loaded` keys were loaded
    before it (they stay: real consumption)."""

    def __init__(self, message: str, loaded: int) -> None:
        super().__init__(message)
        self.loaded = loaded


def load_snapshot(snapshot: Snapshot, engine: Engine) -> int:
    """Load the snapshot's keys into the engine's limiters kept under the same limits;
    returns the keys loaded (SnapshotDamaged when a chunk cannot be read)."""
    loaded = 0
    # Millions of long-lived objects: the cyclic GC would rescan them again and again
    # while they are made (they hold no cycles); the node freezes its heap once ready.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for name, (limits, chunks) in snapshot.limiters.items():
            limiter = engine.limiters.get(name)
            if limiter is None or limits_of(limiter) != limits:
                log.info("snapshot: limiter %r skipped (gone, or its limits changed)", name)
                continue
            for chunk in chunks:
                try:
                    rows = marshal.loads(chunk)  # noqa: S302 - our own file (read_snapshot)
                except (EOFError, ValueError, TypeError) as exc:
                    raise SnapshotDamaged(f"a chunk of {name!r}: {exc}", loaded) from exc
                loaded += limiter.import_keys(rows, snapshot.writer)
    finally:
        if collecting:
            gc.enable()
    return loaded
