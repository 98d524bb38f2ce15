"""`ratelimiter demo`: the bucket at work, one ✓ or ✗ per request, on one node or a cluster."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson

from service.bootstrap import build_node
from service.errors import RateLimiterError
from service.local.broker import DEFAULT_PORT, LocalBroker, default_data_dir
from service.local.nodes import NodeProcess
from service.local.process import free_port
from service.settings import load_settings

ADMIT, DENY = "✓", "✗"
CLUSTER_RATE = 0.1
AGREE_TIMEOUT_S = 15.0


class DemoFailed(RateLimiterError):
    """The cluster did not agree in time."""

    exit_code = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ratelimiter demo`."""
    parser.add_argument("--users", default="alice", help="comma-separated ids (default alice)")
    parser.add_argument("--requests", type=int, default=30, help="requests per user (30)")
    parser.add_argument("--burst", type=int, default=20, help="bucket capacity (20)")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help=f"tokens per second (10 on one node, {CLUSTER_RATE:g} with --cluster: see below)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="3 node processes on a local broker; requests go round-robin, and each waits "
        "until every node has merged the previous admission (so the slow default rate: "
        "no refill while the demo runs)",
    )
    parser.add_argument("--nodes", type=int, default=3, help="nodes with --cluster (3)")
    parser.add_argument("--kafka", default=None, help="HOST:PORT (default: the local broker)")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print a line of marks per user, then the totals."""
    users = [u.strip() for u in args.users.split(",") if u.strip()]
    if args.cluster:
        rate = CLUSTER_RATE if args.rate is None else args.rate
        results = _cluster(args, users, rate)
    else:
        rate = 10.0 if args.rate is None else args.rate
        print(f"one node (standalone, in-process), limit {rate:g}/s, burst {args.burst}")
        print()
        results = asyncio.run(_single(users, args.requests, rate, args.burst))
    total = sum(len(marks) for marks in results.values())
    admitted = sum(marks.count(True) for marks in results.values())
    print(f"Total: {total} requests, {admitted} admitted, {total - admitted} denied")
    return 0


def _line(user: str, marks: list[bool]) -> None:
    print(f"{user}:")
    print("".join(ADMIT if ok else DENY for ok in marks))
    print(f"  Result: {marks.count(True)} allowed, {marks.count(False)} denied")


async def _single(
    users: list[str], requests: int, rate: float, burst: int
) -> dict[str, list[bool]]:
    node = build_node(load_settings(kafka="none", node_id="demo", rate=rate, burst=burst))
    results: dict[str, list[bool]] = {}
    async with node:
        rule = node.rules.default
        for user in users:
            # Back to back: 30 decisions take well under a millisecond, far less than the
            # 1/rate a refilled token needs, so the first `burst` pass and the rest do not.
            results[user] = [node.decide(user, 1, rule).allowed for _ in range(requests)]
            _line(user, results[user])
            view = node.engine.view(user, rule)
            print(f"  tokens left: {view.tokens:.1f} of {burst}, one more every {1 / rate:g} s")
            print()
    return results


def _http(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status), orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"null")


def _views(nodes: list[NodeProcess], user: str) -> list[dict[str, Any]]:
    return [_http("GET", f"{n.url}/v1/keys/{user}")[1] for n in nodes]


def _await_agreement(nodes: list[NodeProcess], user: str, consumed: int) -> None:
    deadline = time.monotonic() + AGREE_TIMEOUT_S
    while not all(v["consumed"] == consumed for v in _views(nodes, user)):
        if time.monotonic() > deadline:
            raise DemoFailed(f"the nodes did not agree on {user} within {AGREE_TIMEOUT_S:g}s")
        time.sleep(0.005)


def _cluster(args: argparse.Namespace, users: list[str], rate: float) -> dict[str, list[bool]]:
    broker: LocalBroker | None = None
    kafka = args.kafka
    started_broker = False
    if kafka is None:
        broker = LocalBroker(port=DEFAULT_PORT, data_dir=default_data_dir())
        started_broker = not broker.status().running
        kafka = broker.up()
    topic = f"demo.{uuid.uuid4().hex[:10]}"
    logs = Path(tempfile.mkdtemp(prefix="ratelimiter-demo-"))
    extra = ["--topic", topic, "--rate", f"{rate:g}", "--burst", str(args.burst)]
    extra += ["--log-level", "warning"]
    nodes = [
        NodeProcess(f"node-{i + 1}", free_port(), kafka, extra, logs) for i in range(args.nodes)
    ]
    results: dict[str, list[bool]] = {}
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(120)
        print(
            f"{len(nodes)} nodes on Kafka {kafka} (topic {topic}), limit {rate:g}/s, "
            f"burst {args.burst}; requests go round-robin over the nodes, each one after "
            "every node has merged the previous admission"
        )
        print()
        turn = 0
        for user in users:
            marks: list[bool] = []
            via = []
            for _ in range(args.requests):
                node = nodes[turn % len(nodes)]
                turn += 1
                status, _ = _http("POST", f"{node.url}/protected", {"X-User-ID": user})
                marks.append(status == 200)
                via.append(node.node_id.rsplit("-", 1)[-1])
                _await_agreement(nodes, user, marks.count(True))
            results[user] = marks
            _line(user, marks)
            print(f"  node  {''.join(via)}")
            print(f"  every node agrees on {user}:")
            for node, view in zip(nodes, _views(nodes, user), strict=True):
                parts = ", ".join(
                    f"{replica.split('/')[0]}: {cost}"
                    for replica, cost in sorted(view["contributions"].items())
                )
                print(
                    f"    {node.node_id}  consumed {view['consumed']}  "
                    f"tokens {max(view['tokens'], 0.0):.1f}  ({parts})"
                )
            print()
    finally:
        for node in nodes:
            node.stop()
        if broker is not None and started_broker:
            broker.down()
    return results
