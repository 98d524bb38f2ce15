"""A record of a compacted topic as read: key, value (None: a tombstone), broker time."""

from __future__ import annotations

from typing import NamedTuple


class LogRecord(NamedTuple):
    """A record as read: key, value (None: a tombstone), timestamp (Unix ms; 0 unknown)."""

    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
