"""`ratelimiter swarm`: a Locust swarm against a local cluster, with an accuracy report."""

from __future__ import annotations

import argparse
from pathlib import Path

from stress_test.swarm import SCENARIOS, SwarmConfig, run_swarm


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


def run(args: argparse.Namespace) -> int:
    """Run the swarm and print where the report is."""
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
    )
    out = run_swarm(config)
    print((out / "summary.md").read_text())
    return 0
