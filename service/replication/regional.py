"""Other regions' mirrored state topics read into this node: found, read to their end,
followed, each region's newest source stamp noted (its lag)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from service.clock import Clock, from_unix_ms, to_unix_ms
from service.engine import Engine
from service.errors import RateLimiterError
from service.metrics import Metrics
from service.regions import RegionTracker, region_of
from service.replication.remotelog import Position, RemoteLog, RemoteRecord
from service.replication.statelog import LogRecord

log = logging.getLogger("ratelimiter.regions")

DISCOVER_S = 2.0  # how often the cluster is looked at for new remote regions' topics
FETCH_MAX_RECORDS = 5000

Merge = Callable[[list[LogRecord]], Awaitable[None]]


class RegionFeed:
    """Reads `remote` and hands its records to `merge` (the replicator's, for remote
    records): never written, never used to measure the clock, never expired here.

    A topic found after bootstrap is read to its end as at start, the limiters in
    bootstrap mode meanwhile: its history merged live would count as late debt.
    """

    def __init__(
        self,
        remote: RemoteLog,
        regions: RegionTracker,
        engine: Engine,
        metrics: Metrics,
        clock: Clock,
        merge: Merge,
    ) -> None:
        self.remote = remote
        self.regions = regions
        self.engine = engine
        self.metrics = metrics
        self.clock = clock
        self._merge_records = merge
        self._catching_up: dict[Position, int] = {}
        self._next_discovery = 0.0

    async def bootstrap(self) -> int:
        """Read every remote topic found now to its end offsets (the limiters are in
        bootstrap mode: the caller's); returns records read."""
        remote = self.remote
        topics = await remote.discover()
        self._next_discovery = time.monotonic() + DISCOVER_S
        for topic in topics:
            self.regions.add_topic(topic, self.clock())
        ends = await remote.end_offsets(topics)
        count = 0
        while True:
            positions = await remote.positions(topics)
            if all(positions.get(tp, 0) >= end for tp, end in ends.items()):
                return count
            records = await remote.fetch(0.2, FETCH_MAX_RECORDS)
            count += len(records)
            await self.merge(records)

    async def follow(self) -> None:
        """Find, fetch and merge forever (a supervised task: a bug propagates; a broker
        error is waited out)."""
        remote = self.remote
        while True:
            try:
                if time.monotonic() >= self._next_discovery:
                    self._next_discovery = time.monotonic() + DISCOVER_S
                    await self._discover()
                if not remote.topics:
                    await asyncio.sleep(DISCOVER_S)
                    continue
                records = await remote.fetch(0.1, FETCH_MAX_RECORDS)
                if records:
                    await self.merge(records)
                if self._catching_up:
                    await self._check_caught_up()
            except (RateLimiterError, OSError) as exc:
                log.warning("reading the remote topics failed: %r", exc)
                await asyncio.sleep(0.5)

    async def merge(self, records: list[RemoteRecord]) -> None:
        """Merge records of mirrored topics, noting each region's newest source stamp."""
        by_region: dict[str, list[LogRecord]] = {}
        for topic, record in records:
            by_region.setdefault(region_of(topic), []).append(record)
        bootstrapping = self.engine.limiters_bootstrapping()
        now_ms = to_unix_ms(self.clock())
        for region, logged in by_region.items():
            newest = max(r.timestamp_ms for r in logged)
            self.regions.observe(region, from_unix_ms(newest), len(logged))
            if not bootstrapping:
                self.metrics.region_delivery.labels(region).observe(max(0, now_ms - newest) / 1000)
            await self._merge_records(logged)

    async def _discover(self) -> None:
        remote = self.remote
        topics = await remote.discover()
        if not topics:
            return
        ends = await remote.end_offsets(topics)
        positions = await remote.positions(topics)
        for tp, end in ends.items():
            if positions.get(tp, 0) < end:
                self._catching_up[tp] = end
        behind = {topic for topic, _ in self._catching_up}
        for topic in topics:
            self.regions.add_topic(topic, self.clock()).catching_up = topic in behind
        if self._catching_up and not self.engine.limiters_bootstrapping():
            self.engine.set_bootstrapping(True, self.clock())
        log.info("found remote topics %s: reading them to their end", topics)
        await self._check_caught_up()

    async def _check_caught_up(self) -> None:
        reading = {topic for topic, _ in self._catching_up}
        positions = await self.remote.positions(reading)
        for tp in [tp for tp, end in self._catching_up.items() if positions[tp] >= end]:
            del self._catching_up[tp]
        still = {topic for topic, _ in self._catching_up}
        for topic in reading - still:
            self.regions.add_topic(topic).catching_up = False
            log.info("remote topic %r read to its end", topic)
        if not self._catching_up and self.engine.limiters_bootstrapping():
            self.engine.set_bootstrapping(False, self.clock())
