"""Replication through the state topic: coalesced flushes out, peers' deltas in, bootstrap."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from crdt.delta import Delta, Entry
from service.clock import Clock, DisciplinedClock, Stamp, from_unix_ms, to_unix_ms
from service.engine import Engine
from service.errors import PoisonRecord, RateLimiterError
from service.metrics import Metrics
from service.regions import RegionTracker
from service.replication import codec, handoff, snapshot
from service.replication.regional import RegionFeed
from service.replication.remotelog import RemoteLog
from service.replication.silent import SilentWriters
from service.replication.statelog import LogRecord, OutRecord, PublishFailed, StateLog

log = logging.getLogger("ratelimiter.sync")

# Work on the event loop is cut into slices of about this long: a request that arrives
# meanwhile waits at most one slice (ratelimiter_event_loop_lag_seconds shows it).
SLICE_S = 0.001
MAX_ITEMS_PER_RECORD = 500  # one record's encoding stays within about a slice
FETCH_MAX_RECORDS = 5000
PEER_FORGET_S = 600.0  # a peer silent this long is forgotten (share mode, dashboard)
APPLY_CHUNK = 200  # deltas of one record merged between two yields
COLLECT_SLICE = 200  # changed keys moved into the buffer between two yields (~1 ms)
MIN_SNAPSHOT_SLICE = 256  # key records per flush at least, while a round is being written
MAX_BACKOFF_S = 2.0  # between publish attempts while the broker does not acknowledge
EXPIRE_SLICE = 1_000  # records of silent writers looked at per flush
PROBE_ATTEMPTS = 3  # clock probes at start before bootstrapping on the uncorrected clock
COMPACT_SLACK = 10_000  # outbox items beyond twice the pending keys before re-encoding
KEY_CAP = 2  # the buffer holds at most this many times --max-buffered-keys keys


class PeerSeen(NamedTuple):
    """The last delta merged from a peer replica."""

    at: float
    records: int


def _covers(entry: Entry, old: Entry) -> bool:
    """Entries of one epoch only grow: the larger one holds everything the smaller does."""
    return (entry.p, entry.n, entry.floor) >= (old.p, old.n, old.floor)


class Replicator:
    """Publishes this replica's consumption and merges everyone else's.

    Each flush sends one batch record per partition holding every key changed since the
    previous flush (absolute cells); every `snapshot_s` it also writes one compacted key
    record per (user, rule) changed since the previous snapshot, so compaction can drop
    old batches. Keys the broker has not acknowledged stay buffered (merged with later
    flushes) and are sent again: absolute values make resending harmless.
    """

    def __init__(
        self,
        engine: Engine,
        statelog: StateLog,
        metrics: Metrics,
        clock: Clock,
        partition_of: Callable[[str], int],
        *,
        flush_s: float,
        snapshot_s: float,
        max_buffered: int,
        discipline: DisciplinedClock | None = None,
        expire_after_s: float = PEER_FORGET_S,
        snapshot_file: Path | None = None,
        topic: str = "",
        remote: RemoteLog | None = None,
        regions: RegionTracker | None = None,
        heartbeat_s: float | None = None,
        bootstrap_from: Sequence[str] = (),
        admin_token: str = "",
    ) -> None:
        self.engine = engine
        # Told of every publish's round trip when the log stamps records (its clock).
        self.discipline = discipline
        self.log = statelog
        self.metrics = metrics
        self.clock = clock
        self.partition_of = partition_of
        self.flush_s = flush_s
        self.snapshot_s = snapshot_s
        self.max_buffered = max_buffered
        self.broker_ok = False
        self.last_ok_at = clock()  # cluster time the broker last acknowledged us
        self.peers: dict[str, PeerSeen] = {}
        self.folded_keys = 0
        self.shed_keys = 0  # left the buffer for a key record of their state (over the cap)
        self.dropped_keys = 0  # left it with nothing to write them from (evicted meanwhile)
        self._pending: dict[tuple[str, str], dict[int, Entry]] = {}
        self._unencoded: set[tuple[str, str]] = set()  # pending, not in the outbox yet
        self._outbox: list[OutRecord] = []  # encoded batch records not yet acknowledged
        self._outbox_items = 0
        self._backoff = 0.0
        self._retry_at = 0.0
        # Keys changed since their key record, by when: in this snapshot interval, and in
        # the one before (the next round writes those: see `_snapshot_slice`).
        self._snapshot_keys: set[tuple[str, str]] = set()
        self._aging: set[tuple[str, str]] = set()
        self._snapshot_since: dict[str, int] = {}
        self._round: list[tuple[str, str]] = []  # the snapshot round being written
        self._round_pos = 0
        self._round_step = MIN_SNAPSHOT_SLICE
        self._round_epochs: dict[str, int] = {}
        self._next_round = time.monotonic() + snapshot_s
        self._last_flush_ms = to_unix_ms(clock())
        # Our own records end (key records) or contain (batch records) these bytes.
        self._own_key_end = (codec.SEP + engine.replica).encode()
        self._own_batch = (codec.SEP + engine.replica + codec.SEP).encode()
        metrics.buffer_limit.set(max_buffered)
        # The topic stays the size of the live state: our key records of keys deleted as
        # idle are tombstoned, and so are the records of writers silent for
        # `expire_after_s` (found at bootstrap) once their keys are idle here.
        self.expire_after_s = expire_after_s
        self._written: set[tuple[str, str]] = set()  # (rule, user) with a key record of ours
        self._tombstones: dict[bytes, int] = {}  # record key -> partition, to publish
        self._silent = SilentWriters(engine.replica)
        self.tombstones_written = 0
        self.idle_skipped = 0  # key records not written: the key was idle by its round
        engine.track_deletions()
        # A local snapshot file (--state-dir): loaded at bootstrap, written at stop.
        self.snapshot_file = snapshot_file
        self.topic = topic
        self.merged_offsets: dict[int, int] = {}  # per partition: every record before merged
        self.snapshot_keys_loaded = 0
        # Peers (base URLs) asked for their state at bootstrap when no file was loaded.
        self.bootstrap_from = tuple(bootstrap_from)
        self.admin_token = admin_token
        self._peers_asked = False
        # Partition-affine consumption (--replicas N): the partitions read (None: all), the
        # ones wanted next (applied between two fetches), and those being read to the end
        # offset taken when they were assigned (no answers for their users meanwhile).
        self.assigned: frozenset[int] | None = None
        self._wanted: frozenset[int] | None = None
        self._catching_up: dict[int, int] = {}
        self.ready_listeners: list[Callable[[], None]] = []  # told when ready_partitions change
        # Regions (--region): other regions' mirrored topics, merged like local peers'
        # records (`region_feed.follow`); `regions` follows their lag. With `heartbeat_s`,
        # a flush with nothing to say publishes an empty record once that long passed
        # since the last publish.
        self.remote = remote
        self.regions = regions if regions is not None else RegionTracker(math.inf)
        self.region_feed = (
            None
            if remote is None
            else RegionFeed(
                remote, self.regions, engine, metrics, clock, partial(self._merge, remote=True)
            )
        )
        self.heartbeat_s = heartbeat_s
        self._last_publish = clock()  # cluster time of the last acknowledged publish

    # -- lifecycle -------------------------------------------------------------

    async def bootstrap(self, timeout_s: float) -> int:
        """Read every partition to the end offsets taken now (from the offsets of the
        snapshot file or of a peer's state, when one was loaded); returns records read."""
        started = time.monotonic()
        # First the clock: every state below (epochs, seal points) follows it.
        await self._probe_clock()
        self.engine.set_bootstrapping(True, self.clock())
        loaded = self.snapshot_file is not None and await self._load_snapshot(self.snapshot_file)
        if not loaded and self.bootstrap_from and not self._peers_asked:
            # Once only: a bootstrap started again (the connect task restarted after a
            # broker error) reads on from where the first stopped, which its state
            # covers; a later peer's offsets would skip records its keys lack.
            self._peers_asked = True
            await self._load_from_peers(timeout_s / 2)  # the rest is left to read the topic
        ends = await self.log.end_offsets()
        count = 0
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    positions = await self.log.positions()
                    if all(positions.get(p, 0) >= end for p, end in ends.items()):
                        break
                    records = await self.log.fetch(0.2, FETCH_MAX_RECORDS)
                    count += len(records)
                    await self._merge(records)
                if self.region_feed is not None:
                    count += await self.region_feed.bootstrap()
        finally:
            self.engine.set_bootstrapping(False, self.clock())
        self._note_silent_writers()
        self.broker_ok = True
        self.metrics.bootstrap_seconds.set(time.monotonic() - started)
        self.metrics.bootstrap_records.set(count)
        log.info("bootstrapped from %d records in %.2fs", count, time.monotonic() - started)
        return count

    def _note_silent_writers(self) -> None:
        """After reading history: writers seen writing lately are not silent after all."""
        self._silent.history_read()
        if self._silent:
            log.info(
                "%d writers silent for over %.0fs left %d records: tombstoned once idle",
                len(self._silent),
                self.expire_after_s,
                self._silent.records(),
            )

    # -- partitions (--replicas N) -----------------------------------------------

    @property
    def ready_partitions(self) -> frozenset[int]:
        """Partitions read and merged to (near) their end: this node answers for their users."""
        if self.assigned is None:
            return frozenset(range(self.log.partitions))
        return self.assigned - self._catching_up.keys()

    async def assign(self, partitions: frozenset[int]) -> None:
        """Read only `partitions` (before `bootstrap`, which reads them to their end)."""
        await self.log.assign(partitions)
        self.assigned = self._wanted = frozenset(partitions)

    def want(self, partitions: frozenset[int]) -> None:
        """Read these partitions from the next fetch on: new ones are read to their end
        (bootstrap mode) before they count as ready; dropped ones are no longer merged, and
        their keys are deleted by the sweep once idle (which never changes a decision)."""
        self._wanted = frozenset(partitions)

    async def _reassign(self) -> None:
        wanted, held = self._wanted, self.assigned
        if wanted is None or held is None or wanted == held:
            return
        added, dropped = wanted - held, held - wanted
        await self.log.assign(wanted)
        self.assigned = wanted
        for p in dropped:
            self._catching_up.pop(p, None)
            self.merged_offsets.pop(p, None)
        if added:
            ends = await self.log.end_offsets()
            positions = await self.log.positions()
            for p in added:
                if positions.get(p, 0) < ends.get(p, 0):
                    self._catching_up[p] = ends[p]
            if self._catching_up and not self.engine.limiters_bootstrapping():
                # History of a partition merged live would count as late debt: merge it as
                # at start (every partition read meanwhile is merged the same way).
                self.engine.set_bootstrapping(True, self.clock())
        log.info(
            "partitions now read: %s (added %s, dropped %s, reading to the end: %s)",
            sorted(wanted),
            sorted(added),
            sorted(dropped),
            sorted(self._catching_up),
        )
        self._ready_changed()

    async def _check_caught_up(self) -> None:
        positions = await self.log.positions()
        done = [p for p, end in self._catching_up.items() if positions.get(p, 0) >= end]
        if not done:
            return
        for p in done:
            del self._catching_up[p]
        if not self._catching_up:
            self.engine.set_bootstrapping(False, self.clock())
            self._note_silent_writers()
        log.info("partitions %s read to their end: answering for their users", sorted(done))
        self._ready_changed()

    def _ready_changed(self) -> None:
        for listener in self.ready_listeners:
            listener()

    async def _load_snapshot(self, path: Path) -> bool:
        """Load the state of the last graceful stop, then read the topic from its offsets;
        False when there is no usable file (a damaged chunk: the keys loaded before it
        stay, real consumption, and the whole topic is read)."""
        started = time.monotonic()
        found = snapshot.read_snapshot(path, self.topic, self.log.partitions)
        if found is None:
            return False
        try:
            keys = snapshot.load_snapshot(found, self.engine)
        except snapshot.SnapshotDamaged as exc:
            log.warning(
                "snapshot %s: %s; %d keys loaded, reading the whole topic", path, exc, exc.loaded
            )
            self.metrics.bootstrap_keys_loaded.labels(source="file").set(exc.loaded)
            # A peer's state skips keys held already, and its offsets need not cover
            # what these lack: with keys loaded, only the whole topic is safe.
            self._peers_asked = self._peers_asked or exc.loaded > 0
            return False
        await self._start_from("file", str(path), keys, found.offsets, started)
        return True

    async def _start_from(
        self, source: str, where: str, keys: int, offsets: dict[int, int], started: float
    ) -> None:
        """Read the topic on from `offsets`, which the `keys` just loaded cover."""
        self.snapshot_keys_loaded = keys
        self.metrics.bootstrap_keys_loaded.labels(source=source).set(keys)
        await self.log.seek(offsets)
        self.merged_offsets = dict(offsets)
        log.info(
            "loaded %d keys from %s in %.2fs; reading the topic from its offsets",
            keys,
            where,
            time.monotonic() - started,
        )

    async def _load_from_peers(self, timeout_s: float) -> None:
        """Load a live peer's state (the first of `bootstrap_from` to hand it over), then
        read the topic from the offsets it covers. A peer that refuses, or fails before
        anything is loaded, passes the turn to the next; one that fails after keys were
        loaded ends the handoff: those keys stay (real consumption) and the whole topic is
        read, as another peer's offsets need not cover them."""
        handoffs = self.metrics.handoffs
        for peer in self.bootstrap_from:
            started = time.monotonic()
            try:
                got = await handoff.load_from_peer(
                    peer,
                    self.admin_token,
                    self.engine,
                    self.topic,
                    self.log.partitions,
                    timeout_s,
                )
            except handoff.HandoffError as exc:
                if not exc.loaded:
                    handoffs.labels(outcome="refused").inc()
                    log.warning("bootstrap: %s handed over no state: %s", peer, exc)
                    continue
                handoffs.labels(outcome="cut").inc()
                log.warning(
                    "bootstrap: the state of %s failed after %d keys (kept): %s; reading the "
                    "whole topic",
                    peer,
                    exc.loaded,
                    exc,
                )
                return
            handoffs.labels(outcome="loaded").inc()
            where = f"{peer} (replica {got.writer})"
            await self._start_from("peer", where, got.keys, got.offsets, started)
            return
        log.warning("bootstrap: no peer handed over its state; reading the whole topic")

    def write_snapshot(self) -> None:
        """Write the state and the offsets it covers to the snapshot file (at stop)."""
        if self.snapshot_file is None:
            return
        started = time.monotonic()
        keys = snapshot.write_snapshot(
            self.snapshot_file, self.engine, self.topic, self.log.partitions, self.merged_offsets
        )
        log.info(
            "wrote %d keys to %s in %.2fs", keys, self.snapshot_file, time.monotonic() - started
        )

    async def _probe_clock(self) -> None:
        """Measure the clock against the broker before deciding: publish an empty batch
        record (peers read it as nothing) and take its round trip."""
        if self.discipline is None or not self.log.stamps:
            return
        for attempt in range(PROBE_ATTEMPTS):
            record = self._empty_record(to_unix_ms(self.clock()))
            try:
                await self._publish([record])
                return
            except PublishFailed as exc:
                log.warning("could not measure the clock against the broker yet: %s", exc)
                await asyncio.sleep(0.5 * (attempt + 1))

    def _empty_record(self, now_ms: int) -> OutRecord:
        """A batch record holding nothing (peers read it as nothing): a clock probe, and
        with regions a heartbeat. Under our partition 0 batch key, superseding our last
        batch there as any later batch would (key records cover batches first)."""
        value = codec.encode_batch(self.engine.replica, [], now_ms, now_ms)
        return OutRecord(codec.batch_record_key(self.engine.replica, 0), value, 0)

    async def _publish(self, records: list[OutRecord]) -> None:
        """Publish, and tell the clock discipline the round trip when the broker stamped it."""
        sent = self.clock()
        stamped = await self.log.publish(records)
        self._last_publish = self.clock()
        if stamped is not None and self.discipline is not None:
            self.discipline.observe(Stamp(sent, from_unix_ms(stamped), self.clock()))

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Publish everything admitted so far (best effort, bounded); the loops were
        stopped first by whoever runs them."""
        try:
            async with asyncio.timeout(drain_timeout_s):
                await self.flush(final=True)
                # Again: key records of the keys that only the final batch holds, so this
                # writer's state is all in key records once it is gone.
                await self.flush(final=True)
        except TimeoutError:
            log.error("shutdown: %d keys could not be published", len(self._pending))
        if self.snapshot_file is None:
            return
        try:
            # Read to the end first (our own final records, mostly, skipped undecoded), so
            # the snapshot's offsets cover them and a restart does not read them again.
            async with asyncio.timeout(drain_timeout_s):
                await self._read_to_end()
        except (TimeoutError, RateLimiterError, OSError) as exc:
            log.warning("shutdown: the snapshot covers less of the topic: %r", exc)
        try:
            self.write_snapshot()
        except OSError as exc:
            log.error("shutdown: the snapshot file could not be written: %s", exc)

    async def _read_to_end(self) -> None:
        ends = await self.log.end_offsets()
        while True:
            positions = await self.log.positions()
            if all(positions.get(p, 0) >= end for p, end in ends.items()):
                return
            records = await self.log.fetch(0.2, FETCH_MAX_RECORDS)
            if records:
                await self._merge(records)

    # -- out -------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Keys waiting for the broker's acknowledgement."""
        return len(self._pending)

    async def _collect(self, now: float, final: bool = False) -> None:
        """Move the engine's changed keys into the buffer, a slice of keys at a time:
        while a publish waits on an unreachable broker (up to --publish-timeout-ms), tens
        of thousands of keys change, and building all their deltas at once held the event
        loop 160 ms (BENCHMARKS.md). `final` takes every key."""
        slices = 1 if final else self.engine.dirty_count() // COLLECT_SLICE + 1
        for i in range(slices):
            if i:
                await asyncio.sleep(0)
            items = self.engine.flush(now, None if final else COLLECT_SLICE)
            self._buffer(items)
            if len(items) < COLLECT_SLICE:
                break
        excess = len(self._pending) - KEY_CAP * self.max_buffered
        if excess > 0:
            self._shed(excess)
        self.metrics.buffered.set(len(self._pending))

    def _buffer(self, items: list[tuple[str, Delta]]) -> None:
        pending, unencoded = self._pending, self._unencoded
        for rule, delta in items:
            slot = (rule, delta.key)
            unencoded.add(slot)
            entries = pending.get(slot)
            if entries is None:  # the common case: a key not buffered yet
                entries = pending[slot] = {e.epoch: e for e in delta.entries}
            else:
                for entry in delta.entries:
                    old = entries.get(entry.epoch)
                    if old is None or _covers(entry, old):
                        entries[entry.epoch] = entry
            if len(entries) > 1 and len(pending) > self.max_buffered:
                # Over the bound: keep only the newest entry; its cascaded floor carries
                # the older epochs' consumption, so nothing admitted is forgotten.
                newest = max(entries)
                self._pending[slot] = {newest: entries[newest]}
                self.folded_keys += 1

    def _shed(self, count: int) -> None:
        """Cap the buffer in keys: the `count` oldest buffered keys leave it. A key its
        limiter still holds is written as a key record from that state once the broker
        answers (its cascaded floor carries what it consumed); a key no longer held (evicted
        by --max-keys) cannot be, and is dropped: counted, and logged once."""
        limiters = self.engine.limiters
        dropped = 0
        for slot in list(itertools.islice(self._pending, count)):
            del self._pending[slot]
            self._unencoded.discard(slot)
            rule, key = slot
            limiter = limiters.get(rule)
            if limiter is not None and key in limiter:
                self._aging.add(slot)  # written by the next round
                self.shed_keys += 1
            else:
                dropped += 1
        if dropped and not self.dropped_keys:
            log.error(
                "the outage buffer is over %d keys and %d evicted keys had to be dropped; "
                "raise --max-buffered-keys or --max-keys",
                KEY_CAP * self.max_buffered,
                dropped,
            )
        self.dropped_keys += dropped

    async def _encode_batches(self, slots: list[tuple[str, str]], now_ms: int) -> None:
        """Encode the pending entries of `slots` into batch records added to the outbox,
        yielding to the event loop after every slice of work."""
        # Rows as the batch record holds them, [rule, user, [[epoch, floor, p, n], ...]],
        # built straight from the buffered entries (an Entry lists as such a row).
        by_partition: dict[int, list[list[Any]]] = {}
        replica = self.engine.replica
        pending, partition_of = self._pending, self.partition_of
        deadline = time.perf_counter() + SLICE_S
        for slot in slots:
            entries = pending.get(slot)
            if entries is None:
                continue
            rule, key = slot
            if len(entries) == 1:  # most keys; skipping the sort saves 1.4k instructions a key
                rows = [list(entry) for entry in entries.values()]
            else:
                rows = [list(entries[e]) for e in sorted(entries)]
            by_partition.setdefault(partition_of(key), []).append([rule, key, rows])
            if time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + SLICE_S
        since_ms = self._last_flush_ms
        for partition, items in by_partition.items():
            record_key = codec.batch_record_key(replica, partition)
            for i in range(0, len(items), MAX_ITEMS_PER_RECORD):
                chunk = items[i : i + MAX_ITEMS_PER_RECORD]
                value = codec.encode_batch_rows(replica, chunk, since_ms, now_ms)
                self._outbox.append(OutRecord(record_key, value, partition))
                self._outbox_items += len(chunk)
                if time.perf_counter() >= deadline:
                    await asyncio.sleep(0)
                    deadline = time.perf_counter() + SLICE_S

    async def _key_records(
        self, slots: list[tuple[str, str]], now: float, now_ms: int
    ) -> list[OutRecord]:
        """Key records (each writer's whole state for a user and rule) for `slots`, but
        for idle keys: forgetting those changes no decision, so no reader needs them."""
        out = []
        replica = self.engine.replica
        limiters = self.engine.limiters
        deadline = time.perf_counter() + SLICE_S
        for rule, key in slots:
            limiter = limiters.get(rule)
            if limiter is None or limiter.idle(key, now):
                if limiter is not None:
                    self.idle_skipped += 1
                continue
            delta = limiter.delta_for(key, self._snapshot_since.get(rule, -(2**62)))
            if delta is not None:
                out.append(
                    OutRecord(
                        codec.key_record_key(rule, key, replica),
                        codec.encode_key_record(rule, delta, now_ms),
                        self.partition_of(key),
                    )
                )
            if time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + SLICE_S
        return out

    def _snapshot_slice(self, final: bool) -> list[tuple[str, str]]:
        """The key records due now: snapshots are written in rounds, each spread over the
        flushes of half a snapshot interval, so no flush writes every key at once.

        A round writes the keys changed in the interval before the last one: by then most
        keys of users seen once are idle and need no record (nor a tombstone later), and the
        batches holding them stay on the topic meanwhile (2.5 intervals at most, within
        the topic's min.compaction.lag.ms)."""
        if not self._round and (final or time.monotonic() >= self._next_round):
            self._round = list(self._aging)
            self._aging = self._snapshot_keys
            self._snapshot_keys = set()
            self._round_pos = 0
            self._round_epochs = {n: lim.current_epoch for n, lim in self.engine.limiters.items()}
            self._next_round = time.monotonic() + self.snapshot_s
            flushes = max(1.0, self.snapshot_s / self.flush_s / 2)
            self._round_step = max(MIN_SNAPSHOT_SLICE, math.ceil(len(self._round) / flushes))
        if final:
            return [*self._round[self._round_pos :], *self._aging, *self._snapshot_keys]
        return self._round[self._round_pos : self._round_pos + self._round_step]

    def _snapshot_written(self, count: int, final: bool) -> None:
        self._round_pos += count
        if final or self._round_pos >= len(self._round):
            self._round = []
            self._round_pos = 0
            self._snapshot_since = self._round_epochs
            if final:
                self._aging.clear()
                self._snapshot_keys.clear()

    async def flush(self, *, final: bool = False) -> None:
        """Publish what changed since the last flush (batch records) and the snapshot slice
        due; `final` publishes every pending key and snapshot at once (at stop).

        After a failed publish nothing is encoded or sent until the backoff ends; what
        was encoded stays in the outbox and is sent again as it is (absolute values).
        """
        now = self.clock()
        await self._collect(now, final)
        if self.peers:
            self.forget_peers(now)
        now_ms = to_unix_ms(now)
        if not final and time.monotonic() < self._retry_at:
            return
        if self._outbox_items > 2 * len(self._pending) + COMPACT_SLACK:
            # Keys changed in many failed flushes are in the outbox many times: encode
            # each once more, from the merged pending entries.
            self._outbox, self._outbox_items = [], 0
            self._unencoded.update(self._pending)
            self.metrics.outbox_compactions.inc()
        fresh = list(self._unencoded)
        self._unencoded.clear()
        await self._encode_batches(fresh, now_ms)
        snapshot_slots = self._snapshot_slice(final)
        key_records = await self._key_records(snapshot_slots, now, now_ms)
        self._own_tombstones()
        if self._silent:
            self._expire_slice()
        tombstones = [OutRecord(k, None, p) for k, p in self._tombstones.items()]
        batches = list(self._outbox)
        heartbeat: list[OutRecord] = []
        if not batches and not key_records and not tombstones:
            if self.heartbeat_s is None or now - self._last_publish < self.heartbeat_s:
                self._snapshot_written(0, final)
                self._last_flush_ms = now_ms
                return
            # Nothing to say, but other regions judge this one alive by its records.
            heartbeat = [self._empty_record(now_ms)]
        sent = dict(self._pending)
        try:
            await self._publish(batches + key_records + tombstones + heartbeat)
        except PublishFailed as exc:
            if self.broker_ok:
                log.warning("publish failed, buffering %d keys: %s", len(self._pending), exc)
            else:
                log.debug("publish failed again: %s", exc)
            self._backoff = min(MAX_BACKOFF_S, max(self.flush_s, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            self.broker_ok = False
            self.metrics.broker_up.set(0)
            self.metrics.publish_failures.inc()
            return
        if not self.broker_ok:
            log.info("broker reachable again; published %d buffered keys", len(sent))
        self._backoff = 0.0
        self._retry_at = 0.0
        self.broker_ok = True
        self.last_ok_at = now
        self.metrics.broker_up.set(1)
        self._last_flush_ms = now_ms
        self._outbox.clear()
        self._outbox_items = 0
        for slot, entries in sent.items():
            if self._pending.get(slot) is entries:
                del self._pending[slot]
        self._snapshot_written(len(snapshot_slots), final)
        self._snapshot_keys.update(sent)  # after: a final flush clears what it wrote
        for record in key_records:
            rule, user = _rule_user(record.key)
            self._written.add((rule, user))
        for record in tombstones:
            del self._tombstones[record.key]
        self.tombstones_written += len(tombstones)
        self.metrics.records_produced.labels("tombstone").inc(len(tombstones))
        self.metrics.records_produced.labels("batch").inc(len(batches))
        self.metrics.records_produced.labels("key").inc(len(key_records))
        self.metrics.records_produced.labels("heartbeat").inc(len(heartbeat))
        self.metrics.buffered.set(len(self._pending))

    def _own_tombstones(self) -> None:
        """Tombstone our key records of keys deleted as idle (a full bucket needs none)."""
        me = self.engine.replica
        written = self._written
        for slot in self.engine.deleted_keys():
            if slot in written:
                written.discard(slot)
                rule, user = slot
                self._tombstones[codec.key_record_key(rule, user, me)] = self.partition_of(user)

    def _expire_slice(self) -> None:
        """Tombstone records of silent writers, a slice per flush, once every key they hold
        is settled here (their epochs sealed and the bucket full now: deleting them changes
        no decision, even while the user is active)."""
        limiters = self.engine.limiters
        now = self.clock()

        def settled(rule: str, user: str, written: float) -> bool:
            limiter = limiters.get(rule)
            return limiter is None or limiter.settled(user, written, now)

        self._tombstones.update(self._silent.expire(EXPIRE_SLICE, settled))

    async def flush_loop(self) -> None:
        """Flush every `flush_s` (run it as a supervised task: a bug propagates)."""
        while True:
            started = time.monotonic()
            await self.flush()
            await asyncio.sleep(max(0.0, self.flush_s - (time.monotonic() - started)))

    def alive_peers(self, timeout_s: float) -> int:
        """Peer replicas that wrote within `timeout_s` before the broker was last reachable."""
        since = self.last_ok_at - timeout_s
        return sum(1 for seen in self.peers.values() if seen.at >= since)

    def forget_peers(self, now: float) -> None:
        """Drop peers silent for PEER_FORGET_S (incarnations of past deploys)."""
        silent = [r for r, seen in self.peers.items() if seen.at < now - PEER_FORGET_S]
        for replica in silent:
            del self.peers[replica]

    # -- in --------------------------------------------------------------------

    async def consume_loop(self) -> None:
        """Fetch and merge peers' records forever (a supervised task: a bug propagates;
        a broker error is waited out)."""
        while True:
            try:
                await self._reassign()
                records = await self.log.fetch(0.1, FETCH_MAX_RECORDS)
            except (RateLimiterError, OSError) as exc:
                log.warning("fetch failed: %r", exc)
                await asyncio.sleep(0.5)
                continue
            if records:
                await self._merge(records)
            if self._catching_up:
                await self._check_caught_up()

    async def _merge(self, records: list[LogRecord], *, remote: bool = False) -> None:
        """Decode and merge peers' records, yielding to the event loop every slice.

        `remote`: records of another region's mirrored topic. They count like any peer's,
        but their offsets are not ours, their writers are not ours to expire, and they do
        not make local peers (share mode counts those)."""
        now = self.clock()
        now_ms = to_unix_ms(now)
        me = self.engine.replica
        metrics = self.metrics
        metrics.records_consumed.inc(len(records))
        merged_offsets = self.merged_offsets
        reached: dict[int, int] = {}
        if not remote:
            for record in records:
                if record.offset >= reached.get(record.partition, -1):
                    reached[record.partition] = record.offset
        bootstrapping = self.engine.limiters_bootstrapping()
        if bootstrapping:
            records = _latest_key_records(records)
            if self.log.stamps and not remote:  # the broker's times: silence is measurable
                threshold_ms = now_ms - int(self.expire_after_s * 1000)
                for record in records:
                    self._silent.note(record, threshold_ms)
        own_key_end = self._own_key_end
        own_batch = self._own_batch
        applied = 0
        deadline = time.perf_counter() + SLICE_S
        for record in records:
            if time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + SLICE_S
                now = self.clock()
                now_ms = to_unix_ms(now)
            key = record.key
            if key is not None and (key.endswith(own_key_end) or own_batch in key):
                continue  # our own record, read back: skipped before paying for decoding
            try:
                decoded = codec.decode(record.value)
                for kind, message in decoded.skipped:
                    metrics.poison_record(kind, f"a batch item skipped: {message}")
                if not decoded.items:
                    continue
                replica = decoded.items[0][1].replica
                if replica == me:
                    continue
                _check_key(record.key, decoded)
            except PoisonRecord as exc:
                metrics.poison_record(exc.kind, str(exc))
                continue
            items = decoded.items
            unknown = 0
            for i in range(0, len(items), APPLY_CHUNK):
                if i:
                    await asyncio.sleep(0)  # a big batch record: merge it in slices too
                    now = self.clock()
                unknown += self.engine.apply(items[i : i + APPLY_CHUNK], now)
            if unknown:
                metrics.poison_record("unknown_rule", f"{unknown} deltas name an unknown rule")
            applied += len(decoded.items)
            if not bootstrapping and not remote:
                if self._silent:
                    self._silent.heard(replica)  # it writes again: not expired after all
                metrics.sync_lag.observe(max(0, now_ms - decoded.since_ms) / 1000)
                # A peer is alive when it wrote lately, not when we read its history: the
                # records read at bootstrap (past deploys among them) stamp nobody, and a
                # record counts at the time its writer wrote it (never later than now).
                seen = self.peers.get(replica)
                written = min(now, from_unix_ms(decoded.ts_ms))
                self.peers[replica] = PeerSeen(
                    max(written, seen.at) if seen else written, (seen.records if seen else 0) + 1
                )
        metrics.deltas_applied.inc(applied)
        for partition, offset in reached.items():  # every record up to these is merged
            if offset + 1 > merged_offsets.get(partition, 0):
                merged_offsets[partition] = offset + 1


_SEP_BYTES = codec.SEP.encode()


def _rule_user(record_key: bytes) -> tuple[str, str]:
    """The rule and user of one of our key records' keys."""
    user, rule, _ = record_key.decode().split(codec.SEP, 2)
    return rule, user


def _latest_key_records(records: list[LogRecord]) -> list[LogRecord]:
    """Batch records, then the newest key record per key: what compaction will leave.

    Only for bootstrap, where merge order does not matter (no late handling) and a key
    record holds its writer's whole state for the user; batches are never superseded
    before a key record covers them, so they are all kept.
    """
    latest: dict[bytes, LogRecord] = {}
    out: list[LogRecord] = []
    sep = codec.SEP.encode()
    for record in records:
        key = record.key
        # Shaped like a key record (`user SEP rule SEP writer`); anything else, poison
        # included, is decoded on its own.
        if key and not key.startswith(sep) and key.count(sep) == 2:
            latest[key] = record
        else:
            out.append(record)
    out.extend(latest.values())
    return out


def _check_key(key: bytes | None, decoded: codec.Decoded) -> None:
    """A key record's key must name the same user, rule and writer as its value."""
    if key is None:
        raise PoisonRecord("bad_key", "state records need a key")
    if key.startswith(codec.SEP.encode()):
        return  # a batch record
    (rule, delta), *_ = decoded.items
    if key != codec.key_record_key(rule, delta.key, delta.replica):
        raise PoisonRecord("bad_key", f"record key {key[:80]!r} does not match its value")
