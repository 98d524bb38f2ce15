"""What a swarm produced, as data: node scrapes, the clients' requests, the run, and the
per-window admitted cost. Shared by the report (swarm_report) and its plots (swarm_plots)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

ADMITTED, ERROR = 1, -1


class NodeSample(NamedTuple):
    """One scrape of one node's /metrics (counters are totals since the node started)."""

    node: str
    at: float
    admitted: float
    denied: float
    lag_buckets: dict[float, float]
    lag_sum: float
    lag_count: float
    tracked: float
    poison: float


class Request(NamedTuple):
    """One request as the Locust client saw it."""

    t: float
    key: str
    cost: int
    outcome: int
    node: int


class LagSample(NamedTuple):
    """One probe admission on `source`, first counted by `target` `lag` seconds after it
    was sent (the regional swarm's lag probe)."""

    at: float
    source: str
    target: str
    lag: float


@dataclass(frozen=True, slots=True)
class SwarmRun:
    """Everything the runner observed; the report is computed from it and the files."""

    config: dict[str, Any]
    started: float
    ended: float
    nodes: list[str]
    samples: list[NodeSample]
    scale_out: tuple[str, float, float] | None  # node id, asked at, ready and balanced at
    probes: list[LagSample] = field(default_factory=list)
    probe_admissions: int = 0


def windows(
    requests: Sequence[Request], ideal: Sequence[bool], start: float, width: float
) -> list[tuple[float, float, float]]:
    """(window end, admitted cost, ideal admitted cost) per `width` seconds since `start`."""
    actual: dict[int, float] = defaultdict(float)
    wanted: dict[int, float] = defaultdict(float)
    for r, ok in zip(requests, ideal, strict=True):
        slot = int((r.t - start) // width)
        actual[slot] += r.cost if r.outcome == ADMITTED else 0
        wanted[slot] += r.cost if ok else 0
    return [((s + 1) * width, actual[s], wanted[s]) for s in sorted(set(actual) | set(wanted))]
