"""Wire format of the state topic: versioned compact JSON (orjson), validated on the way in.

Two record kinds, both readable with Kafka's console consumer:

- key records, keyed `<user>\\x1f<rule>\\x1f<replica>` (one writer per key, so compaction
  keeps that writer's latest absolute state for the user; the periodic snapshot):
  {"v":1,"kind":"key","rule":R,"user":U,"replica":W,"entries":[[epoch,floor,p,n],...],"ts":ms}
- batch records, keyed `\\x1fbatch\\x1f<replica>\\x1f<partition>` (one per partition per
  flush; compaction keeps the newest, older ones are covered by key records):
  {"v":1,"kind":"batch","replica":W,"since":ms,"ts":ms,"items":[[R,U,[[e,f,p,n],...]],...]}

`since` is the previous flush: every admission in a batch happened after it, so
`now - since` bounds the sync lag of the batch from above.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, NamedTuple

import orjson
from aiokafka.partitioner import murmur2 as _aiokafka_murmur2

from crdt.delta import Delta, Entry
from service.engine import MAX_KEY_BYTES
from service.errors import InvalidParameter, PoisonRecord
from service.rules.model import RULE_NAME_MAX

VERSION = 1
# ASCII "unit separator": a user id cannot hold it (control characters are refused) and
# rule names and replica ids never do, so it splits a record key unambiguously.
SEP = "\x1f"
MAX_REPLICA_CHARS = 128
# Absurd-value guards: far beyond any real epoch index, time or cost.
MAX_EPOCH = 2**40
MAX_ABS_FLOOR = 1e12
MAX_CELL = 10**15
MAX_ENTRIES = 64


class Decoded(NamedTuple):
    """A record's deltas with the writer's timing, and the kinds of the batch items that
    were skipped because they could not be read (the rest of the batch still applies)."""

    items: list[tuple[str, Delta]]
    since_ms: int
    ts_ms: int
    skipped: tuple[tuple[str, str], ...] = ()


_fast_murmur2: Callable[[bytes], int] | None
try:
    # Compiled at install (setup.py): 50x faster than the reference, which the tests
    # check it against; without a C compiler at install the reference is used.
    from service.replication._murmur2 import murmur2 as _fast_murmur2
except ImportError:  # pragma: no cover - exercised where no compiler was found
    _fast_murmur2 = None

COMPILED_MURMUR2 = _fast_murmur2 is not None


def reference_murmur2(data: bytes) -> int:
    """Kafka's murmur2 in pure Python (aiokafka's), as an unsigned 32-bit int."""
    return int(_aiokafka_murmur2(data)) & 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (as `Utils.murmur2` in the Java client), as an unsigned 32-bit int."""
    if _fast_murmur2 is not None:
        return _fast_murmur2(data)
    return reference_murmur2(data)


def _positive_hash(user_bytes: bytes) -> int:
    # Java's Utils.toPositive: clear the sign bit (not abs(), which breaks on MIN_VALUE).
    return murmur2(user_bytes) & 0x7FFFFFFF


if _fast_murmur2 is None:  # the reference takes ~5 us a key: remember recent users
    _positive_hash = lru_cache(maxsize=65536)(_positive_hash)


def partition_for_user(user: str, num_partitions: int) -> int:
    """The partition of every record of `user`: Kafka's default partitioner applied to the
    user id alone, so all of a user's records (every rule, every writer) share a partition."""
    if num_partitions <= 0:
        raise InvalidParameter(f"the topic needs at least one partition, got {num_partitions}")
    return _positive_hash(user.encode()) % num_partitions


def key_record_key(rule: str, user: str, replica: str) -> bytes:
    """The compacted key of one writer's state for one user under one rule."""
    return f"{user}{SEP}{rule}{SEP}{replica}".encode()


def batch_record_key(replica: str, partition: int) -> bytes:
    """The compacted key of one writer's batches on one partition."""
    return f"{SEP}batch{SEP}{replica}{SEP}{partition}".encode()


def _entries(delta: Delta) -> list[list[Any]]:
    return [[e.epoch, e.floor, e.p, e.n] for e in delta.entries]


def encode_key_record(rule: str, delta: Delta, ts_ms: int) -> bytes:
    """The value of a key record."""
    return orjson.dumps(
        {
            "v": VERSION,
            "kind": "key",
            "rule": rule,
            "user": delta.key,
            "replica": delta.replica,
            "entries": _entries(delta),
            "ts": ts_ms,
        }
    )


def encode_batch(
    replica: str, items: Iterable[tuple[str, Delta]], since_ms: int, ts_ms: int
) -> bytes:
    """The value of a batch record."""
    return encode_batch_rows(
        replica, [[rule, d.key, _entries(d)] for rule, d in items], since_ms, ts_ms
    )


def encode_batch_rows(replica: str, rows: list[list[Any]], since_ms: int, ts_ms: int) -> bytes:
    """The value of a batch record from its items as rows already:
    [rule, user, [[epoch, floor, p, n], ...]] (the replicator's flush builds them)."""
    return orjson.dumps(
        {
            "v": VERSION,
            "kind": "batch",
            "replica": replica,
            "since": since_ms,
            "ts": ts_ms,
            "items": rows,
        }
    )


def decode(value: bytes | None) -> Decoded:
    """Deltas of one record value; PoisonRecord(kind, message) when it cannot be applied."""
    if value is None:
        return Decoded([], 0, 0)  # a tombstone: compaction will drop the key
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise PoisonRecord("bad_json", f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise PoisonRecord("bad_shape", "record value is not a JSON object")
    version = doc.get("v")
    if version != VERSION:
        raise PoisonRecord("unknown_version", f"unknown schema version {version!r}")
    kind = doc.get("kind")
    ts = _int(doc.get("ts", 0), "ts", 0, 2**53)
    # Interned: a key merged from a key record keeps its writer's id (the inline peer
    # cell), and a million key records of one writer held a million copies (80 MB).
    replica = sys.intern(_text(doc.get("replica"), "replica", MAX_REPLICA_CHARS))
    if kind == "key":
        rule = _text(doc.get("rule"), "rule", RULE_NAME_MAX)
        user = _user(doc.get("user"))
        return Decoded([(rule, Delta(user, replica, _parse_entries(doc.get("entries"))))], ts, ts)
    if kind == "batch":
        since = _int(doc.get("since", ts), "since", 0, 2**53)
        raw = doc.get("items")
        if not isinstance(raw, list):
            raise PoisonRecord("bad_shape", "batch items must be a list")
        items = []
        skipped: list[tuple[str, str]] = []
        for item in raw:
            # One bad item skips itself: every other user on the partition keeps this flush.
            try:
                if not isinstance(item, list) or len(item) != 3:
                    raise PoisonRecord("bad_shape", "batch item must be [rule, user, entries]")
                rule = _text(item[0], "rule", RULE_NAME_MAX)
                items.append((rule, Delta(_user(item[1]), replica, _parse_entries(item[2]))))
            except PoisonRecord as exc:
                skipped.append((exc.kind, str(exc)))
        return Decoded(items, since, ts, tuple(skipped))
    raise PoisonRecord("bad_shape", f"unknown record kind {kind!r}")


def _text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise PoisonRecord("bad_field", f"{name} must be a non-empty string of <= {limit} chars")
    return value


def _user(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise PoisonRecord("bad_field", "user must be a non-empty string")
    if len(value.encode()) > MAX_KEY_BYTES:
        raise PoisonRecord("huge_key", f"user id longer than {MAX_KEY_BYTES} bytes")
    return value


def _int(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PoisonRecord("absurd_value", f"{name} must be an integer in [{low}, {high}]")
    return value


def _parse_entries(raw: object) -> tuple[Entry, ...]:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_ENTRIES:
        raise PoisonRecord("bad_shape", f"entries must be a list of 1..{MAX_ENTRIES} items")
    out = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 4:
            raise PoisonRecord("bad_shape", "an entry is [epoch, floor, p, n]")
        epoch, floor, p, n = item
        epoch = _int(epoch, "epoch", -MAX_EPOCH, MAX_EPOCH)
        if isinstance(floor, bool) or not isinstance(floor, int | float):
            raise PoisonRecord("bad_field", "floor must be a number")
        if not math.isfinite(floor) or abs(floor) > MAX_ABS_FLOOR:
            raise PoisonRecord("absurd_value", f"floor {floor!r} out of range")
        out.append(Entry(epoch, float(floor), _int(p, "p", 0, MAX_CELL), _int(n, "n", 0, MAX_CELL)))
    return tuple(out)
