"""Records of writers gone silent: found at bootstrap, tombstoned once settled here.

A writer whose newest record on the topic is older than `--expire-writers-s` (a node of
a past deploy) will never tombstone its own records; the next node to bootstrap does, once
every key a record holds is settled here (its epochs sealed, the bucket full now), so the
topic stays the size of the live state.

A million users' key records of one past deploy are a million entries here, so they are
kept compact: a key record's key is user, rule and writer, so per writer, partition and
rule only the users are kept, newline-separated in one byte string (12 bytes a user of
`boot-123456`, where a set of record keys took about 135). A batch record (a few per
writer) keeps the (rule, user) pairs it holds. Every record of a writer is judged as
written at the writer's newest record: later than its own time, so a record is tombstoned
later, never earlier, than by its own time (and the writer has been silent for the whole
expiry at least). A key record read twice (before compaction) is tombstoned twice:
idempotent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from service.clock import from_unix_ms
from service.errors import PoisonRecord
from service.replication import codec
from service.replication.statelog import LogRecord

_SEP = codec.SEP.encode()
_NL = b"\n"
Settled = Callable[[str, str, float], bool]  # (rule, user, written) -> may be forgotten


@dataclass(slots=True)
class Users:
    """One writer's key records on one partition under one rule: the users, one a line;
    a pass over them reads from `pos`, and those not settled yet go to `later`."""

    data: bytearray = field(default_factory=bytearray)
    pos: int = 0
    later: bytearray = field(default_factory=bytearray)

    def lines(self) -> int:
        return self.data.count(_NL, self.pos) + self.later.count(_NL)


@dataclass(slots=True)
class SilentRecords:
    """The records one silent writer left on the topic."""

    newest: float = -math.inf  # when its newest record was written
    users: dict[tuple[int, bytes], Users] = field(default_factory=dict)  # (partition, rule)
    batches: dict[bytes, tuple[int, tuple[tuple[str, str], ...]]] = field(default_factory=dict)
    gone: set[bytes] = field(default_factory=set)  # key records seen tombstoned

    def __len__(self) -> int:
        return sum(u.lines() for u in self.users.values()) + len(self.batches)


class SilentWriters:
    """writer -> its records, for writers silent since before bootstrap (`me` excluded)."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.writers: dict[str, SilentRecords] = {}
        self._live: set[str] = set()  # seen writing lately while reading history
        # (writer, users group or None, batch record key or None) left in this pass
        self._queue: list[tuple[str, tuple[int, bytes] | None, bytes | None]] = []

    def __contains__(self, writer: object) -> bool:
        return writer in self.writers

    def __len__(self) -> int:
        """Silent writers held."""
        return len(self.writers)

    def records(self) -> int:
        """Records held, all writers together (key records seen tombstoned included)."""
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
        if record.value is None:  # already tombstoned
            if is_key_record:
                records.gone.add(key)
            else:
                records.batches.pop(key, None)
            return
        records.newest = max(records.newest, from_unix_ms(record.timestamp_ms))
        if is_key_record:
            user, rule = parts[0], parts[1]
            users = records.users.get((record.partition, rule))
            if users is None:
                users = records.users[(record.partition, rule)] = Users()
            users.data += user + _NL  # a user id holds no control character
            return
        try:
            items = codec.decode(record.value).items
        except PoisonRecord:
            items = []  # unreadable: nothing in it can matter
        slots = tuple((rule, delta.key) for rule, delta in items)
        records.batches[key] = (record.partition, slots)

    def history_read(self) -> None:
        """After reading history: writers seen writing lately are not silent after all."""
        for writer in self._live:
            self.writers.pop(writer, None)
        self._live.clear()

    def expire(self, budget: int, settled: Settled) -> dict[bytes, int]:
        """Look at up to `budget` records; returns those that may go (record key ->
        partition), forgotten here. Records not settled yet are looked at again in the
        next pass over all of them (a pass visits every group once: none starves)."""
        out: dict[bytes, int] = {}
        queue = self._queue
        if not queue:
            for writer in [w for w, held in self.writers.items() if not len(held)]:
                del self.writers[writer]
            for writer, held in self.writers.items():
                queue.extend((writer, group, None) for group in held.users)
                queue.extend((writer, None, key) for key in held.batches)
        while budget > 0 and queue:
            writer, group, key = queue[-1]
            records = self.writers.get(writer)
            if records is None:
                queue.pop()
                continue
            if group is not None:
                users = records.users.get(group)
                if users is None:
                    queue.pop()
                    continue
                looked, over = _expire_users(writer, records, group, users, budget, settled, out)
                budget -= looked
                if over:
                    queue.pop()  # this pass over the group is over
                    if not records.users and not records.batches:
                        del self.writers[writer]
                continue
            queue.pop()
            budget -= 1
            batch = records.batches.get(key) if key is not None else None
            if batch is not None and key is not None:
                partition, slots = batch
                if all(settled(rule, user, records.newest) for rule, user in slots):
                    del records.batches[key]
                    out[key] = partition
                    if not records.users and not records.batches:
                        del self.writers[writer]
        return out


def _expire_users(
    writer: str,
    records: SilentRecords,
    group: tuple[int, bytes],
    users: Users,
    limit: int,
    settled: Settled,
    out: dict[bytes, int],
) -> tuple[int, bool]:
    """Look at up to `limit` users of one group from where its pass stands; returns how
    many, and whether the pass is over (those not settled make the group's next pass)."""
    partition, rule = group
    data, pos = users.data, users.pos
    rule_name = rule.decode("utf-8", "replace")
    tail = _SEP + rule + _SEP + writer.encode()
    looked = 0
    while looked < limit and pos < len(data):
        looked += 1
        end = data.index(_NL, pos)
        user = bytes(data[pos:end])
        pos = end + 1
        key = user + tail
        if key in records.gone:
            continue
        if settled(rule_name, user.decode("utf-8", "replace"), records.newest):
            out[key] = partition
        else:
            users.later += user + _NL
    users.pos = pos
    if pos < len(data):
        return looked, False
    users.data, users.pos, users.later = users.later, 0, bytearray()
    if not users.data:
        del records.users[group]
    return looked, True
