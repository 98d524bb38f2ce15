"""Forwarding latency: `POST /protected` answered where it lands against forwarded to the
owner, two real nodes with `--replicas 1` on loopback, in the same run.

Run `python -m stress_test.bench_forward [--json] [--requests N] [--rounds K]
[--kafka HOST:PORT]`.

Node A and node B share a state topic and a members topic; with one replica every user's
partition has one owner. For users A owns, the bench sends each request alternately to A
(answered locally) and to B (forwarded to A over B's pooled keep-alive connection), one at
a time on one keep-alive connection per node, so both paths see the same client, the same
moment and the same users. Latency is the client's, per request; medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from service.local.nodes import NodeProcess
from service.membership.rendezvous import owners
from service.replication.codec import partition_for_user
from stress_test.bench_fleet import FleetBench, run_measured
from stress_test.bench_half import percentile
from stress_test.bench_processes import BenchError, bucket_quantile, buckets, node, scrape
from stress_test.bench_run import bench_main
from stress_test.loadgen import Connection
from stress_test.provenance import header_lines

PROG = "python -m stress_test.bench_forward"
PARTITIONS = 12
NODES = ("fwd-a", "fwd-b")
USERS = 200
TARGET_MS = 1.0  # the budget: forwarding adds at most 1 ms to p50 on loopback
FORWARD = "ratelimiter_forward_seconds"


def node_args(topic: str) -> list[str]:
    """Both nodes' `serve` options: one replica, a limit no request reaches."""
    return [
        "--topic", topic, "--members-topic", f"{topic}.members", "--partitions",
        str(PARTITIONS), "--replicas", "1", "--heartbeat-s", "0.5", "--rate", "1000000",
        "--burst", "1000000", "--log-level", "warning",
    ]  # fmt: skip


def users_of(owner: str) -> list[str]:
    """USERS user ids whose partition `owner` owns among NODES."""
    out: list[str] = []
    i = 0
    while len(out) < USERS:
        user = f"fwd-user-{i}"
        if owners(partition_for_user(user, PARTITIONS), NODES, 1) == [owner]:
            out.append(user)
        i += 1
    return out


async def _settled(a: NodeProcess, b: NodeProcess, users: Sequence[str], within_s: float) -> None:
    """Until B forwards each of `users` to A (both see each other, A answers for them)."""
    deadline = time.monotonic() + within_s
    conn = Connection("127.0.0.1", b.port)
    try:
        while True:
            answers = []
            for user in users[:20]:
                _, headers, _ = await conn.request("GET", f"/v1/keys/{user}")
                answers.append(headers.get("x-ratelimiter-answered-by"))
            if all(x == a.node_id for x in answers):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"B does not forward to A within {within_s} s: {answers[:3]}")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def _round(a: NodeProcess, b: NodeProcess, users: Sequence[str], n: int) -> dict[str, Any]:
    """n requests to each node, alternating; per-request latency in µs."""
    local, forwarded = Connection("127.0.0.1", a.port), Connection("127.0.0.1", b.port)
    lat: dict[str, list[float]] = {"local": [], "forwarded": []}
    bad = 0
    try:
        for i in range(n):
            user = users[i % len(users)]
            headers = [("X-User-ID", user)]
            for name, conn in (("local", local), ("forwarded", forwarded)):
                t = time.perf_counter()
                status, got, _ = await conn.request("POST", "/protected", headers)
                lat[name].append((time.perf_counter() - t) * 1e6)
                by = got.get("x-ratelimiter-answered-by", a.node_id if name == "local" else "")
                bad += status != 200 or by != a.node_id
    finally:
        await local.close()
        await forwarded.close()
    out: dict[str, Any] = {"not_200_or_not_from_owner": bad}
    for name, values in lat.items():
        values.sort()
        out[name] = {
            "p50_ms": round((percentile(values, 0.5) or 0) / 1000, 3),
            "p99_ms": round((percentile(values, 0.99) or 0) / 1000, 3),
        }
    return out


def measure(bench: FleetBench) -> dict[str, Any]:
    """Both nodes, settled; rounds of alternating requests; the owner-side histogram."""
    a_args = bench.args
    kafka = bench.kafka()
    topic = bench.fresh_topic("forward")
    users = users_of(NODES[0])
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(node(NODES[0], kafka, node_args(topic), bench.work_dir))
        b = stack.enter_context(node(NODES[1], kafka, node_args(topic), bench.work_dir))
        asyncio.run(_settled(a, b, users, 60))
        asyncio.run(_round(a, b, users, 500))  # warm-up: connections, pools, code paths
        before = scrape(b.url)
        rounds = []
        for k in range(a_args.rounds):
            rounds.append(asyncio.run(_round(a, b, users, a_args.requests)))
            bench.say(f"round {k + 1}: {rounds[-1]}")
        after = scrape(b.url)
    hist_before, hist_after = buckets(before, FORWARD), buckets(after, FORWARD)
    med = {
        f"{name}_{q}": round(statistics.median(r[name][q] for r in rounds), 3)
        for name in ("local", "forwarded")
        for q in ("p50_ms", "p99_ms")
    }
    added = round(med["forwarded_p50_ms"] - med["local_p50_ms"], 3)
    return {
        "rounds": rounds,
        "medians": med,
        "added_p50_ms": added,
        "added_p99_ms": round(med["forwarded_p99_ms"] - med["local_p99_ms"], 3),
        "p50_ratio": round(med["forwarded_p50_ms"] / med["local_p50_ms"], 3),
        "target_added_p50_ms": TARGET_MS,
        "met": added <= TARGET_MS,
        "forward_seconds_p50_bound": bucket_quantile(hist_before, hist_after, 0.5),
        "forward_seconds_p99_bound": bucket_quantile(hist_before, hist_after, 0.99),
        "not_200_or_not_from_owner": sum(r["not_200_or_not_from_owner"] for r in rounds),
    }


def render_table(report: dict[str, Any]) -> str:
    """The report as readable text."""
    r = report["results"]
    lines = [*header_lines(report), ""]
    if not r:
        return "\n".join([*lines, f"skipped: {report['skipped']}"])
    m = r["medians"]
    lines += [
        f"{'path':>10}{'p50 ms':>9}{'p99 ms':>9}",
        f"{'local':>10}{m['local_p50_ms']:>9.3f}{m['local_p99_ms']:>9.3f}",
        f"{'forwarded':>10}{m['forwarded_p50_ms']:>9.3f}{m['forwarded_p99_ms']:>9.3f}",
        "",
        f"forwarding adds {r['added_p50_ms']} ms at p50 ({r['p50_ratio']}x), "
        f"{r['added_p99_ms']} ms at p99; target <= {TARGET_MS} ms at p50: "
        f"{'met' if r['met'] else 'MISSED'}",
        f"B's ratelimiter_forward_seconds: p50 <= {r['forward_seconds_p50_bound']} s, "
        f"p99 <= {r['forward_seconds_p99_bound']} s; answers not 200 or not from the owner: "
        f"{r['not_200_or_not_from_owner']}",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--requests", type=int, default=3000, help="per node per round (3000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians over them (3)")
    p.add_argument("--kafka", metavar="HOST:PORT")
    args = p.parse_args(argv)
    if args.requests < 100 or args.rounds < 1:
        p.error("--requests >= 100, --rounds >= 1")
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Both nodes and the rounds; always stops what was started (nodes, then broker)."""
    return run_measured("bench_forward", args, argv, measure)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 with a report, 2 on bad options."""
    return bench_main(PROG, argv, parse_args, run, render_table)


if __name__ == "__main__":
    sys.exit(main())
