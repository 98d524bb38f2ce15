"""The cluster clock: wall-clock seconds since a fixed origin, as the core expects."""

from __future__ import annotations

import time
from typing import Protocol

# 2025-01-01T00:00:00Z. Every node must use the same origin: floors are absolute times
# on the wire. Small numbers keep float seconds precise to ~10 ns for decades.
ORIGIN = 1_735_689_600.0


class Clock(Protocol):
    """Seconds on the shared cluster clock."""

    def __call__(self) -> float: ...


def system_clock() -> float:
    """Wall clock since ORIGIN (nodes must run NTP; skew only makes limits stricter)."""
    return time.time() - ORIGIN


def to_unix_ms(cluster_seconds: float) -> int:
    """Cluster seconds to Unix milliseconds (for Kafka timestamps and lag)."""
    return int((cluster_seconds + ORIGIN) * 1000)


def from_unix_ms(unix_ms: int) -> float:
    """Unix milliseconds (a record's timestamp) to cluster seconds."""
    return unix_ms / 1000 - ORIGIN
