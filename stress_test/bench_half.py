"""Open-loop load at a fixed rate on two nodes sharing a topic (round robin): latency
percentiles, corrected for coordinated omission too, and both nodes' sync lag."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.local.nodes import NodeProcess
from service.local.process import LOOPBACK
from stress_test.bench_processes import (
    NODE_LIMIT,
    BenchError,
    bucket_quantile,
    buckets,
    cpu_seconds,
    histogram_delta,
    lag_summary,
    node,
    per_bucket,
    pid_of,
    profiled,
    scrape,
    system_busy_seconds,
)
from stress_test.bench_run import Bench
from stress_test.loadgen import Connection, HttpError

WORKERS = 2  # client processes: one Python process cannot both send and time 5k+ req/s
LANES = 32  # sequential connections per worker; each sends every LANES * WORKERS / rate s
WARMUP_S = 2.0
WORKER_CODE = (
    "import sys; from stress_test.bench_half import open_loop_worker; open_loop_worker(sys.argv[1])"
)
LAG = "ratelimiter_sync_lag_seconds"
LOOP_LAG = "ratelimiter_event_loop_lag_seconds"


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 1]) of sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def open_loop_worker(spec_json: str) -> None:
    """A client process: run the schedule in `spec_json`, write the outcome as JSON to
    spec["output"] (a file: a pipe may be left non-blocking by the loop and cut it short)."""
    import uvloop

    spec = json.loads(spec_json)
    outcome = uvloop.run(_drive(spec))
    Path(spec["output"]).write_text(json.dumps(outcome))


async def _drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Each lane sends at fixed intended times; request n (all workers) goes to node n % 2
    for user (n // 2) % users, so every user alternates between the nodes."""
    ports: list[int] = spec["ports"]
    lanes, worker, workers = int(spec["lanes"]), int(spec["worker"]), int(spec["workers"])
    users, start = int(spec["users"]), float(spec["start"])
    measure_from = start + float(spec["warmup"])
    end = measure_from + float(spec["seconds"])
    interval = lanes * workers / float(spec["rate"])
    from_send: list[int] = []  # microseconds
    from_intended: list[int] = []
    late: list[int] = []
    statuses: dict[str, int] = {}
    errors = 0
    first_sent, last_done = math.inf, -math.inf

    async def lane(i: int) -> None:
        nonlocal errors, first_sent, last_done
        slot = i * workers + worker  # position in the interleaved global schedule
        conn = Connection(LOOPBACK, ports[slot % len(ports)])
        phase = slot / (lanes * workers) * interval
        k = 0
        try:
            while (intended := start + phase + k * interval) < end:
                delay = intended - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                n = k * lanes * workers + slot
                user = f"user-{(n // 2) % users}"
                sent = time.monotonic()
                try:
                    status, _, _ = await conn.request("POST", "/protected", [("X-User-ID", user)])
                except (HttpError, OSError, asyncio.IncompleteReadError):
                    status = 0
                    errors += 1
                done = time.monotonic()
                if intended >= measure_from:
                    from_send.append(round((done - sent) * 1e6))
                    from_intended.append(round((done - intended) * 1e6))
                    late.append(round((sent - intended) * 1e6))
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    first_sent, last_done = min(first_sent, sent), max(last_done, done)
                k += 1
        finally:
            await conn.close()

    await asyncio.sleep(max(0.0, start - time.monotonic()))
    cpu = time.process_time()
    await asyncio.gather(*(lane(i) for i in range(lanes)))
    return {
        "first_sent": first_sent,
        "last_done": last_done,
        "from_send_us": from_send,
        "from_intended_us": from_intended,
        "late_us": late,
        "statuses": statuses,
        "errors": errors,
        "cpu_s": time.process_time() - cpu,
    }


def _run_workers(
    ports: list[int], rate: float, seconds: float, users: int, work_dir: Path
) -> list[dict[str, Any]]:
    start = time.monotonic() + 1.5  # CLOCK_MONOTONIC is shared by processes on Linux
    procs = []
    outputs = [work_dir / f"open-loop-{worker}.json" for worker in range(WORKERS)]
    try:
        for worker, output in enumerate(outputs):
            spec = {
                "ports": ports, "rate": rate, "seconds": seconds, "warmup": WARMUP_S,
                "start": start, "lanes": LANES, "worker": worker, "workers": WORKERS,
                "users": users, "output": str(output),
            }  # fmt: skip
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER_CODE, json.dumps(spec)]))
        for proc in procs:
            if proc.wait(timeout=seconds + WARMUP_S + 60) != 0:
                raise BenchError(f"an open-loop worker exited with {proc.returncode}")
        return [json.loads(output.read_text()) for output in outputs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def _ms(values_us: Sequence[float], q: float) -> float | None:
    value = percentile(values_us, q)
    return None if value is None else round(value / 1000, 3)


def _load(
    bench: Bench, nodes: dict[str, NodeProcess], rate: float, seconds: float
) -> dict[str, Any]:
    """One open-loop run at `rate` on both nodes: latency, sync lag, CPU (in cores)."""
    a = bench.args
    before = {k: scrape(n.url) for k, n in nodes.items()}
    pids = {f"node_{k}": pid_of(n) for k, n in nodes.items()}
    for pid in bench.broker_pids():  # none with --kafka: that broker is not ours to watch
        pids["broker"] = pid
    cpu_before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    busy_before, started = system_busy_seconds(), time.monotonic()
    bench.say(f"open loop at {rate:.0f} req/s for {WARMUP_S:g}+{seconds:g} s on 2 nodes")
    ports = [n.port for n in nodes.values()]
    outcomes = _run_workers(ports, rate, seconds, a.users, bench.work_dir)
    wall = time.monotonic() - started
    cpu = {k: (cpu_seconds(pid) - cpu_before[k]) / wall for k, pid in pids.items()}
    cpu["clients"] = sum(float(o["cpu_s"]) for o in outcomes) / wall
    cpu["background"] = max(0.0, (system_busy_seconds() - busy_before) / wall - sum(cpu.values()))
    after = {k: scrape(n.url) for k, n in nodes.items()}

    from_send = sorted(v for o in outcomes for v in o["from_send_us"])
    from_intended = sorted(v for o in outcomes for v in o["from_intended_us"])
    late = sorted(v for o in outcomes for v in o["late_us"])
    statuses: dict[str, int] = {}
    for o in outcomes:
        for status, count in o["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    # Requests intended in the window, over the time it really took to send and answer them.
    span = max(o["last_done"] for o in outcomes) - min(o["first_sent"] for o in outcomes)
    lag: dict[str, Any] = {}
    for key in nodes:
        b0, b1 = buckets(before[key], LAG), buckets(after[key], LAG)
        p50, p99 = bucket_quantile(b0, b1, 0.5), bucket_quantile(b0, b1, 0.99)
        lag[key] = {
            "merged_records": round(b1.get(math.inf, 0) - b0.get(math.inf, 0)),
            "p50_ms_bound": None if p50 is None else p50 * 1000,
            "p99_ms_bound": None if p99 is None else p99 * 1000,
            "per_bucket_ms": per_bucket(b0, b1),
        }
    p99s = [v["p99_ms_bound"] for v in lag.values() if v["p99_ms_bound"] is not None]
    loop_lag = {
        key: lag_summary(
            histogram_delta(buckets(before[key], LOOP_LAG), buckets(after[key], LOOP_LAG))
        )
        for key in nodes
    }
    return {
        "target_rps": round(rate, 1),
        "achieved_rps": round(len(from_send) / span, 1) if span > 0 else None,
        "sent_over_s": round(span, 2),
        "requests": len(from_send),
        "statuses": statuses,
        "errors": sum(int(o["errors"]) for o in outcomes),
        "p50_ms_from_send": _ms(from_send, 0.5),
        "p90_ms_from_send": _ms(from_send, 0.9),
        "p99_ms_from_send": _ms(from_send, 0.99),
        "p999_ms_from_send": _ms(from_send, 0.999),
        "max_ms_from_send": _ms(from_send, 1.0),
        "p50_ms_from_intended": _ms(from_intended, 0.5),
        "p99_ms_from_intended": _ms(from_intended, 0.99),
        "send_late_p99_ms": _ms(late, 0.99),
        "sync_lag_p99_ms_bound": max(p99s) if p99s else None,
        "sync_lag": lag,
        "event_loop_lag": loop_lag,
        "cpu_cores": {k: round(v, 2) for k, v in cpu.items()},
    }


def run_half(bench: Bench, node_rps: float | None) -> dict[str, Any]:
    """Two nodes on one fresh topic under open-loop load at `half_rate`, else `half_fraction`
    of `node_rps`, then at each `half_also` fraction (shorter runs, same nodes)."""
    a = bench.args
    if a.half_rate:
        rate = float(a.half_rate)
    elif node_rps:
        rate = a.half_fraction * node_rps
    else:
        raise BenchError("no node req/s to take a fraction of; give --half-rate")
    others = [f * node_rps for f in a.half_also] if node_rps and not a.half_rate else []
    args = [*NODE_LIMIT, "--topic", bench.fresh_topic("half"), "--log-level", "warning"]
    kafka = bench.kafka()
    profile: dict[str, Any] = {}
    with (
        node("bench-a", kafka, args, bench.work_dir) as node_a,
        node("bench-b", kafka, args, bench.work_dir) as node_b,
    ):
        nodes = {"a": node_a, "b": node_b}
        with profiled(pid_of(node_a), a.profile, "half-node-a", profile):
            main = _load(bench, nodes, rate, a.half_secs)
        lower = [_load(bench, nodes, r, a.half_secs / 2) for r in others]
    return {
        **main,
        "basis_node_rps": node_rps,
        "fraction": None if a.half_rate else a.half_fraction,
        "measured_s": a.half_secs,
        "other_rates": [
            {"fraction": f, **{k: v for k, v in run.items() if k != "sync_lag"}}
            for f, run in zip(a.half_also, lower, strict=False)
        ],
        **profile,
        "notes": [
            f"{WORKERS} Python client processes x {LANES} connections (stress_test.loadgen), "
            "open loop: each connection sends at fixed intended times; request n goes to "
            "node n % 2 for user (n // 2) % users",
            "from_send: send to answer (what wrk reports); from_intended: from the intended "
            "send time, corrected for coordinated omission, includes the client's ~1 ms "
            "timer granularity and its own CPU contention",
            "sync lag: upper bound of the histogram bucket holding the percentile "
            "(ratelimiter_sync_lag_seconds, scraped before and after each run)",
            "event_loop_lag: the same from ratelimiter_event_loop_lag_seconds (how late a "
            "20 ms timer fires); max is the smallest bucket bound holding every observation",
            f"other_rates: the same two nodes at lower rates, {a.half_secs / 2:g} s each",
        ],
    }
