"""`ratelimiter swarm`: a Locust swarm against a local cluster, with an accuracy report."""

from __future__ import annotations

import argparse
from pathlib import Path

from stress_test.swarm import SCENARIOS, SwarmConfig, SwarmUsage, run_swarm
from stress_test.swarm_regions import parse_region_nodes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ratelimiter swarm` (defaults sized for a 2-core machine)."""
    parser.add_argument("--nodes", type=int, default=3, help="node processes (default 3)")
    parser.add_argument("--users", type=int, default=30, help="Locust users (default 30)")
    parser.add_argument("--seconds", type=float, default=20.0, help="swarm length (default 20)")
    parser.add_argument(
        "--scenario", choices=sorted(SCENARIOS), default="steady", help="load shape"
    )
    parser.add_argument("--out", type=Path, default=None, help="report folder (reports/...)")
    parser.add_argument(
        "--kafka", default=None, help="HOST:PORT of a running broker (default: the local one)"
    )
    parser.add_argument(
        "--kafka-port", type=int, default=9092, help="port of the local broker when started"
    )
    parser.add_argument(
        "--scale-out-at", type=float, default=None, help="add one node after SECONDS"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="tokens per second per key")
    parser.add_argument("--burst", type=int, default=20, help="bucket capacity per key")
    parser.add_argument("--spawn-rate", type=float, default=None, help="Locust users per second")
    parser.add_argument("--partitions", type=int, default=12, help="state topic partitions")
    regions = parser.add_argument_group(
        "regions",
        "spread each user's requests over regions; report accuracy against the ideal bucket "
        "and the regional bound (README: Regions: the bound)",
    )
    regions.add_argument(
        "--region-nodes",
        action="append",
        default=[],
        metavar="NAME=URL[,URL...]",
        help="the running nodes of one region (repeat per region, at least two); the swarm "
        "starts no broker or node and must be given the nodes' --rate and --burst",
    )
    regions.add_argument(
        "--regions",
        type=int,
        default=None,
        help="without --region-nodes: start R groups of --nodes nodes on ONE broker and ONE "
        "topic, a rehearsal of the regional swarm with no mirror (D about 0)",
    )
    regions.add_argument(
        "--sync-delay-ms",
        type=float,
        default=None,
        help="the bound's d (default: the largest same-region lag the probe measured)",
    )
    regions.add_argument(
        "--region-delay-ms",
        type=float,
        default=None,
        help="the bound's D (default: the largest cross-region lag probed, less d)",
    )
    regions.add_argument(
        "--probe-s", type=float, default=1.0, help="seconds between lag probes (default 1)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the swarm and print where the report is."""
    try:
        region_nodes = parse_region_nodes(args.region_nodes) if args.region_nodes else {}
    except ValueError as exc:
        raise SwarmUsage(str(exc)) from exc
    regions = args.regions if args.regions is not None else max(1, len(region_nodes))
    config = SwarmConfig(
        nodes=args.nodes,
        users=args.users,
        seconds=args.seconds,
        scenario=args.scenario,
        out=args.out,
        kafka=args.kafka,
        kafka_port=args.kafka_port,
        scale_out_at=args.scale_out_at,
        rate=args.rate,
        burst=args.burst,
        spawn_rate=args.spawn_rate,
        partitions=args.partitions,
        region_nodes=tuple((name, tuple(urls)) for name, urls in region_nodes.items()),
        regions=regions,
        sync_delay_ms=args.sync_delay_ms,
        region_delay_ms=args.region_delay_ms,
        probe_s=args.probe_s,
    )
    out = run_swarm(config)
    print((out / "summary.md").read_text())
    return 0
