"""The forwarded share behind the owner-aware nginx: deploy/nginx-replicated.conf (njs
computes each user's Kafka partition, a consistent hash on it) in front of N real nodes
with `--replicas 2`, with `--placement ring` against rendezvous placement, in the same run.

Run `python -m stress_test.bench_owner_lb [--json] [--nodes N] [--users U] [--rounds K]
[--kafka HOST:PORT]`.

For each placement the bench starts N nodes on a fresh state topic of 48 partitions (and
members topic), waits until every node sees the others and an owner answers a user of each
partition, starts nginx in front of them (the deploy config: its server lines are the
nodes' addresses, its $rl_partitions the topic's count), and sends U distinct users one
`POST /protected` each through nginx per round, one at a time on one keep-alive
connection. The forwarded share is the rise of ratelimiter_forwarded_total{outcome=
"forwarded"} over the nodes divided by the requests; latency is the client's, through
nginx; medians over rounds. Needs nginx and its njs module (`make system`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.local.jars import repo_root
from service.local.nginx import NginxProcess, replicated_conf
from service.local.nodes import NodeProcess
from service.local.process import LOOPBACK, free_port
from service.membership.ketama import Ring, ring_owners
from service.membership.rendezvous import owners
from service.replication.codec import partition_for_user
from stress_test.bench_fleet import FleetBench, run_measured
from stress_test.bench_half import percentile
from stress_test.bench_processes import BenchError, scrape
from stress_test.bench_run import bench_main
from stress_test.loadgen import Connection
from stress_test.provenance import header_lines

PROG = "python -m stress_test.bench_owner_lb"
PARTITIONS, REPLICAS = 48, 2
PLACEMENTS = ("rendezvous", "ring")  # the first is the baseline
TARGET = 0.05  # the target: under 5% forwarded behind a consistent-hash balancer
FORWARDED = "ratelimiter_forwarded_total"


def node_args(topic: str, placement: str) -> list[str]:
    """Every node's `serve` options: R = 2, the placement, a limit no request reaches."""
    return [
        "--topic", topic, "--members-topic", f"{topic}.members", "--partitions",
        str(PARTITIONS), "--replicas", str(REPLICAS), "--placement", placement,
        "--heartbeat-s", "0.5", "--rate", "1000000", "--burst", "1000000",
        "--log-level", "warning",
    ]  # fmt: skip


def held(placement: str, servers: dict[str, str]) -> list[list[str]]:
    """The owners of every partition as the nodes compute them."""
    if placement == "ring":
        return ring_owners(PARTITIONS, servers, REPLICAS)
    return [owners(p, servers, REPLICAS) for p in range(PARTITIONS)]


def forwarded(nodes: Sequence[NodeProcess]) -> float:
    """Requests forwarded to an owner, summed over the nodes."""
    return sum(
        scrape(n.url).get(FORWARDED, {}).get((("outcome", "forwarded"),), 0.0) for n in nodes
    )


def _settled(nodes: Sequence[NodeProcess], owning: list[list[str]], within_s: float) -> None:
    """Until each node forwards a user of every partition to an owner (or answers it)."""
    probes = [
        next(u for i in range(100_000) if partition_for_user(u := f"p-{i}", PARTITIONS) == p)
        for p in range(PARTITIONS)
    ]
    deadline = time.monotonic() + within_s
    while True:
        wrong = 0
        for node in nodes:
            for p, user in enumerate(probes):
                try:
                    with urllib.request.urlopen(f"{node.url}/v1/keys/{user}", timeout=5) as r:  # noqa: S310
                        by = r.headers.get("x-ratelimiter-answered-by") or node.node_id
                        wrong += by not in owning[p]
                except OSError:
                    wrong += 1
        if not wrong:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the members do not agree within {within_s} s ({wrong} wrong)")
        time.sleep(0.2)  # poll again until the deadline


async def _round(port: int, users: Sequence[str]) -> dict[str, Any]:
    """One request per user through nginx; latency in ms, answers not 200."""
    conn = Connection(LOOPBACK, port)
    lat: list[float] = []
    bad = answered_by = 0
    try:
        for user in users:
            t = time.perf_counter()
            status, got, _ = await conn.request("POST", "/protected", [("X-User-ID", user)])
            lat.append((time.perf_counter() - t) * 1000)
            bad += status != 200
            answered_by += "x-ratelimiter-answered-by" in got
    finally:
        await conn.close()
    lat.sort()
    return {
        "p50_ms": round(percentile(lat, 0.5) or 0, 3),
        "p99_ms": round(percentile(lat, 0.99) or 0, 3),
        "not_200": bad,
        "answered_by_header": answered_by,
    }


def measure_placement(bench: FleetBench, placement: str) -> dict[str, Any]:
    """N nodes with `placement` behind nginx; rounds of distinct users."""
    args = bench.args
    kafka = bench.kafka()
    topic = bench.fresh_topic(f"owner-lb-{placement}")
    with contextlib.ExitStack() as stack:
        nodes = []
        for i in range(args.nodes):
            proc = NodeProcess(
                f"lb-{placement[:4]}-{i}",
                free_port(),
                kafka,
                node_args(topic, placement),
                bench.work_dir / "logs",
            )
            stack.callback(proc.stop)
            nodes.append(proc.start())
        for proc in nodes:
            proc.wait_ready(120)
        servers = {n.node_id: f"{LOOPBACK}:{n.port}" for n in nodes}  # = --advertise
        owning = held(placement, servers)
        _settled(nodes, owning, 90)
        port = free_port()
        deploy = repo_root(Path(__file__).parent) / "deploy"
        conf = replicated_conf(deploy, list(servers.values()), port, PARTITIONS)
        stack.enter_context(NginxProcess(conf, bench.work_dir / f"nginx-{placement}", port))
        node_at = {a: n for n, a in servers.items()}
        ring = Ring(servers.values())
        picked = [node_at[ring.pick(str(p))] for p in range(PARTITIONS)]
        asyncio.run(_round(port, [f"warm-{i}" for i in range(200)]))
        rounds = []
        for k in range(args.rounds):
            users = [f"u-{uuid.uuid4().hex[:10]}" for _ in range(args.users)]
            before = forwarded(nodes)
            result = asyncio.run(_round(port, users))
            result["forwarded"] = int(forwarded(nodes) - before)
            result["share"] = round(result["forwarded"] / len(users), 4)
            predicted = sum(
                picked[p] not in owning[p]
                for p in (partition_for_user(u, PARTITIONS) for u in users)
            )
            result["predicted_share"] = round(predicted / len(users), 4)
            rounds.append(result)
            bench.say(f"{placement} round {k + 1}: {result}")
    return {
        "rounds": rounds,
        "share": statistics.median(r["share"] for r in rounds),
        "predicted_share": statistics.median(r["predicted_share"] for r in rounds),
        "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
        "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
        "not_200": sum(r["not_200"] for r in rounds),
        "forwarded_without_header": sum(r["forwarded"] - r["answered_by_header"] for r in rounds),
    }


def measure(bench: FleetBench) -> dict[str, Any]:
    """Both placements, the baseline first; ratios against it."""
    out: dict[str, Any] = {p: measure_placement(bench, p) for p in PLACEMENTS}
    base, ring = out["rendezvous"], out["ring"]
    out["n_minus_r_over_n"] = round((bench.args.nodes - REPLICAS) / bench.args.nodes, 4)
    out["share_ratio"] = round(ring["share"] / base["share"], 4) if base["share"] else None
    out["p50_ratio"] = round(ring["p50_ms"] / base["p50_ms"], 3) if base["p50_ms"] else None
    out["target_share"] = TARGET
    out["met"] = ring["share"] < TARGET
    return out


def render_table(report: dict[str, Any]) -> str:
    """The report as readable text."""
    r = report["results"]
    lines = [*header_lines(report), ""]
    if not r:
        return "\n".join([*lines, f"skipped: {report['skipped']}"])
    lines.append(
        f"{'placement':>11}{'forwarded':>11}{'predicted':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'not 200':>9}"
    )
    for name in PLACEMENTS:
        m = r[name]
        lines.append(
            f"{name:>11}{m['share']:>11.2%}{m['predicted_share']:>11.2%}{m['p50_ms']:>9.3f}"
            f"{m['p99_ms']:>9.3f}{m['not_200']:>9}"
        )
    lines += [
        "",
        f"{report['nodes']} nodes, R = {REPLICAS}, {PARTITIONS} partitions, "
        f"{report['users']} distinct users a round; (N-R)/N = {r['n_minus_r_over_n']:.0%}",
        f"ring / rendezvous: forwarded share x{r['share_ratio']}, p50 x{r['p50_ratio']}; "
        f"target < {TARGET:.0%} forwarded: {'met' if r['met'] else 'MISSED'}",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--nodes", type=int, default=4, help="nodes behind nginx (4)")
    p.add_argument("--users", type=int, default=2000, help="distinct users a round (2000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians over them (3)")
    p.add_argument("--kafka", metavar="HOST:PORT")
    args = p.parse_args(argv)
    if args.nodes < REPLICAS + 1 or args.users < 100 or args.rounds < 1:
        p.error(f"--nodes >= {REPLICAS + 1}, --users >= 100, --rounds >= 1")
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Both fleets and their rounds; always stops what was started (nginx, nodes, broker)."""
    return run_measured("bench_owner_lb", args, argv, measure, nodes=args.nodes, users=args.users)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 with a report, 2 on bad options."""
    return bench_main(PROG, argv, parse_args, run, render_table)


if __name__ == "__main__":
    sys.exit(main())
