"""Records of writers gone silent: found at bootstrap, tombstoned once settled here.

A writer whose newest record on the topic is older than `--expire-writers-s` (a node of
a past deploy) will never tombstone its own records; the next node to bootstrap does, once
every key a record holds is settled here (its epochs sealed, the bucket full now), so the
topic stays the size of the live state.

A million users' key records of one past deploy are a million entries here, so each is
kept small: a key record's key already names its user and rule, so only the key is kept
(by partition); a batch record (a few per writer) keeps the (rule, user) pairs it holds.
Every record of a writer is judged as written at the writer's newest record: later than
its own time, so a record is tombstoned later, never earlier, than by its own time (and
the writer has been silent for the whole expiry at least).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from service.clock import from_unix_ms
from service.errors import PoisonRecord
from service.replication import codec
from service.replication.statelog import LogRecord

_SEP = codec.SEP.encode()
Slots = tuple[tuple[str, str], ...]  # the (rule, user) pairs a record holds
Settled = Callable[[str, str, float], bool]  # (rule, user, written) -> may be forgotten


class SilentRecords:
    """The records one silent writer left on the topic."""

    __slots__ = ("batches", "keys", "newest")

    def __init__(self) -> None:
        self.newest = -math.inf  # when its newest record was written
        self.keys: dict[int, set[bytes]] = {}  # partition -> record keys
        self.batches: dict[bytes, Slots] = {}  # batch record key -> what it holds

    def __len__(self) -> int:
        return sum(map(len, self.keys.values()))

    def slots(self, key: bytes) -> Slots:
        """The (rule, user) pairs the record `key` holds."""
        slots = self.batches.get(key)
        if slots is not None:
            return slots
        user, rule, _ = key.split(_SEP)  # a key record: user, rule, writer
        return ((rule.decode("utf-8", "replace"), user.decode("utf-8", "replace")),)

    def forget(self, partition: int, key: bytes) -> None:
        """Drop one record (tombstoned, by us or on the topic)."""
        held = self.keys.get(partition)
        if held is not None:
            held.discard(key)
            if not held:
                del self.keys[partition]
        self.batches.pop(key, None)


class SilentWriters:
    """writer -> its records, for writers silent since before bootstrap (`me` excluded)."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.writers: dict[str, SilentRecords] = {}
        self._live: set[str] = set()  # seen writing lately while reading history
        # (writer, partition, record keys left to look at) of the current pass
        self._queue: list[tuple[str, int, list[bytes]]] = []

    def __contains__(self, writer: object) -> bool:
        return writer in self.writers

    def __bool__(self) -> bool:
        return bool(self.writers)

    def records(self) -> int:
        """Records held, all writers together."""
        return sum(map(len, self.writers.values()))

    def heard(self, writer: str) -> None:
        """`writer` writes again: not expired after all."""
        self.writers.pop(writer, None)

    def note(self, record: LogRecord, threshold_ms: int) -> None:
        """At bootstrap: remember `record` if its writer has written nothing since
        `threshold_ms` (so far)."""
        key = record.key
        if key is None:
            return
        parts = key.split(_SEP)
        # A key record's key is user, rule, writer; a batch record's "", batch, writer, partition.
        is_key_record = len(parts) == 3
        if not (is_key_record or (len(parts) == 4 and not parts[0] and parts[1] == b"batch")):
            return
        writer = parts[2].decode("utf-8", "replace")
        if writer == self.me or writer in self._live:
            return
        if record.timestamp_ms >= threshold_ms:
            self._live.add(writer)
            self.writers.pop(writer, None)
            return
        records = self.writers.get(writer)
        if records is None:
            records = self.writers[writer] = SilentRecords()
        if record.value is None:
            records.forget(record.partition, key)  # already tombstoned
            return
        records.newest = max(records.newest, from_unix_ms(record.timestamp_ms))
        records.keys.setdefault(record.partition, set()).add(key)
        if not is_key_record:
            try:
                items = codec.decode(record.value).items
            except PoisonRecord:
                items = []  # unreadable: nothing in it can matter
            records.batches[key] = tuple((rule, delta.key) for rule, delta in items)

    def history_read(self) -> None:
        """After reading history: writers seen writing lately are not silent after all."""
        for writer in self._live:
            self.writers.pop(writer, None)
        self._live.clear()

    def expire(self, budget: int, settled: Settled) -> dict[bytes, int]:
        """Look at up to `budget` records; returns those that may go (record key ->
        partition), forgotten here. Records not settled yet are looked at again in the
        next pass over all of them."""
        if not self._queue:
            for writer in [w for w, records in self.writers.items() if not records.keys]:
                del self.writers[writer]
            self._queue = [
                (writer, partition, list(keys))
                for writer, records in self.writers.items()
                for partition, keys in records.keys.items()
            ]
        out: dict[bytes, int] = {}
        queue = self._queue
        while budget > 0 and queue:
            writer, partition, keys = queue[-1]
            records = self.writers.get(writer)
            held = records.keys.get(partition) if records is not None else None
            while budget > 0 and keys:
                key = keys.pop()
                budget -= 1
                if held is None or records is None or key not in held:
                    continue
                if all(settled(rule, user, records.newest) for rule, user in records.slots(key)):
                    records.forget(partition, key)
                    out[key] = partition
            if not keys:
                queue.pop()
            if records is not None and not records.keys:
                self.writers.pop(writer, None)
        return out
