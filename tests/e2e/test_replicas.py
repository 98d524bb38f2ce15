"""--replicas 2 with six real node processes on a real broker: accuracy within the R-bound
with forwarding, a crashed owner's partitions moving with nothing admitted lost, a joining
node taking partitions without errors, and /v1/keys answered by an owner."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections import Counter

import httpx
import pytest

from crdt.bounds import admission_bound
from service.local.nodes import NodeProcess
from service.membership.rendezvous import owners
from service.replication.codec import partition_for_user
from stress_test.loadgen import Schedule, ideal_admitted
from tests.e2e.conftest import Spawn
from tests.e2e.http import wait_until

pytestmark = pytest.mark.e2e

# A bucket emptied by the load refills in BURST / RATE = 20 s: until then no node may
# forget a user (an idle, full bucket is deleted, its contributions with it), so every
# view can be compared with the admissions the client saw, across the kill as well.
RATE, BURST, PARTITIONS, REPLICAS, EXPIRY_S = 0.5, 10, 12, 2, 3.0
NODES = 6


def metric(client: httpx.Client, node: NodeProcess, name: str) -> float:
    text = client.get(f"{node.url}/metrics").text
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M):
        total += float(match.group(1))
    return total


def members_seen(client: httpx.Client, node: NodeProcess) -> int:
    try:
        return int(metric(client, node, "ratelimiter_members"))
    except httpx.HTTPError:
        return -1


def settled(client: httpx.Client, nodes: list[NodeProcess], users: list[str]) -> bool:
    """Every node sees the others and forwards every user it does not answer for."""
    if any(members_seen(client, n) != len(nodes) for n in nodes):
        return False
    for node in nodes:
        for user in users[:5]:
            response = client.get(f"{node.url}/v1/keys/{user}")
            if response.status_code != 200:
                return False
            answered = response.headers.get("x-ratelimiter-answered-by", node.node_id)
            if answered not in owners_of(user, [n.node_id for n in nodes]):
                return False
    return True


def owners_of(user: str, node_ids: list[str]) -> list[str]:
    return owners(partition_for_user(user, PARTITIONS), node_ids, REPLICAS)


def total(client: httpx.Client, node: NodeProcess, user: str) -> tuple[int, str]:
    response = client.get(f"{node.url}/v1/keys/{user}")
    response.raise_for_status()
    view = response.json()
    return sum(view["contributions"].values()), view["node"]


def test_replicas_two_of_six_nodes(spawn: Spawn, kafka_bootstrap: str, topic: str) -> None:
    args = (
        "--topic", topic, "--members-topic", f"{topic}.members",
        "--partitions", str(PARTITIONS), "--replicas", str(REPLICAS),
        "--heartbeat-s", "0.5", "--member-expiry-s", str(EXPIRY_S),
        "--rate", str(RATE), "--burst", str(BURST), "--forward-timeout-ms", "200",
    )  # fmt: skip
    # Started together, then awaited: six nodes start in about the time of one.
    nodes = [spawn(f"n{i}", kafka_bootstrap, *args, wait=False) for i in range(1, NODES + 1)]
    for node in nodes:
        node.wait_ready(90)
    users = [f"u-{uuid.uuid4().hex[:6]}-{i}" for i in range(24)]
    with httpx.Client(timeout=5) as client:
        wait_until(lambda: settled(client, nodes, users), 30, "the members agree")

        # 1. Round-robin load over the six nodes: (N-R)/N of requests are forwarded, and
        # the cluster admits within the bound with N replaced by R.
        seconds, per_user = 6.0, 8.0
        schedule = Schedule([n.port for n in nodes], users, per_user, seconds)
        results = asyncio.run(schedule.run())
        assert schedule.errors == 0
        assert Counter(r.status for r in results).keys() <= {200, 429}
        admitted = sum(r.status == 200 for r in results)
        ideal = ideal_admitted(results, RATE, BURST)
        span = max(r.sent for r in results) - min(r.sent for r in results)
        # With --replicas R the bound has R deciders, not N (sync delay bounded by 1 s).
        bound = len(users) * admission_bound(BURST, RATE, span, REPLICAS, 1.0)
        fwd = sum(
            metric(client, n, 'ratelimiter_forwarded_total{outcome="forwarded"}') for n in nodes
        )
        print(f"admitted={admitted} ideal={ideal} bound={bound:.0f} forwarded={fwd}/{len(results)}")
        assert admitted <= bound
        # Two owners decide for a user (a request landing on either is answered there): a
        # few more than one bucket would admit, well inside the bound (2 a user at most).
        assert ideal * 0.9 <= admitted <= ideal + 2 * len(users)
        share = (NODES - REPLICAS) / NODES  # 4/6 expected
        assert (share - 0.15) * len(results) <= fwd <= (share + 0.15) * len(results)

        # 2. /v1/keys on any node answers from an owner, with every admission counted.
        observed = Counter(r.user for r in results if r.status == 200)

        differs: list[str] = []  # the last view that did not match, for the failure

        def converged(live: list[NodeProcess]) -> bool:
            ids = [n.node_id for n in live]
            for user in users:
                for node in live:
                    count, answered = total(client, node, user)
                    if count != observed[user] or answered not in owners_of(user, ids):
                        differs[:] = [
                            f"{user} (partition {partition_for_user(user, PARTITIONS)}, owners "
                            f"{owners_of(user, ids)}) on {node.node_id}: {count} admissions "
                            f"from {answered}, {observed[user]} observed"
                        ]
                        return False
            return True

        wait_until(lambda: converged(nodes), 10, "every view equals the admissions observed")

        # 3. kill -9 an owner: its partitions move within the member expiry, and the new
        # owners read them: nothing admitted is lost.
        victim = nodes[0]
        victim.kill()
        live = nodes[1:]
        took = wait_until(
            lambda: all(members_seen(client, n) == len(live) for n in live), 2 * EXPIRY_S, "expiry"
        )
        assert took <= EXPIRY_S + 1.5
        try:
            wait_until(lambda: converged(live), 10, "the new owners hold every admission")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last difference: {differs}") from None

        # 4. A node joins under load: it takes partitions, and no request fails.
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=5) as loader:
                k = 0
                while not stop.is_set():
                    node = live[k % len(live)]
                    user = users[k % len(users)]
                    try:
                        statuses.append(
                            loader.post(
                                f"{node.url}/protected", headers={"X-User-ID": user}
                            ).status_code
                        )
                    except httpx.HTTPError:
                        statuses.append(0)
                    k += 1

        thread = threading.Thread(target=load)
        thread.start()
        try:
            joined = spawn(f"n{NODES + 1}", kafka_bootstrap, *args)
            everyone = [*live, joined]
            wait_until(lambda: settled(client, everyone, users), 30, "the new node settles")
        finally:
            stop.set()
            thread.join(30)
        assert statuses
        assert set(statuses) <= {200, 429}, Counter(statuses)
        ids = [n.node_id for n in everyone]
        assert any(joined.node_id in owners_of(user, ids) for user in users), (
            "the new node owns some users' partitions"
        )
