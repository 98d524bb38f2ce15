"""--replicas N on in-memory topics: nodes read only owned partitions, hand them over
make-before-break, read a taken-over partition's history, and route users to owners."""

from __future__ import annotations

import time
from typing import Any

from service.bootstrap import build_node
from service.clock import ORIGIN
from service.membership.ketama import Ring
from service.membership.rendezvous import owners
from service.node import Node
from service.replication.codec import partition_for_user
from service.settings import load_settings
from service.testing import MemoryLog, MemoryMembers, MemoryMembersLog, MemoryStateLog
from tests.service_helpers import wait_for

PARTITIONS = 6


def wall() -> float:
    return time.time() - ORIGIN


def replica_node(
    log: MemoryLog, members: MemoryMembers, node_id: str, replicas: int = 1, **more: Any
) -> Node:
    settings = load_settings(
        kafka="127.0.0.1:1",
        rules_topic="none",
        node_id=node_id,
        partitions=PARTITIONS,
        flush_ms=5,
        replicas=str(replicas),
        heartbeat_s=0.05,
        member_expiry_s=0.5,
        rate=1,
        burst=50,
        port=9000 + len(node_id),
        **more,
    )
    return build_node(
        settings, clock=wall, state_log=MemoryStateLog(log), members_log=MemoryMembersLog(members)
    )


def user_on(partition: int) -> str:
    return next(
        u for i in range(10_000) if partition_for_user(u := f"user-{i}", PARTITIONS) == partition
    )


def held(node: Node) -> frozenset[int]:
    assert node.replicator is not None
    return node.replicator.assigned or frozenset()


async def test_a_lone_node_reads_everything_and_a_joiner_takes_its_share() -> None:
    log, members = MemoryLog(PARTITIONS), MemoryMembers()
    a = replica_node(log, members, "a")
    await a.start()
    try:
        await a.wait_ready(5)
        assert held(a) == frozenset(range(PARTITIONS))
        users = [user_on(p) for p in range(PARTITIONS)]
        for user in users:
            for _ in range(3):
                assert a.decide(user, 1, a.rules.default).allowed
        b = replica_node(log, members, "b")
        await b.start()
        try:
            await b.wait_ready(5)
            mine = {p for p in range(PARTITIONS) if owners(p, ["a", "b"], 1) == ["b"]}
            assert mine, "rendezvous gives b some of six partitions"
            assert held(b) == mine
            # a lets go of b's partitions once b answers for them, not before.
            await wait_for(lambda: held(a) == frozenset(range(PARTITIONS)) - mine, 5, "handover")
            assert b.placement is not None
            assert a.placement is not None
            for p in mine:
                user = users[p]
                # b read the partition's history: a's admissions count there.
                assert b.engine.view(user, b.rules.default).consumed == 3
                assert b.placement.route(user) is None  # b answers itself
                route = a.placement.route(user)
                assert route is not None
                assert [m.node for m in route] == ["b"]
            for p in set(range(PARTITIONS)) - mine:
                route = b.placement.route(users[p])
                assert route is not None
                assert [m.node for m in route] == ["a"]
        finally:
            await b.stop()
        # b left (a tombstone): a takes its partitions back and reads what b wrote.
        await wait_for(lambda: held(a) == frozenset(range(PARTITIONS)), 5, "take-back")
        await wait_for(
            lambda: a.placement is not None and a.placement.ready == frozenset(range(PARTITIONS)),
            5,
            "a answers for every partition again",
        )
    finally:
        await a.stop()


async def test_a_crashed_owners_partitions_move_within_the_expiry_and_keep_its_admissions() -> None:
    log, members = MemoryLog(PARTITIONS), MemoryMembers()
    nodes = {n: replica_node(log, members, n, replicas=2) for n in ("a", "b", "c")}
    for node in nodes.values():
        await node.start()
    try:
        for node in nodes.values():
            await node.wait_ready(5)
        await wait_for(
            lambda: all(
                held(n) == frozenset(p for p in range(PARTITIONS) if i in owners(p, "abc", 2))
                for i, n in nodes.items()
            ),
            5,
            "each node reads only its partitions",
        )
        c = nodes["c"]
        assert c.placement is not None
        theirs = [p for p in range(PARTITIONS) if "c" in owners(p, "abc", 2)]
        users = [user_on(p) for p in theirs]
        for user in users:
            for _ in range(4):
                assert c.decide(user, 1, c.rules.default).allowed
        assert c.replicator is not None
        await c.replicator.flush()
        # A crash: the loops stop, nothing is said (no tombstone, no final flush).
        await c.supervisor.stop()
        started = time.monotonic()
        survivors = [nodes["a"], nodes["b"]]
        await wait_for(
            lambda: all(held(n) == frozenset(range(PARTITIONS)) for n in survivors),
            5,
            "the survivors read every partition",
        )
        await wait_for(
            lambda: all(
                n.placement is not None and n.placement.ready == frozenset(range(PARTITIONS))
                for n in survivors
            ),
            5,
            "and answer for them",
        )
        assert time.monotonic() - started < 0.5 + 1.0  # the expiry, and a little
        for node in survivors:
            for user in users:
                view = node.engine.view(user, node.rules.default)
                assert view.contributions.get(c.replica) == 4, (node.settings.node_id, user)
    finally:
        for node in nodes.values():
            await node.stop()


async def test_ring_placement_reads_the_ring_owners_and_forwards_to_nginx_pick_first() -> None:
    log, members = MemoryLog(PARTITIONS), MemoryMembers()
    ids = ("a", "b", "c", "d")
    nodes = {
        n: replica_node(log, members, n, replicas=2, placement="ring", advertise=f"{n}:8000")
        for n in ids
    }
    ring = Ring(f"{n}:8000" for n in ids)
    expected = {p: [s.split(":")[0] for s in ring.walk(str(p), 2)] for p in range(PARTITIONS)}
    for node in nodes.values():
        await node.start()
    try:
        for node in nodes.values():
            await node.wait_ready(5)
        await wait_for(
            lambda: all(
                held(node) == frozenset(p for p, o in expected.items() if n in o)
                and node.placement is not None
                and node.placement.ready == held(node)
                for n, node in nodes.items()
            ),
            5,
            "each node reads and answers for its partitions on the ring",
        )

        def routes(n: str, node: Node) -> list[list[str] | None]:
            assert node.placement is not None
            found = [node.placement.route(user_on(p)) for p in range(PARTITIONS)]
            return [None if r is None else [m.node for m in r] for r in found]

        # Owners answer themselves; any other node forwards to the owners in ring order,
        # nginx's pick first, for every user: one decider per user. (Until every member has
        # heard the others' handovers, a former holder may follow the owners.)
        wanted = {n: [None if n in owning else owning for owning in expected.values()] for n in ids}
        await wait_for(
            lambda: all(routes(n, node) == wanted[n] for n, node in nodes.items()),
            5,
            "every node routes each partition's users to its owners in ring order",
        )
    finally:
        for node in nodes.values():
            await node.stop()
