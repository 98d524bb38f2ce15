"""Which partitions this node reads and answers for (--replicas N), and where a user's
requests go when it does not: the owners of each partition are R live members, by
rendezvous hash (`--placement rendezvous`) or by nginx's consistent-hash ring over the
members' addresses (`--placement ring`)."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from typing import Literal

from service.membership.codec import Member
from service.membership.ketama import ring_owners
from service.membership.members import Membership
from service.membership.rendezvous import owners
from service.replication.replicator import Replicator

log = logging.getLogger("ratelimiter.placement")

PlacementMode = Literal["rendezvous", "ring"]


class Placement:
    """Keeps the replicator reading the partitions this node owns, and routes users.

    A partition changes hands make-before-break: a node keeps reading a partition it no
    longer owns until every new owner announces it read to its end, so some node answers
    for its users with their whole state at every moment (but for crashes).
    """

    def __init__(
        self,
        membership: Membership,
        replicator: Replicator,
        *,
        replicas: int,
        partitions: int,
        partition_of: Callable[[str], int],
        mode: PlacementMode = "rendezvous",
    ) -> None:
        self.membership = membership
        self.replicator = replicator
        self.replicas = replicas
        self.mode = mode
        self.partitions = partitions
        self.partition_of = partition_of
        self.me = membership.node
        self.live: dict[str, Member] = {}
        self._seen: frozenset[tuple[str, str]] = frozenset()
        self._owners: list[list[str]] = []
        self.ready: frozenset[int] = frozenset()
        self.active = False  # set once the initial partitions are assigned (Node._connect)
        membership.listeners.append(self.refresh)
        replicator.ready_listeners.append(self._ready_changed)
        self._update_live()

    def owners_of(self, partition: int) -> list[str]:
        """The owners of `partition` among the live members, first choice first."""
        return self._owners[partition]

    def owned(self) -> frozenset[int]:
        """The partitions this node owns now."""
        return frozenset(p for p, held in enumerate(self._owners) if self.me in held)

    def _update_live(self) -> None:
        self.live = self.membership.live()
        seen = frozenset((node, m.address) for node, m in self.live.items())
        if seen != self._seen or not self._owners:
            self._seen = seen
            if self.mode == "ring":
                addresses = {node: m.address for node, m in self.live.items()}
                self._owners = ring_owners(self.partitions, addresses, self.replicas)
            else:
                ids = frozenset(self.live)
                self._owners = [owners(p, ids, self.replicas) for p in range(self.partitions)]

    def refresh(self) -> None:
        """Recompute ownership (on every change of the live members or what they answer
        for); tell the replicator which partitions to read."""
        self._update_live()
        if not self.active:
            return
        owned = self.owned()
        held = self.replicator.assigned or frozenset()
        keep = {p for p in held - owned if not self._handed_over(p)}
        self.replicator.want(owned | keep)

    def _handed_over(self, partition: int) -> bool:
        live = self.live
        return all(
            node in live and partition in live[node].ready
            for node in self._owners[partition]
            if node != self.me
        )

    def _ready_changed(self) -> None:
        if self.active:
            self.announce_ready()

    def announce_ready(self) -> None:
        """Answer for the partitions read to their end, and tell the members."""
        self.ready = self.replicator.ready_partitions
        self.membership.set_ready(self.ready)

    def route(self, user: str) -> list[Member] | None:
        """None when this node answers for `user` itself; else the members to forward to,
        best first (possibly none: no member answers for the user's partition now)."""
        partition = self.partition_of(user)
        if partition in self.ready:
            return None
        live = self.live  # kept current by `refresh`
        first = [
            live[node]
            for node in self._owners[partition]
            if node != self.me and partition in live[node].ready
        ]
        if len(first) > 1 and self.mode == "rendezvous":
            # The same owner for the same user (while the owners stay): one decider per
            # user, so the R-bound is rarely approached; users spread over the owners.
            # (With the ring, the first owner is where the balancer sends the user.)
            turn = zlib.crc32(user.encode()) % len(first)
            first = first[turn:] + first[:turn]
        # Then members still answering for it while its new owners read it.
        held = [
            m
            for m in live.values()
            if m.node != self.me and partition in m.ready and m not in first
        ]
        return first + held

    def route_all(self, users: Sequence[str]) -> list[Member] | None:
        """Where a request deciding several users goes: None when this node answers for
        every one; else the members that answer for all of them, best first (the first
        user's order), empty when no member does (their partitions answer on different
        nodes, or one has no answering member now: `spans_owners` tells which)."""
        partitions = {self.partition_of(user) for user in users}
        if partitions <= self.ready:
            return None
        first = next(u for u in users if self.partition_of(u) not in self.ready)
        return [m for m in self.route(first) or () if partitions <= m.ready]

    def spans_owners(self, users: Sequence[str]) -> bool:
        """Every user has a node answering for it (this one or a member), but no single
        node answers for all of them."""
        for user in users:
            partition = self.partition_of(user)
            if partition not in self.ready and not any(
                partition in m.ready for m in self.live.values() if m.node != self.me
            ):
                return False
        return True
