"""This node in the cluster: announces itself on the members topic and follows everyone else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge

from service.errors import PoisonRecord, RateLimiterError
from service.membership.codec import Member, decode_member, encode_member
from service.membership.log import MemberRecord, MembersLog
from service.membership.roster import Roster
from service.metrics import Metrics

log = logging.getLogger("ratelimiter.members")

FETCH_S = 0.1
RETRY_S = 0.5

Signature = tuple[tuple[str, str, frozenset[int], str], ...]


class Membership:
    """Publishes this node's heartbeat every `heartbeat_s` (and at once when its ready
    partitions change), follows the members topic and tells `listeners` whenever the live
    members or what they answer for change. A graceful stop writes a tombstone (leave)."""

    def __init__(
        self,
        members_log: MembersLog,
        node: str,
        replica: str,
        address: str,
        metrics: Metrics,
        *,
        heartbeat_s: float,
        expiry_s: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.log = members_log
        self.node = node
        self.replica = replica
        self.address = address
        self.grpc_address = ""  # set_grpc_address, once the gRPC server listens
        self.heartbeat_s = heartbeat_s
        self.wall = wall
        self.roster = Roster(expiry_s)
        self.ready: frozenset[int] = frozenset()
        self.listeners: list[Callable[[], None]] = []
        self._poke = asyncio.Event()
        self._signature: Signature = ()
        self._started = False
        self._logged: set[str] = set()
        self.live_gauge = Gauge(
            "ratelimiter_members",
            "Live members of the cluster as this node sees them (itself included)",
            registry=metrics.registry,
        )
        self.live_gauge.set_function(lambda: float(len(self.live())))
        self.skipped = Counter(
            "ratelimiter_member_records_skipped",
            "Members topic records skipped as unusable, by kind",
            ["kind"],
            registry=metrics.registry,
        )

    def me(self) -> Member:
        """This node's own record, as announced now."""
        wall_ms = int(self.wall() * 1000)
        return Member(self.node, self.replica, self.address, wall_ms, self.ready, self.grpc_address)

    def live(self) -> dict[str, Member]:
        """The live members by node id, this node always among them."""
        members = self.roster.live(self.wall())
        members[self.node] = self.me()
        return members

    async def start(self, timeout_s: float) -> None:
        """Read the members topic to its end, then announce this node."""
        await self.log.start()
        self._started = True
        records = await self.log.read_to_end(timeout_s)
        self._handle(records, history=True)
        await self.announce()
        self._signature = self._sign()

    async def stop(self) -> None:
        """Leave (a tombstone, best effort: else peers expire this node) and disconnect."""
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(RateLimiterError, OSError, TimeoutError):
            await self.log.publish(self.node.encode(), None)
        await self.log.stop()

    def set_ready(self, partitions: frozenset[int]) -> None:
        """The partitions this node answers for now; announced at once when they change."""
        if partitions != self.ready:
            self.ready = partitions
            self._poke.set()
            self._notify()

    def set_grpc_address(self, address: str) -> None:
        """Where this node serves gRPC (host:port); announced at once."""
        if address != self.grpc_address:
            self.grpc_address = address
            self._poke.set()
            self._notify()

    async def announce(self) -> None:
        """Publish this node's heartbeat."""
        await self.log.publish(self.node.encode(), encode_member(self.me()))

    async def heartbeat_loop(self) -> None:
        """Announce every `heartbeat_s`, or sooner when poked (a supervised task)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_s):
                    await self._poke.wait()
            self._poke.clear()
            try:
                await self.announce()
            except (RateLimiterError, OSError) as exc:
                log.warning("heartbeat not published: %r", exc)

    async def follow_loop(self) -> None:
        """Apply heartbeats as they arrive and notice expiries (a supervised task)."""
        while True:
            try:
                records = await self.log.fetch(FETCH_S)
            except (RateLimiterError, OSError) as exc:
                log.warning("reading the members topic failed: %r", exc)
                await asyncio.sleep(RETRY_S)
                records = []
            if records:
                self._handle(records, history=False)
            self.roster.forget_expired(self.wall())
            self._notify()

    def _notify(self) -> None:
        signature = self._sign()
        if signature == self._signature:
            return
        before = {sign[0] for sign in self._signature}
        after = {sign[0] for sign in signature}
        if before != after:
            log.info("live members: %s", ", ".join(sorted(after)))
        self._signature = signature
        for listener in self.listeners:
            listener()

    def _sign(self) -> Signature:
        return tuple(sorted((m.node, m.address, m.ready, m.grpc) for m in self.live().values()))

    def _handle(self, records: Sequence[MemberRecord], *, history: bool) -> None:
        now = self.wall()
        for record in records:
            if record.key is None:
                self._skip("bad_key", "a member record without a key")
                continue
            node = record.key.decode("utf-8", "replace")
            if node == self.node:
                continue  # our own heartbeat (or an earlier incarnation's): we know better
            # Records read at start were heard when the broker stamped them; live ones now.
            at = min(now, record.timestamp_ms / 1000) if history else now
            if record.value is None:
                self.roster.record(node, None, at)
                continue
            try:
                member = decode_member(record.key, record.value)
            except PoisonRecord as exc:
                self._skip(exc.kind, str(exc))
                continue
            self.roster.record(node, member, at)

    def _skip(self, kind: str, message: str) -> None:
        self.skipped.labels(kind).inc()
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(
                "skipping a members record (%s): %s; further ones are counted", kind, message
            )
