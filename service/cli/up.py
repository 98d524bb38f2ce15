"""`ratelimiter up`: the main job: a local Kafka broker and a 3-node cluster, ready to curl.

Without Java, one standalone node runs instead, and it says why.
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from service.errors import BrokerError
from service.local.broker import LocalBroker, default_data_dir
from service.local.nodes import NodeProcess
from service.local.process import require_java


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ratelimiter up`."""
    parser.add_argument("--nodes", type=int, default=3, help="node processes (default 3)")
    parser.add_argument("--base-port", type=int, default=8001, help="first node's port")
    parser.add_argument("--kafka-port", type=int, default=9092, help="the local broker's port")
    parser.add_argument("--data-dir", type=Path, default=None, help="broker data (.kafka/)")
    parser.add_argument("--rate", default="10", help="tokens per second per user")
    parser.add_argument("--burst", default="20", help="bucket capacity per user")
    parser.add_argument("--rules", default=None, help="a rules YAML file for every node")
    parser.add_argument(
        "--standalone", action="store_true", help="one node without Kafka, even with Java"
    )


def run(args: argparse.Namespace) -> int:
    """Start everything, print where it is, serve until Ctrl-C, then stop what we started."""
    data_dir = args.data_dir or default_data_dir()
    extra = ["--rate", args.rate, "--burst", args.burst]
    if args.rules:
        extra += ["--rules", args.rules]
    broker: LocalBroker | None = None
    started_broker = False
    kafka = "none"
    reason = "--standalone given"
    if not args.standalone:
        try:
            require_java()
            reason = ""
        except BrokerError as exc:
            reason = str(exc)
    if reason:
        print(f"running ONE standalone node without Kafka: {reason}")
        nodes = [NodeProcess("node-1", args.base_port, "none", extra, data_dir / "cluster")]
    else:
        broker = LocalBroker(port=args.kafka_port, data_dir=data_dir)
        started_broker = not broker.status().running
        kafka = broker.up()
        nodes = [
            NodeProcess(f"node-{i + 1}", args.base_port + i, kafka, extra, data_dir / "cluster")
            for i in range(args.nodes)
        ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(120)
        _announce(nodes, kafka)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored (`&`)
        while all(node.alive for node in nodes):
            time.sleep(0.5)
        print("a node exited; stopping the cluster (see logs in", nodes[0].log_dir, ")")
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...")
        return 0
    finally:
        for node in nodes:
            node.stop()
        if broker is not None and started_broker:
            broker.down()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _announce(nodes: list[NodeProcess], kafka: str) -> None:
    print()
    print(f"Kafka: {kafka}" if kafka != "none" else "Kafka: none (standalone)")
    for node in nodes:
        print(f"{node.node_id}: {node.url}   (log: {node.log_path})")
    first = nodes[0].url
    print()
    print("try:")
    print(f"  curl -i -X POST -H 'X-User-ID: alice' {first}/protected")
    print(f"  curl -s {nodes[-1].url}/v1/keys/alice")
    print(
        f"  curl -s -X POST {first}/v1/check -H 'content-type: application/json' "
        '-d \'{"key": "alice", "cost": 5}\''
    )
    print(f"  open {first}/docs")
    print()
    print("Ctrl-C stops the nodes (and the broker, if this command started it).")
