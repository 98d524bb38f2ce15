"""A real nginx with deploy/nginx-replicated.conf (njs computes each user's Kafka partition,
a consistent hash on it) in front of four real nodes with --replicas 2 on the real broker.
With --placement ring the nodes own the partitions where nginx sends them: under 5% of
requests are forwarded. With rendezvous placement the same nginx lands on an owner for
about R/N of partitions: about (N-R)/N are forwarded."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest

from service.local.nodes import NodeProcess
from service.local.process import LOOPBACK, free_port
from service.membership.ketama import Ring, ring_owners
from service.membership.rendezvous import owners
from service.replication.codec import partition_for_user
from tests.e2e.conftest import Spawn
from tests.e2e.http import wait_until
from tests.nginx import replicated_conf, running

pytestmark = pytest.mark.e2e

NODES, REPLICAS, PARTITIONS, USERS = 4, 2, 48, 400


def forwarded(client: httpx.Client, nodes: list[NodeProcess]) -> dict[str, float]:
    """ratelimiter_forwarded_total by outcome, summed over the nodes."""
    sums: dict[str, float] = {}
    for node in nodes:
        text = client.get(f"{node.url}/metrics").text
        pattern = r'^ratelimiter_forwarded_total\{outcome="(\w+)"\} ([0-9.e+]+)$'
        for outcome, value in re.findall(pattern, text, re.M):
            sums[outcome] = sums.get(outcome, 0.0) + float(value)
    return sums


def members_seen(client: httpx.Client, nodes: list[NodeProcess], count: int) -> bool:
    """Every node of `nodes` sees `count` live members."""
    pattern = rf"^ratelimiter_members {count}(\.0)?$"
    return all(re.search(pattern, client.get(f"{n.url}/metrics").text, re.M) for n in nodes)


def settled(client: httpx.Client, nodes: list[NodeProcess], held: list[list[str]]) -> bool:
    """Every node sees every member and a user of each partition is answered by an owner."""
    if not members_seen(client, nodes, NODES):
        return False
    for p, owning in enumerate(held):
        user = next(u for i in range(10_000) if partition_for_user(u := f"p-{i}", PARTITIONS) == p)
        for node in nodes:
            response = client.get(f"{node.url}/v1/keys/{user}")
            answered = response.headers.get("x-ratelimiter-answered-by", node.node_id)
            if response.status_code != 200 or answered not in owning:
                return False
    return True


def load(
    client: httpx.Client, port: int, nodes: list[NodeProcess], users: list[str]
) -> tuple[dict[str, float], int]:
    """One POST /protected per user through nginx (each admitted); what the nodes counted
    in ratelimiter_forwarded_total meanwhile, and the answers that named another node."""
    before = forwarded(client, nodes)
    answered_by = 0
    for user in users:
        response = client.post(f"http://{LOOPBACK}:{port}/protected", headers={"X-User-ID": user})
        assert response.status_code == 200, response.text
        answered_by += "x-ratelimiter-answered-by" in response.headers
    after = forwarded(client, nodes)
    return {k: after[k] - before.get(k, 0.0) for k in after}, answered_by


@pytest.mark.parametrize("placement", ["ring", "rendezvous"])
def test_forwarded_share_behind_nginx_hashing_the_partition(
    spawn: Spawn, kafka_bootstrap: str, topic: str, tmp_path: Path, placement: str
) -> None:
    args = (
        "--topic", topic, "--members-topic", f"{topic}.members",
        "--partitions", str(PARTITIONS), "--replicas", str(REPLICAS), "--placement", placement,
        "--heartbeat-s", "0.5", "--member-expiry-s", "3", "--forward-timeout-ms", "200",
    )  # fmt: skip
    nodes = [spawn(f"n{i}", kafka_bootstrap, *args, wait=False) for i in range(1, NODES + 1)]
    for node in nodes:
        node.wait_ready(90)
    servers = {node.node_id: f"{LOOPBACK}:{node.port}" for node in nodes}  # = --advertise
    if placement == "ring":
        held = ring_owners(PARTITIONS, servers, REPLICAS)
    else:
        held = [owners(p, servers, REPLICAS) for p in range(PARTITIONS)]
    # Where nginx sends each partition's users: its pick on the ring of the server lines.
    ring = Ring(servers.values())
    node_at = {address: n for n, address in servers.items()}
    picked = [node_at[ring.pick(str(p))] for p in range(PARTITIONS)]
    port = free_port()
    (tmp_path / "nginx").mkdir()
    conf = replicated_conf(list(servers.values()), port, PARTITIONS)
    with (
        httpx.Client(timeout=5) as client,
        running(conf, tmp_path / "nginx", port, js=True),
    ):
        wait_until(lambda: settled(client, nodes, held), 60, "the members agree")
        users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(USERS)]
        delta, answered_by = load(client, port, nodes, users)
        if placement == "ring":
            # kill -9 a node: nginx passes on to the next server on its ring, the second
            # owner of the partitions it picked the victim for, which answers them itself,
            # before the victim expires and after (its partitions' new first owner).
            victim, survivors = nodes[0], nodes[1:]
            victim.kill()
            wait_until(lambda: not victim.alive, 10, "the victim is gone")
            for phase in ("before the victim expires", "after"):
                if phase == "after":
                    wait_until(lambda: members_seen(client, survivors, 3), 30, "it expires")
                moved = [f"k-{uuid.uuid4().hex[:8]}" for _ in range(USERS)]
                after_kill, _ = load(client, port, survivors, moved)
                print(f"kill -9 of {victim.node_id}, {phase}: forwarded {after_kill}")
                assert after_kill["forwarded"] < 0.05 * USERS
    share = delta["forwarded"] / USERS
    # What the placement predicts: a user is forwarded when nginx's pick is no owner.
    predicted = sum(
        picked[p] not in held[p] for p in (partition_for_user(u, PARTITIONS) for u in users)
    )
    print(
        f"placement={placement}: forwarded {delta['forwarded']:.0f}/{USERS} = {share:.3f} "
        f"(predicted {predicted / USERS:.3f}; (N-R)/N = {(NODES - REPLICAS) / NODES:.2f})"
    )
    assert delta["unreachable"] == delta["no_owner"] == 0
    assert answered_by == delta["forwarded"]  # every forward says who answered
    if placement == "ring":
        assert predicted == 0
        assert share < 0.05
    else:
        # The ring and rendezvous hashing choose independently: nginx's pick owns about
        # R/N of partitions, and every request of the others is forwarded.
        assert share > 0.15
        assert abs(delta["forwarded"] - predicted) <= 0.05 * USERS
