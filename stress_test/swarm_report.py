"""The swarm report: accuracy against an ideal token bucket, node metrics, Locust latency, plots.

Accuracy replays every request the swarm sent (the Locust processes record send time, key,
cost and answer) through one ideal single-node token bucket per key (crdt.reference) with
the configured rate and burst: accuracy = cost the cluster admitted / cost the ideal
bucket would have admitted for the same requests at the same times. 1.0 is a perfect
token bucket; above 1 is over-admission (the sync-delay bound), below is over-denial.
"""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from crdt.policy import BucketPolicy
from crdt.reference import ReferenceBucket
from service.metrics import histogram_quantile
from stress_test import swarm_regions
from stress_test.swarm_data import ADMITTED, ERROR, LagSample, NodeSample, Request, SwarmRun

# -- analysis -----------------------------------------------------------------


def load_requests(folder: Path) -> list[Request]:
    """Every recorded request of every Locust process, in send order."""
    out: list[Request] = []
    for path in sorted(folder.glob("requests-*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                out.append(
                    Request(
                        float(row["t"]),
                        row["key"],
                        int(row["cost"]),
                        int(row["outcome"]),
                        int(row["node"]),
                    )
                )
    out.sort(key=lambda r: r.t)
    return out


def ideal_admissions(requests: Sequence[Request], rate: float, burst: int) -> list[bool]:
    """Whether an ideal token bucket per key admits each request (errors: never sent)."""
    policy = BucketPolicy(rate, burst)
    buckets: dict[str, ReferenceBucket] = {}
    out = []
    for r in requests:
        if r.outcome == ERROR:
            out.append(False)
            continue
        bucket = buckets.get(r.key)
        if bucket is None:
            bucket = buckets[r.key] = ReferenceBucket(policy, r.t)
        out.append(bucket.acquire(r.cost, r.t))
    return out


def fluid_limit(requests: Sequence[Request], rate: float, burst: int) -> float:
    """Sum over keys of burst + rate x (last - first request): what any bucket could admit."""
    spans: dict[str, list[float]] = {}
    for r in requests:
        span = spans.setdefault(r.key, [r.t, r.t])
        span[1] = r.t
    return sum(burst + rate * (last - first) for first, last in spans.values())


def _diff(a: dict[float, float], b: dict[float, float]) -> dict[float, float]:
    return {le: b.get(le, 0.0) - a.get(le, 0.0) for le in b}


def _merge(parts: Iterable[dict[float, float]]) -> dict[float, float]:
    out: dict[float, float] = defaultdict(float)
    for part in parts:
        for le, count in part.items():
            out[le] += count
    return dict(out)


def by_node(samples: Sequence[NodeSample]) -> dict[str, list[NodeSample]]:
    """Samples per node, in time order."""
    out: dict[str, list[NodeSample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.at):
        out[s.node].append(s)
    return dict(out)


def lag_over_run(samples: Sequence[NodeSample]) -> dict[float, float]:
    """The cluster's sync-lag histogram accumulated between each node's first and last scrape."""
    return _merge(
        _diff(series[0].lag_buckets, series[-1].lag_buckets) for series in by_node(samples).values()
    )


def series(run: SwarmRun, slot_s: float = 1.0) -> dict[str, Any]:
    """Time series (seconds since the swarm started) of admitted/s per node and sync lag."""
    admitted: dict[str, list[tuple[float, float]]] = {}
    lag_slots: dict[int, list[dict[float, float]]] = defaultdict(list)
    for node, points in by_node(run.samples).items():
        rates = []
        for a, b in itertools.pairwise(points):
            dt = b.at - a.at
            if dt <= 0:
                continue
            rates.append((b.at - run.started, (b.admitted - a.admitted) / dt))
            lag_slots[int((b.at - run.started) // slot_s)].append(
                _diff(a.lag_buckets, b.lag_buckets)
            )
        admitted[node] = rates
    lag = []
    for slot in sorted(lag_slots):
        merged = _merge(lag_slots[slot])
        p50, p99 = histogram_quantile(0.5, merged), histogram_quantile(0.99, merged)
        if p50 is not None and p99 is not None:
            lag.append(((slot + 1) * slot_s, p50, p99))
    return {"admitted": admitted, "lag": lag}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def read_locust_stats(path: Path) -> list[dict[str, Any]]:
    """Rows of Locust's `<prefix>_stats.csv`: name, requests, failures, rps, percentiles (ms)."""
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append(
                {
                    "name": row["Name"],
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "rps": round(float(row["Requests/s"]), 1),
                    **{p: _number(row.get(p)) for p in ("50%", "90%", "99%", "99.9%")},
                    "max": round(float(row["Max Response Time"]), 1),
                }
            )
    return rows


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def figures(
    run: SwarmRun, requests: Sequence[Request], locust: list[dict[str, Any]]
) -> dict[str, Any]:
    """The report's numbers (summary.json)."""
    rate, burst = float(run.config["rate"]), int(run.config["burst"])
    ideal = ideal_admissions(requests, rate, burst)
    sent = [r for r in requests if r.outcome != ERROR]
    admitted_cost = sum(r.cost for r in sent if r.outcome == ADMITTED)
    ideal_cost = sum(r.cost for r, ok in zip(requests, ideal, strict=True) if ok)
    duration = (requests[-1].t - requests[0].t) if len(requests) > 1 else 0.0
    lag = lag_over_run(run.samples)
    per_node: list[dict[str, Any]] = []
    for index, node in enumerate(run.nodes):
        points = by_node(run.samples).get(node, [])
        last = points[-1] if points else None
        node_lag = _diff(points[0].lag_buckets, points[-1].lag_buckets) if len(points) > 1 else {}
        per_node.append(
            {
                "node": node,
                "requests": sum(1 for r in requests if r.node == index),
                "admitted": int(last.admitted) if last else None,
                "denied": int(last.denied) if last else None,
                "tracked_keys": int(last.tracked) if last else None,
                "poison_records": int(last.poison) if last else None,
                "sync_lag_p99_ms": _ms(histogram_quantile(0.99, node_lag)),
            }
        )
    aggregated = next((row for row in locust if row["name"] == "Aggregated"), None)
    out: dict[str, Any] = {
        "config": run.config,
        "requests": len(requests),
        "errors": len(requests) - len(sent),
        "admitted": sum(1 for r in sent if r.outcome == ADMITTED),
        "denied": sum(1 for r in sent if r.outcome != ADMITTED),
        "admitted_cost": admitted_cost,
        "ideal_admitted_cost": ideal_cost,
        "accuracy": _ratio(admitted_cost, ideal_cost),
        "fluid_limit_cost": round(fluid_limit(sent, rate, burst), 1),
        "keys": len({r.key for r in requests}),
        "duration_s": round(duration, 2),
        "throughput_rps": round(len(requests) / duration, 1) if duration else None,
        # The regional lag probe's own admissions are counted by the nodes, not the clients.
        "nodes_admitted": sum(n["admitted"] or 0 for n in per_node) - run.probe_admissions,
        "probe_admissions": run.probe_admissions,
        "latency_ms": {
            "p50": aggregated["50%"] if aggregated else None,
            "p90": aggregated["90%"] if aggregated else None,
            "p99": aggregated["99%"] if aggregated else None,
            "max": aggregated["max"] if aggregated else None,
        },
        "sync_lag_ms": {
            "samples": int(max(lag.values(), default=0)),
            "p50": _ms(histogram_quantile(0.5, lag)),
            "p90": _ms(histogram_quantile(0.9, lag)),
            "p99": _ms(histogram_quantile(0.99, lag)),
        },
        "per_node": per_node,
        "locust": locust,
        "scale_out": None,
        "regions": None,
    }
    if isinstance(run.config.get("regions"), dict):
        out["regions"] = swarm_regions.regional_figures(
            run.config, run.nodes, requests, ideal, run.probes
        )
    if run.scale_out is not None:
        node, asked, joined = run.scale_out
        pairs = list(zip(requests, ideal, strict=True))
        before = [(r, ok) for r, ok in pairs if r.t < joined]
        after = [(r, ok) for r, ok in pairs if r.t >= joined]
        out["scale_out"] = {
            "node": node,
            "asked_at_s": round(asked - run.started, 2),
            "joined_at_s": round(joined - run.started, 2),
            "ready_after_s": round(joined - asked, 2),
            "accuracy_before": _accuracy(before),
            "accuracy_after": _accuracy(after),
            "requests_to_new_node": next((n["requests"] for n in per_node if n["node"] == node), 0),
        }
    return out


def _accuracy(pairs: Sequence[tuple[Request, bool]]) -> float | None:
    actual = sum(r.cost for r, _ in pairs if r.outcome == ADMITTED)
    return _ratio(actual, sum(r.cost for r, ok in pairs if ok))


# -- writing ------------------------------------------------------------------


def save_run(out: Path, run: SwarmRun) -> None:
    """run.json: what the runner observed, so the report can be drawn again (`main`)."""
    doc = {
        "config": run.config,
        "started": run.started,
        "ended": run.ended,
        "nodes": run.nodes,
        "scale_out": run.scale_out,
        "probes": [list(p) for p in run.probes],
        "probe_admissions": run.probe_admissions,
        # Bucket bounds as strings: JSON has no infinity ("inf" reads back with float()).
        "samples": [
            [*s[:4], {str(le): c for le, c in s.lag_buckets.items()}, *s[5:]] for s in run.samples
        ],
    }
    (out / "run.json").write_bytes(orjson.dumps(doc))


def load_run(out: Path) -> SwarmRun:
    """The SwarmRun saved in `out/run.json`."""
    doc = orjson.loads((out / "run.json").read_bytes())
    samples = [
        NodeSample._make([*s[:4], {float(le): c for le, c in s[4].items()}, *s[5:]])
        for s in doc["samples"]
    ]
    return SwarmRun(
        config=doc["config"],
        started=doc["started"],
        ended=doc["ended"],
        nodes=doc["nodes"],
        samples=samples,
        scale_out=tuple(doc["scale_out"]) if doc["scale_out"] else None,
        probes=[LagSample._make(p) for p in doc.get("probes", [])],
        probe_admissions=doc.get("probe_admissions", 0),
    )


def write_report(out: Path, run: SwarmRun) -> dict[str, Any]:
    """summary.json, summary.md, node samples and the PNG plots in `out`; returns the figures."""
    from stress_test import swarm_plots

    save_run(out, run)
    requests = load_requests(out / "records")
    locust = read_locust_stats(out / "locust_stats.csv")
    numbers = figures(run, requests, locust)
    (out / "summary.json").write_bytes(orjson.dumps(numbers, option=orjson.OPT_INDENT_2))
    with (out / "node_metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t", "node", "admitted", "denied", "tracked", "poison", "lag_count"])
        for s in run.samples:
            writer.writerow(
                [f"{s.at - run.started:.3f}", s.node, s.admitted, s.denied, s.tracked,
                 s.poison, s.lag_count]
            )  # fmt: skip
    rate, burst = float(run.config["rate"]), int(run.config["burst"])
    ideal = ideal_admissions(requests, rate, burst)
    plots = swarm_plots.draw(out, run, requests, ideal, series(run))
    (out / "summary.md").write_text(markdown(numbers, plots))
    return numbers


def markdown(n: dict[str, Any], plots: Sequence[str]) -> str:
    """The Markdown summary."""
    c = n["config"]
    lag, lat = n["sync_lag_ms"], n["latency_ms"]
    lines = [
        f"# Swarm report: {c['scenario']}, {c['nodes']} nodes, {c['users']} users, "
        f"{c['seconds']:g} s",
        "",
        f"Limit per key: {c['rate']:g}/s, burst {c['burst']} (token bucket). "
        f"Kafka {c['kafka']}, topic `{c['topic']}` ({c['partitions']} partitions).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {n['requests']} ({n['errors']} errors) over {n['duration_s']} s |",
        f"| admitted / denied | {n['admitted']} / {n['denied']} |",
        f"| throughput | {n['throughput_rps']} req/s |",
        f"| latency p50 / p90 / p99 / max (Locust) | {lat['p50']} / {lat['p90']} / "
        f"{lat['p99']} / {lat['max']} ms |",
        f"| **cluster accuracy** (admitted / ideal token bucket) | **{n['accuracy']}** "
        f"({n['admitted_cost']} / {n['ideal_admitted_cost']} cost) |",
        f"| fluid limit (sum of burst + rate x active span per key) | {n['fluid_limit_cost']} |",
        f"| admitted per the nodes' metrics | {n['nodes_admitted']} |",
        f"| sync lag p50 / p90 / p99 | {lag['p50']} / {lag['p90']} / {lag['p99']} ms "
        f"({lag['samples']} merged records) |",
        f"| distinct keys | {n['keys']} |",
        "",
    ]
    so = n["scale_out"]
    if so is not None:
        lines += [
            "## Scale-out",
            "",
            f"{so['node']} was started at {so['asked_at_s']} s, was ready (read the topic to "
            f"its end) and took traffic from {so['joined_at_s']} s "
            f"({so['ready_after_s']} s later); it answered {so['requests_to_new_node']} requests.",
            "",
            f"Accuracy before: **{so['accuracy_before']}**, after: **{so['accuracy_after']}**.",
            "",
        ]
    if n.get("regions"):
        lines += swarm_regions.markdown(n["regions"])
    lines += [
        "## Nodes",
        "",
        "| node | requests | admitted | denied | tracked keys | poison records | sync lag p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in n["per_node"]:
        lines.append(
            f"| {p['node']} | {p['requests']} | {p['admitted']} | {p['denied']} | "
            f"{p['tracked_keys']} | {p['poison_records']} | {p['sync_lag_p99_ms']} ms |"
        )
    lines += [
        "",
        "## Latency (Locust, ms)",
        "",
        "| endpoint | requests | failures | req/s | p50 | p90 | p99 | p99.9 | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in n["locust"]:
        lines.append(
            f"| {row['name']} | {row['requests']} | {row['failures']} | {row['rps']} | "
            f"{row['50%']} | {row['90%']} | {row['99%']} | {row['99.9%']} | {row['max']} |"
        )
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in plots]
    lines += [
        "",
        "## How the figures are made",
        "",
        "- Requests, admitted, denied and throughput come from the Locust processes' own "
        "record of every request (send time, key, cost, answer); 429 and `allowed: false` "
        "are correct answers, not failures.",
        "- The ideal is exact, not the fluid estimate: every recorded request is replayed in "
        "send order through one single-node token bucket per key (crdt/reference.py) with "
        "the configured rate and burst. Accuracy = cost admitted by the cluster / cost "
        "that bucket admits. The fluid limit (burst + rate x the key's active span, summed) "
        "is shown as an upper bound for comparison.",
        "- Latency percentiles are Locust's (its CSV, written once a second, so the last "
        "second may be missing there; requests above are complete).",
        "- Sync lag is the nodes' `ratelimiter_sync_lag_seconds` histogram (time from the "
        "writer's previous flush to the merge here: an upper bound including the flush "
        "interval), accumulated over the run across nodes; percentiles are interpolated "
        "inside buckets as Prometheus' histogram_quantile does.",
        "- Per-node admitted/s is the rate of `ratelimiter_decisions_total{outcome=admitted}` "
        "between scrapes (node_metrics.csv).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m stress_test.swarm_report DIR`: draw a swarm's report again from its files."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m stress_test.swarm_report REPORT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    write_report(out, load_run(out))
    print(out / "summary.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
