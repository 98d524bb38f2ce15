"""`ratelimiter simulate`: size flush intervals before deploying, with the pure simulator."""

from __future__ import annotations

import argparse
import itertools

import orjson

from crdt.simulator import TRAFFIC, Partition, SimConfig, SimResult, simulate
from service.membership.ketama import Ring, ring_owners
from service.membership.rendezvous import owners
from service.replication.codec import partition_for_user

LB_POLICIES = (
    "round-robin",
    "consistent-hash",
    "consistent-hash-partition",
    "partition-ring",
    "owner-aware",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the simulate subcommand."""
    parser.add_argument(
        "--nodes", type=int, nargs="+", default=[3], help="one or more N (per region)"
    )
    parser.add_argument(
        "--regions",
        type=int,
        default=1,
        help="R regions of N nodes each; a delta crosses regions after --region-delay-ms more",
    )
    parser.add_argument(
        "--region-delay-ms",
        type=float,
        nargs="+",
        default=[0.0],
        help="one or more D: what the mirror between regions adds to the local delay",
    )
    parser.add_argument(
        "--delay-ms", type=float, nargs="+", default=[20.0], help="one-way delivery delay(s)"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="tokens per second")
    parser.add_argument("--burst", type=int, default=20, help="bucket capacity")
    parser.add_argument("--rps", type=float, default=100.0, help="offered requests per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="simulated duration")
    parser.add_argument("--users", type=int, default=1, help="distinct keys")
    parser.add_argument("--flush-ms", type=float, default=20.0, help="flush interval")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="extra random delay")
    parser.add_argument("--duplicate", type=float, default=0.0, help="duplicate probability")
    parser.add_argument(
        "--partition",
        nargs=3,
        type=float,
        metavar=("START", "END", "NODE"),
        help="cut node NODE off from the others between START and END seconds",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="R: each partition replicated on R nodes (decisions on R owners, N replaced by R "
        "in the bound); default: every node decides (--replicas all)",
    )
    parser.add_argument(
        "--lb",
        choices=LB_POLICIES,
        default="round-robin",
        help="load-balancer policy in front of the N nodes, for the forward fraction",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=12,
        help="state topic partitions, for the forward fraction",
    )
    parser.add_argument("--traffic", choices=TRAFFIC, default="steady")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object per run")


def forward_fraction(
    nodes: int, replicas: int, lb: str, users: int = 10_000, partitions: int = 12
) -> float:
    """The share of requests a node forwards with each partition on `replicas` of `nodes`
    (users equally busy).

    round-robin: a request lands on an owner with probability R/N, so (N-R)/N.
    consistent-hash: nginx's `hash $http_x_user_id consistent` (its ketama ring, computed
    here as nginx does) over the nodes; a user always lands on the same node, which owns
    the user's partition for about R/N of users: the ring hashes the user, the owners
    are chosen per partition, and each partition's users are spread over the whole ring.
    consistent-hash-partition: the same ring keyed on the user's partition number (njs
    computes it, deploy/partition.js): every user of a partition lands on one node, an owner
    for about R/N of the partitions (the ring and rendezvous hashing pick independently).
    partition-ring: the same balancer with the nodes on `--placement ring`
    (deploy/nginx-replicated.conf): partition p's owners are the first R members the
    ring meets from p's point, so the node nginx picks is an owner.
    owner-aware: the balancer sends a user to an owner (it computes the same rendezvous
    hash, or follows X-RateLimiter-Answered-By), so nothing is forwarded.
    """
    r = min(replicas, nodes)
    if lb == "round-robin":
        return (nodes - r) / nodes
    if lb == "owner-aware":
        return 0.0
    addresses = {f"node-{i}": f"node-{i}:8000" for i in range(nodes)}  # `server` lines
    ring = Ring(addresses.values())
    if lb == "partition-ring":
        held = ring_owners(partitions, addresses, r)
    else:
        held = [owners(p, addresses, r) for p in range(partitions)]
    forwarded = 0
    for i in range(users):
        user = f"user-{i}"
        partition = partition_for_user(user, partitions)
        key = user if lb == "consistent-hash" else str(partition)
        landed = ring.pick(key).rpartition(":")[0]
        if landed not in held[partition]:
            forwarded += 1
    return forwarded / users


def least_forward_fraction(
    nodes: int, replicas: int, users: int = 10_000, partitions: int = 12
) -> float:
    """The least share of requests forwarded behind nginx's `hash $http_x_user_id
    consistent` by ANY choice of R owners per partition: each partition's owners being the
    R nodes the balancer sends most of its users to. The ring hashes users, not partitions,
    so each partition's users spread over every node's arcs and about (N-R)/N still land
    elsewhere: no placement by partition makes a user-keyed balancer agree."""
    r = min(replicas, nodes)
    ring = Ring(f"node-{i}:8000" for i in range(nodes))
    landed: list[dict[str, int]] = [{} for _ in range(partitions)]
    for i in range(users):
        user = f"user-{i}"
        counts = landed[partition_for_user(user, partitions)]
        server = ring.pick(user)
        counts[server] = counts.get(server, 0) + 1
    kept = sum(sum(sorted(c.values(), reverse=True)[:r]) for c in landed)
    return 1 - kept / users


def _row(
    result: SimResult, nodes: int, replicas: int | None, lb: str, partitions: int
) -> dict[str, object]:
    cfg = result.config
    return {
        "regions": cfg.regions,
        "nodes": nodes,
        "replicas": "all" if replicas is None else min(replicas, nodes),
        "forward_fraction": round(
            0.0
            if replicas is None
            else forward_fraction(nodes, replicas, lb, partitions=partitions),
            4,
        ),
        "delay_ms": cfg.delay * 1000,
        "region_delay_ms": cfg.region_delay * 1000 if cfg.regions > 1 else 0.0,
        "requests": result.requests,
        "per_region": result.per_region,
        "admitted": result.admitted,
        "ideal": result.ideal,
        "accuracy": round(result.accuracy, 4),
        "bound": round(result.bound_total, 1),
        "within_bound": result.admitted <= result.bound_total,
        "max_interval_excess": round(result.max_excess, 2),
        "interval_bound": round(cfg.interval_bound(), 2),
        "converged": result.converged,
    }


def run(args: argparse.Namespace) -> int:
    """Simulate every (nodes, delay) pair and print a table (or JSON lines)."""
    partitions: tuple[Partition, ...] = ()
    if args.partition:
        start, end, node = args.partition
        partitions = (Partition(start, end, frozenset({int(node)})),)
    rows = []
    # One region: D plays no part, so one row per (nodes, delay).
    region_delays = args.region_delay_ms if args.regions > 1 else [0.0]
    for nodes in args.nodes:
        # With R replicas only the R owners of a user's partition decide for it (the
        # others forward): the cluster behaves as R nodes for the bound.
        deciders = nodes if args.replicas is None else min(args.replicas, nodes)
        for delay_ms, region_delay_ms in itertools.product(args.delay_ms, region_delays):
            cfg = SimConfig(
                nodes=deciders,
                rate=args.rate,
                burst=args.burst,
                rps=args.rps,
                seconds=args.seconds,
                users=args.users,
                delay=delay_ms / 1000,
                jitter=args.jitter_ms / 1000,
                flush=args.flush_ms / 1000,
                duplicate=args.duplicate,
                partitions=partitions,
                traffic=args.traffic,
                seed=args.seed,
                regions=args.regions,
                region_delay=region_delay_ms / 1000,
            )
            rows.append(_row(simulate(cfg), nodes, args.replicas, args.lb, args.partitions))
    if args.json:
        for row in rows:
            print(orjson.dumps(row).decode())
        return 0
    if args.regions > 1:
        return _print_regions(rows)
    header = (
        f"{'nodes':>5} {'R':>3} {'fwd':>6} {'delay_ms':>8} {'admitted':>9} {'ideal':>7} "
        f"{'ratio':>7} "
        f"{'bound':>9} {'max A(s,t]-r(t-s)':>18} {'its bound':>10} {'converged':>9}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['nodes']:>5} {r['replicas']!s:>3} {r['forward_fraction']:>6.3f} "
            f"{r['delay_ms']:>8.0f} {r['admitted']:>9} {r['ideal']:>7} "
            f"{r['accuracy']:>7.3f} {r['bound']:>9.1f} {r['max_interval_excess']:>18.2f} "
            f"{r['interval_bound']:>10.2f} {r['converged']!s:>9}"
        )
    print(
        "bound = C + r*T + (M-1)(C + r*d), M = R with --replicas R else N, "
        "d = flush + delay + jitter; its bound = the same for every interval, minus r*(t-s); "
        f"fwd = share of requests forwarded to an owner under --lb {args.lb}"
    )
    return 0


def _print_regions(rows: list[dict[str, object]]) -> int:
    """The table with regions: admissions per region, D, and the regional bound."""
    print(
        f"{'regions':>7} {'nodes':>5} {'delay_ms':>8} {'D_ms':>7} {'admitted':>9} "
        f"{'per region':>16} {'ideal':>7} {'ratio':>7} {'bound':>9} "
        f"{'max A(s,t]-r(t-s)':>18} {'its bound':>10} {'converged':>9}"
    )
    for r in rows:
        per_region = "/".join(str(a) for a in r["per_region"])  # type: ignore[attr-defined]
        print(
            f"{r['regions']:>7} {r['nodes']:>5} {r['delay_ms']:>8.0f} "
            f"{r['region_delay_ms']:>7.0f} {r['admitted']:>9} {per_region:>16} "
            f"{r['ideal']:>7} {r['accuracy']:>7.3f} {r['bound']:>9.1f} "
            f"{r['max_interval_excess']:>18.2f} {r['interval_bound']:>10.2f} "
            f"{r['converged']!s:>9}"
        )
    print(
        "bound = C + r*T + (R*N-1)(C + r*d) + (R-1)*r*D per user, R regions of N nodes, "
        "d = flush + delay + jitter (same region), d + D across regions; its bound = the "
        "same for every interval, minus r*(t-s) (README: Regions: the bound)"
    )
    return 0
