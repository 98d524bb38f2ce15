"""Replication through the state topic: coalesced flushes out, peers' deltas in, bootstrap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from crdt.delta import Delta, Entry
from service.clock import Clock, to_unix_ms
from service.engine import Engine
from service.errors import PoisonRecord
from service.metrics import Metrics
from service.replication import codec
from service.replication.statelog import LogRecord, OutRecord, PublishFailed, StateLog

log = logging.getLogger("ratelimiter.sync")

MAX_ITEMS_PER_RECORD = 2000
FETCH_MAX_RECORDS = 5000


class PeerSeen(NamedTuple):
    """The last delta merged from a peer replica."""

    at: float
    records: int


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
    ) -> None:
        self.engine = engine
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
        self._pending: dict[tuple[str, str], dict[int, Entry]] = {}
        self._snapshot_keys: set[tuple[str, str]] = set()
        self._snapshot_since: dict[str, int] = {}
        self._last_flush_ms = to_unix_ms(clock())
        self._last_snapshot = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        # Our own records end (key records) or contain (batch records) these bytes.
        self._own_key_end = (codec.SEP + engine.replica).encode()
        self._own_batch = (codec.SEP + engine.replica + codec.SEP).encode()
        metrics.buffer_limit.set(max_buffered)

    # -- lifecycle -------------------------------------------------------------

    async def bootstrap(self, timeout_s: float) -> int:
        """Read every partition to the end offsets taken now; returns records read."""
        started = time.monotonic()
        self.engine.set_bootstrapping(True, self.clock())
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
                    self._merge(records)
        finally:
            self.engine.set_bootstrapping(False, self.clock())
        self.broker_ok = True
        self.metrics.bootstrap_seconds.set(time.monotonic() - started)
        self.metrics.bootstrap_records.set(count)
        log.info("bootstrapped from %d records in %.2fs", count, time.monotonic() - started)
        return count

    def start(self) -> None:
        """Start the flush and consume loops."""
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="flush"),
            asyncio.create_task(self._consume_loop(), name="consume"),
        ]

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Stop the loops, then publish everything admitted so far (best effort, bounded)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        try:
            async with asyncio.timeout(drain_timeout_s):
                await self.flush(snapshot=True)
        except TimeoutError:
            log.error("shutdown: %d keys could not be published", len(self._pending))

    # -- out -------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Keys waiting for the broker's acknowledgement."""
        return len(self._pending)

    def _collect(self, now: float) -> None:
        for rule, delta in self.engine.flush(now):
            slot = (rule, delta.key)
            entries = self._pending.setdefault(slot, {})
            for entry in delta.entries:
                old = entries.get(entry.epoch)
                # Entries only grow; the larger one holds everything the smaller does.
                if old is None or (entry.p, entry.n, entry.floor) >= (old.p, old.n, old.floor):
                    entries[entry.epoch] = entry
            if len(entries) > 1 and len(self._pending) > self.max_buffered:
                # Over the bound: keep only the newest entry; its cascaded floor carries
                # the older epochs' consumption, so nothing admitted is forgotten.
                newest = max(entries)
                self._pending[slot] = {newest: entries[newest]}
                self.folded_keys += 1
        self.metrics.buffered.set(len(self._pending))

    def _batch_records(self, since_ms: int, now_ms: int) -> list[OutRecord]:
        by_partition: dict[int, list[tuple[str, Delta]]] = {}
        replica = self.engine.replica
        for (rule, key), entries in self._pending.items():
            delta = Delta(key, replica, tuple(entries[e] for e in sorted(entries)))
            by_partition.setdefault(self.partition_of(key), []).append((rule, delta))
        out = []
        for partition, items in by_partition.items():
            for i in range(0, len(items), MAX_ITEMS_PER_RECORD):
                value = codec.encode_batch(
                    replica, items[i : i + MAX_ITEMS_PER_RECORD], since_ms, now_ms
                )
                out.append(OutRecord(codec.batch_record_key(replica, partition), value, partition))
        return out

    def _key_records(self, now_ms: int) -> list[OutRecord]:
        out = []
        replica = self.engine.replica
        for rule, key in self._snapshot_keys:
            limiter = self.engine.limiters.get(rule)
            if limiter is None:
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
        return out

    async def flush(self, *, snapshot: bool = False) -> None:
        """Publish pending keys now (and key records when a snapshot is due or asked)."""
        now = self.clock()
        self._collect(now)
        now_ms = to_unix_ms(now)
        snapshot = snapshot or time.monotonic() - self._last_snapshot >= self.snapshot_s
        if not self._pending and not (snapshot and self._snapshot_keys):
            self._last_flush_ms = now_ms
            return
        sent = dict(self._pending)
        records = self._batch_records(self._last_flush_ms, now_ms)
        epochs = {name: lim.current_epoch for name, lim in self.engine.limiters.items()}
        if snapshot:
            self._snapshot_keys.update(sent)
            key_records = self._key_records(now_ms)
        else:
            key_records = []
        try:
            await self.log.publish(records + key_records)
        except PublishFailed as exc:
            if self.broker_ok:
                log.warning("publish failed, buffering %d keys: %s", len(self._pending), exc)
            else:
                log.debug("publish failed again: %s", exc)
            self.broker_ok = False
            self.metrics.broker_up.set(0)
            self.metrics.publish_failures.inc()
            return
        if not self.broker_ok:
            log.info("broker reachable again; published %d buffered keys", len(sent))
        self.broker_ok = True
        self.last_ok_at = now
        self.metrics.broker_up.set(1)
        self._last_flush_ms = now_ms
        for slot, entries in sent.items():
            if self._pending.get(slot) is entries:
                del self._pending[slot]
        self._snapshot_keys.update(sent)
        if snapshot:
            self._snapshot_keys.clear()
            self._snapshot_since = epochs
            self._last_snapshot = time.monotonic()
        self.metrics.records_produced.labels("batch").inc(len(records))
        self.metrics.records_produced.labels("key").inc(len(key_records))
        self.metrics.buffered.set(len(self._pending))

    async def _flush_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.flush()
            except Exception:
                log.exception("flush failed")
            await asyncio.sleep(max(0.0, self.flush_s - (time.monotonic() - started)))

    def alive_peers(self, timeout_s: float) -> int:
        """Peer replicas heard from within `timeout_s` before the broker was last reachable."""
        since = self.last_ok_at - timeout_s
        return sum(1 for seen in self.peers.values() if seen.at >= since)

    # -- in --------------------------------------------------------------------

    async def _consume_loop(self) -> None:
        while True:
            try:
                records = await self.log.fetch(0.1, FETCH_MAX_RECORDS)
            except Exception as exc:
                log.warning("fetch failed: %r", exc)
                await asyncio.sleep(0.5)
                continue
            if records:
                self._merge(records)

    def _merge(self, records: list[LogRecord]) -> None:
        now = self.clock()
        now_ms = to_unix_ms(now)
        me = self.engine.replica
        metrics = self.metrics
        metrics.records_consumed.inc(len(records))
        bootstrapping = self.engine.limiters_bootstrapping()
        if bootstrapping:
            records = _latest_key_records(records)
        own_key_end = self._own_key_end
        own_batch = self._own_batch
        applied = 0
        for record in records:
            key = record.key
            if key is not None and (key.endswith(own_key_end) or own_batch in key):
                continue  # our own record, read back: skipped before paying for decoding
            try:
                decoded = codec.decode(record.value)
                if not decoded.items:
                    continue
                replica = decoded.items[0][1].replica
                if replica == me:
                    continue
                _check_key(record.key, decoded)
            except PoisonRecord as exc:
                metrics.poison_record(exc.kind, str(exc))
                continue
            unknown = self.engine.apply(decoded.items, now)
            if unknown:
                metrics.poison_record("unknown_rule", f"{unknown} deltas name an unknown rule")
            applied += len(decoded.items)
            if not bootstrapping:
                metrics.sync_lag.observe(max(0, now_ms - decoded.since_ms) / 1000)
            seen = self.peers.get(replica)
            self.peers[replica] = PeerSeen(now, (seen.records if seen else 0) + 1)
        metrics.deltas_applied.inc(applied)


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
