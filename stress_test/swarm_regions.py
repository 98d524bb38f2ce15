"""The regional swarm's figures: which node is in which region, the probed delays d and D,
accuracy against the ideal single bucket and against the computed regional bound
(crdt.bounds), admissions per region. Pure: data in, figures out."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from crdt.bounds import regions_excess_bound
from crdt.reference import max_interval_excess
from stress_test.swarm_data import ADMITTED, ERROR, LagSample, Request

REGION_NAMES = "abcdefghijklmnopqrstuvwxyz"


def parse_region_nodes(specs: Sequence[str]) -> dict[str, list[str]]:
    """`NAME=URL[,URL...]` once per region, in order -> {name: [base URL, ...]}.

    ValueError with the reason for a malformed spec, a repeated name or a repeated URL.
    """
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    for spec in specs:
        name, sep, urls = spec.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--region-nodes {spec!r}: expected NAME=URL[,URL...]")
        if name in out:
            raise ValueError(f"--region-nodes: region {name!r} given twice")
        listed = [u.strip().rstrip("/") for u in urls.split(",") if u.strip()]
        if not listed:
            raise ValueError(f"--region-nodes {spec!r}: region {name!r} has no node URL")
        for url in listed:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"--region-nodes {spec!r}: {url!r} is not an http(s) URL")
            if url in seen:
                raise ValueError(f"--region-nodes: {url} is listed twice")
            seen.add(url)
        out[name] = listed
    if len(out) < 2:
        raise ValueError("--region-nodes: give at least two regions (NAME=URL,... per region)")
    return out


def region_names(count: int) -> list[str]:
    """a, b, c, ... for the one-topic rehearsal's groups."""
    if not 1 <= count <= len(REGION_NAMES):
        raise ValueError(f"regions: 1 to {len(REGION_NAMES)}, got {count}")
    return list(REGION_NAMES[:count])


def _region_by_node(regions: dict[str, list[str]]) -> dict[str, str]:
    return {node: name for name, nodes in regions.items() for node in nodes}


def delays(
    regions: dict[str, list[str]],
    probes: Sequence[LagSample],
    sync_delay_ms: float | None = None,
    region_delay_ms: float | None = None,
) -> dict[str, Any]:
    """The bound's d and D (seconds): given, or the largest probed lags.

    d = the largest same-region lag; d + D = the largest cross-region lag. With one node
    per region no same-region lag exists and only d + D enters the bound, so d is taken
    as the cross-region lag and D as 0.
    """
    where = _region_by_node(regions)
    local = sorted(p.lag for p in probes if where.get(p.source) == where.get(p.target))
    cross = sorted(p.lag for p in probes if where.get(p.source) != where.get(p.target))
    d_seen = local[-1] if local else (cross[-1] if cross else None)
    d = sync_delay_ms / 1000 if sync_delay_ms is not None else (d_seen or 0.0)
    if region_delay_ms is not None:
        big_d = region_delay_ms / 1000
    else:
        big_d = max(0.0, cross[-1] - d) if cross else 0.0
    return {
        "d_s": d,
        "D_s": big_d,
        "d_from": "given" if sync_delay_ms is not None else "probe",
        "D_from": "given" if region_delay_ms is not None else "probe",
        "local_lag_ms": _lag_summary(local),
        "cross_lag_ms": _lag_summary(cross),
    }


def _lag_summary(lags: Sequence[float]) -> dict[str, Any]:
    if not lags:
        return {"samples": 0, "p50": None, "max": None}
    return {
        "samples": len(lags),
        "p50": round(lags[len(lags) // 2] * 1000, 1),
        "max": round(lags[-1] * 1000, 1),
    }


def regional_figures(
    config: dict[str, Any],
    nodes: Sequence[str],
    requests: Sequence[Request],
    ideal: Sequence[bool],
    probes: Sequence[LagSample],
) -> dict[str, Any]:
    """Accuracy against the ideal bucket and the regional bound, per key and per region.

    Per key, the bound over the key's active span T (first to last request sent) is
    r*T + C + (W-1)(C + r*d) + (R-1)*r*D; every interval of the key's admissions (at
    their send times) is checked against the same excess.
    """
    regions: dict[str, list[str]] = config["regions"]
    rate, burst = float(config["rate"]), int(config["burst"])
    lags = delays(regions, probes, config.get("sync_delay_ms"), config.get("region_delay_ms"))
    sizes = [len(v) for v in regions.values()]
    excess = regions_excess_bound(burst, rate, sizes, lags["d_s"], lags["D_s"])
    where = _region_by_node(regions)
    region_of = [where.get(node, "?") for node in nodes]

    per_key: dict[str, list[Request]] = defaultdict(list)
    ideal_cost: dict[str, int] = defaultdict(int)
    for r, ok in zip(requests, ideal, strict=True):
        if r.outcome == ERROR:
            continue
        per_key[r.key].append(r)
        ideal_cost[r.key] += r.cost if ok else 0
    bound_cost = 0.0
    admitted_cost = 0
    over: list[str] = []
    worst: tuple[float, str] = (float("-inf"), "")
    for key, sent in per_key.items():
        admitted = [(r.t, r.cost) for r in sent if r.outcome == ADMITTED]
        cost = sum(c for _, c in admitted)
        bound = rate * (sent[-1].t - sent[0].t) + excess
        key_excess = max_interval_excess(admitted, rate)
        admitted_cost += cost
        bound_cost += bound
        if cost > bound or key_excess > excess:
            over.append(key)
        worst = max(worst, (key_excess, key))

    per_region = []
    total_admitted = sum(r.cost for r in requests if r.outcome == ADMITTED) or 1
    for name, members in regions.items():
        mine = [r for r in requests if region_of[r.node] == name] if requests else []
        cost = sum(r.cost for r in mine if r.outcome == ADMITTED)
        per_region.append(
            {
                "region": name,
                "nodes": members,
                "requests": len(mine),
                "errors": sum(1 for r in mine if r.outcome == ERROR),
                "admitted_cost": cost,
                "admitted_share": round(cost / total_admitted, 4),
            }
        )
    ideal_total = sum(ideal_cost.values())
    return {
        "mode": config.get("region_mode"),
        "regions": len(regions),
        "writers": sum(sizes),
        **lags,
        "interval_bound": round(excess, 2),
        "bound_cost": round(bound_cost, 1),
        "admitted_cost": admitted_cost,
        "accuracy_vs_ideal": round(admitted_cost / ideal_total, 4) if ideal_total else None,
        "admitted_over_bound": round(admitted_cost / bound_cost, 4) if bound_cost else None,
        "max_interval_excess": round(worst[0], 2) if per_key else None,
        "worst_key": worst[1] or None,
        "keys_over_bound": over,
        "within_bound": not over,
        "per_region": per_region,
    }


def per_region_per_second(
    requests: Sequence[Request], region_of: Sequence[str], start: float
) -> dict[str, list[tuple[float, float]]]:
    """Admitted cost per second since `start`, for each region (from the clients' records)."""
    counts: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for r in requests:
        if r.outcome == ADMITTED:
            counts[region_of[r.node]][int(r.t - start)] += r.cost
    return {name: [(s + 1.0, per[s]) for s in range(max(per) + 1)] for name, per in counts.items()}


def markdown(figures: dict[str, Any]) -> list[str]:
    """The summary's Regions section."""
    f = figures
    loc, cross = f["local_lag_ms"], f["cross_lag_ms"]
    lines = [
        "## Regions",
        "",
        f"{f['regions']} regions, {f['writers']} nodes ({f['mode']}). Each user's requests "
        "alternate between regions, round-robin over a region's nodes.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| probed lag, same region: p50 / max | {loc['p50']} / {loc['max']} ms "
        f"({loc['samples']} samples) |",
        f"| probed lag, across regions: p50 / max | {cross['p50']} / {cross['max']} ms "
        f"({cross['samples']} samples) |",
        f"| d (local sync delay, {f['d_from']}) / D (mirror's addition, {f['D_from']}) | "
        f"{f['d_s'] * 1000:.1f} / {f['D_s'] * 1000:.1f} ms |",
        f"| **accuracy vs the ideal single bucket** | **{f['accuracy_vs_ideal']}** |",
        f"| interval bound C + (W-1)(C + r d) + (R-1) r D | {f['interval_bound']} |",
        f"| max A(s,t] - r(t-s) over keys (worst: `{f['worst_key']}`) | "
        f"{f['max_interval_excess']} |",
        f"| **admitted / regional bound** (sum over keys of r T + the interval bound) | "
        f"**{f['admitted_over_bound']}** ({f['admitted_cost']} / {f['bound_cost']}) |",
        f"| within the bound for every key | {f['within_bound']} |",
        "",
        "| region | nodes | requests | errors | admitted cost | share |",
        "|---|---|---|---|---|---|",
    ]
    for p in f["per_region"]:
        lines.append(
            f"| {p['region']} | {', '.join(p['nodes'])} | {p['requests']} | {p['errors']} | "
            f"{p['admitted_cost']} | {p['admitted_share']} |"
        )
    lines += [
        "",
        "The lag probe admits once per second on each node in turn and times until every "
        "other node counts it (GET /v1/keys); d and D are its largest same-region and "
        "cross-region lags unless given (--sync-delay-ms, --region-delay-ms). A maximum "
        "observed is an estimate of the worst delay, not a guarantee.",
        "",
    ]
    return lines
