"""PNG plots of a swarm (matplotlib, Agg backend): admitted rate vs limit, sync lag, accuracy,
and with regions, admissions per region and the probed lags."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after matplotlib.use: the backend must be chosen first

from stress_test.swarm_data import ADMITTED, Request, SwarmRun, windows
from stress_test.swarm_regions import per_region_per_second

MAX_KEYS_FOR_LIMIT_LINE = 1000


def _per_second(
    requests: Sequence[Request], keep: Sequence[bool], start: float
) -> list[tuple[float, float]]:
    counts: dict[int, float] = defaultdict(float)
    for r, ok in zip(requests, keep, strict=True):
        if ok:
            counts[int(r.t - start)] += r.cost
    return [(s + 1.0, counts[s]) for s in sorted(counts)]


def _mark_scale_out(ax: Any, run: SwarmRun) -> None:
    if run.scale_out is not None:
        node, _, joined = run.scale_out
        ax.axvline(joined - run.started, color="grey", linestyle=":", label=f"{node} joins")


def draw(
    out: Path,
    run: SwarmRun,
    requests: Sequence[Request],
    ideal: Sequence[bool],
    series: dict[str, Any],
) -> list[str]:
    """Write admitted.png, sync_lag.png and accuracy.png to `out`; returns their names."""
    names = []
    rate = float(run.config["rate"])

    fig, ax = plt.subplots(figsize=(10, 5))
    for node, points in sorted(series["admitted"].items()):
        if points:
            ax.plot(*zip(*points, strict=True), linewidth=1, label=f"{node} admitted/s (metrics)")
    admitted = [r.outcome == ADMITTED for r in requests]
    cluster = _per_second(requests, admitted, run.started)
    if cluster:
        ax.plot(*zip(*cluster, strict=True), linewidth=2.5, label="cluster admitted/s (clients)")
    ideal_points = _per_second(requests, ideal, run.started)
    if ideal_points:
        ax.plot(
            *zip(*ideal_points, strict=True),
            "k--",
            linewidth=1.5,
            label=f"ideal token bucket ({rate:g}/s, burst {run.config['burst']} per key)",
        )
    keys = {r.key for r in requests}
    if requests and len(keys) <= MAX_KEYS_FOR_LIMIT_LINE:
        active: dict[int, set[str]] = defaultdict(set)
        for r in requests:
            active[int(r.t - run.started)].add(r.key)
        ax.plot(
            [s + 1.0 for s in sorted(active)],
            [rate * len(active[s]) for s in sorted(active)],
            ":",
            color="red",
            label="configured rate x keys active that second",
        )
    _mark_scale_out(ax, run)
    ax.set_xlabel("seconds since the swarm started")
    ax.set_ylabel("admitted cost per second")
    ax.set_title(f"Admitted rate vs configured limit ({run.config['scenario']})")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "admitted.png", dpi=100)
    plt.close(fig)
    names.append("admitted.png")

    fig, ax = plt.subplots(figsize=(10, 4))
    if series["lag"]:
        t, p50, p99 = zip(*series["lag"], strict=True)
        ax.plot(t, [v * 1000 for v in p50], label="p50")
        ax.plot(t, [v * 1000 for v in p99], label="p99")
    _mark_scale_out(ax, run)
    ax.set_xlabel("seconds since the swarm started")
    ax.set_ylabel("sync lag (ms)")
    ax.set_title("Sync lag: admitted on a peer to merged here (all nodes, per second)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sync_lag.png", dpi=100)
    plt.close(fig)
    names.append("sync_lag.png")

    fig, ax = plt.subplots(figsize=(10, 4))
    width = max(1.0, float(run.config["seconds"]) / 20)
    points = [(t, a / b) for t, a, b in windows(requests, ideal, run.started, width) if b > 0]
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", label=f"accuracy per {width:g} s")
    ax.axhline(1.0, color="black", linewidth=1, label="ideal token bucket")
    _mark_scale_out(ax, run)
    ax.set_xlabel("seconds since the swarm started")
    ax.set_ylabel("admitted / ideal admitted")
    ax.set_title("Cluster accuracy over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)
    names.append("accuracy.png")
    if isinstance(run.config.get("regions"), dict):
        names.append(draw_regions(out, run, requests, ideal))
    return names


def draw_regions(
    out: Path, run: SwarmRun, requests: Sequence[Request], ideal: Sequence[bool]
) -> str:
    """regions.png: admitted/s per region against the ideal bucket, and the probed lags."""
    regions: dict[str, list[str]] = run.config["regions"]
    where = {node: name for name, nodes in regions.items() for node in nodes}
    region_of = [where.get(node, "?") for node in run.nodes]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name, points in sorted(per_region_per_second(requests, region_of, run.started).items()):
        top.plot(*zip(*points, strict=True), linewidth=1.5, label=f"region {name} admitted/s")
    cluster = _per_second(requests, [r.outcome == ADMITTED for r in requests], run.started)
    if cluster:
        top.plot(*zip(*cluster, strict=True), linewidth=2.5, label="all regions admitted/s")
    ideal_points = _per_second(requests, ideal, run.started)
    if ideal_points:
        top.plot(*zip(*ideal_points, strict=True), "k--", linewidth=1.5, label="ideal bucket")
    top.set_ylabel("admitted cost per second")
    top.set_title(f"Admissions per region ({len(regions)} regions, clients' records)")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper right")
    for same, label, marker in ((True, "same region", "o"), (False, "across regions", "x")):
        points = [
            (p.at - run.started, p.lag * 1000)
            for p in run.probes
            if (where.get(p.source) == where.get(p.target)) == same
        ]
        if points:
            bottom.scatter(*zip(*points, strict=True), marker=marker, s=14, label=label)
    bottom.set_xlabel("seconds since the swarm started")
    bottom.set_ylabel("probed lag (ms)")
    bottom.set_title("Admitted on one node to counted on another (lag probe)")
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "regions.png", dpi=100)
    plt.close(fig)
    return "regions.png"
