"""`ratelimiter up`: the main job: a local Kafka broker and a 3-node cluster, ready to curl.

Without Java, one standalone node runs instead, and it says why. With `--regions R`: R
brokers (one per region), one MirrorMaker 2 mirroring every region to every other, and
`--nodes` nodes per region.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from service.errors import BrokerError
from service.local.broker import LocalBroker, default_data_dir
from service.local.mirror import LocalMirror
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
    parser.add_argument(
        "--regions",
        type=int,
        default=1,
        help="regions a, b, ...: a broker each (--kafka-port, +1, ...), MirrorMaker 2 between "
        "them, --nodes nodes each (ports --base-port, +100, ...) (default 1: no regions)",
    )
    parser.add_argument(
        "--region-fail-mode",
        choices=["local", "share"],
        default="local",
        help="with --regions: what nodes do while another region is stale (default local)",
    )


def run(args: argparse.Namespace) -> int:
    """Start everything, print where it is, serve until Ctrl-C, then stop what we started."""
    data_dir = args.data_dir or default_data_dir()
    extra = ["--rate", args.rate, "--burst", args.burst]
    if args.rules:
        extra += ["--rules", args.rules]
    if args.regions > 1:
        return _run_regions(args, data_dir, extra)
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


def region_names(count: int) -> list[str]:
    """a, b, c, ... (MirrorMaker's cluster aliases and the topics' prefixes)."""
    if not 2 <= count <= 26:
        raise BrokerError(f"--regions takes 2 to 26 regions, got {count}")
    return [chr(ord("a") + i) for i in range(count)]


def _run_regions(args: argparse.Namespace, data_dir: Path, extra: list[str]) -> int:
    """Brokers, MirrorMaker and nodes of every region; serve until Ctrl-C, then stop them."""
    names = region_names(args.regions)
    require_java()
    brokers = {
        name: LocalBroker(port=args.kafka_port + i, data_dir=data_dir / f"region-{name}")
        for i, name in enumerate(names)
    }
    started = [b for b in brokers.values() if not b.status().running]
    mirror = LocalMirror({n: b.address for n, b in brokers.items()}, data_dir / "mirror")
    mirror_started = False
    region_flags = ["--region-fail-mode", args.region_fail_mode]
    nodes: dict[str, list[NodeProcess]] = {}
    try:
        for broker in brokers.values():
            broker.up()
        for i, (name, broker) in enumerate(brokers.items()):
            nodes[name] = [
                NodeProcess(
                    f"{name}-{j + 1}",
                    args.base_port + 100 * i + j,
                    broker.address,
                    [*extra, "--region", name, *region_flags],
                    data_dir / "cluster",
                )
                for j in range(args.nodes)
            ]
        every = [node for region in nodes.values() for node in region]
        for node in every:
            node.start()  # they create the topics MirrorMaker mirrors
        mirror_started = not mirror.status().running
        print(f"mirroring {mirror.up()}")
        for node in every:
            node.wait_ready(120)
        _announce_regions(brokers, nodes, _regions_seen(every, len(names) - 1, timeout_s=60))
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        while all(node.alive for node in every):
            time.sleep(0.5)
        print("a node exited; stopping the regions (see logs in", data_dir / "cluster", ")")
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...")
        return 0
    finally:
        for region in nodes.values():
            for node in region:
                node.stop()
        if mirror_started:
            mirror.down()
        for broker in started:
            broker.down()


def _regions_seen(nodes: list[NodeProcess], others: int, timeout_s: float) -> dict[str, str]:
    """What each node says of the `others` other regions once every node has news from
    each of them (or at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = {node.node_id: _fetch_regions(node) for node in nodes}
        fresh = all(
            len(found) == others
            and all(v["state"] == "fresh" and v["lag_s"] is not None for v in found)
            for found in seen.values()
        )
        if fresh or time.monotonic() > deadline:
            return {
                node_id: ", ".join(
                    f"{v['region']} {v['state']} (lag {v['lag_s']} s)" for v in found
                )
                or "no other region yet"
                for node_id, found in seen.items()
            }
        time.sleep(0.5)


def _fetch_regions(node: NodeProcess) -> list[dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{node.url}/v1/regions", timeout=2) as response:  # noqa: S310
            found: list[dict[str, Any]] = json.load(response)["regions"]
            return found
    except (OSError, ValueError, KeyError):
        return []


def _announce_regions(
    brokers: dict[str, LocalBroker], nodes: dict[str, list[NodeProcess]], seen: dict[str, str]
) -> None:
    print()
    for name, broker in brokers.items():
        print(f"region {name}: Kafka {broker.address} (elsewhere: {name}.ratelimiter.state)")
        for node in nodes[name]:
            print(f"  {node.node_id}: {node.url}   sees {seen.get(node.node_id, '?')}")
            print(f"      log: {node.log_path}")
    first, other = (region[0].url for region in list(nodes.values())[:2])
    print()
    print("try:")
    print(
        "  for i in $(seq 25); do curl -s -o /dev/null -w '%{http_code} ' -X POST "
        f"-H 'X-User-ID: alice' {first}/protected; done"
    )
    print(f"  curl -s {other}/v1/keys/alice     # region b's view holds region a's consumption")
    print(f"  curl -s {other}/v1/regions        # each remote region's lag and freshness")
    print("  ratelimiter kafka mirror down --data-dir <data dir>/mirror   # cut the regions apart")
    print()
    print("Ctrl-C stops the nodes, MirrorMaker and the brokers this command started.")


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
