"""What `ratelimiter inspect` reads from the state topic: config, offsets, sizes, a user's state.

Everything is returned as plain JSON-ready dicts; service.cli.inspect renders them.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from crdt.policy import BucketPolicy
from crdt.store import BucketStore
from service.clock import system_clock, to_unix_ms
from service.errors import BrokerError, PoisonRecord
from service.kafka.logdirs import partition_sizes
from service.kafka.topics import admin_client, describe_topic
from service.regions import TopicSelector, region_of
from service.replication import codec
from service.replication.codec import partition_for_user
from service.replication.statelog import LogRecord
from service.replication.topic import STATE_TOPIC_CONFIG

READ_TIMEOUT_S = 60.0


def printable_key(key: bytes | None) -> str:
    """A record key with the \\x1f separators shown as ' | '."""
    if key is None:
        return "(none)"
    return key.decode(errors="replace").replace(codec.SEP, " | ").strip(" |")


def describe_record(record: LogRecord) -> dict[str, Any]:
    """One record as a row: where, when, key, kind, writer, how many keys it carries."""
    row: dict[str, Any] = {
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": printable_key(record.key),
        "bytes": len(record.value or b""),
    }
    try:
        decoded = codec.decode(record.value)
    except PoisonRecord as exc:
        return {**row, "kind": f"poison ({exc.kind})", "replica": None, "users": 0}
    if not decoded.items:
        # A value that holds nothing is a writer's clock probe or region heartbeat.
        kind = "tombstone" if record.value is None else "empty"
        return {**row, "kind": kind, "replica": None, "users": 0}
    kind = "batch" if (record.key or b"").startswith(codec.SEP.encode()) else "key"
    return {
        **row,
        "kind": kind,
        "replica": decoded.items[0][1].replica,
        "users": len(decoded.items),
    }


class TopicReader:
    """A group-less consumer of one topic that reads offset ranges of partitions."""

    def __init__(self, bootstrap: str, topic: str, options: Mapping[str, Any]) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="ratelimiter-inspect",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            **options,
        )

    async def __aenter__(self) -> TopicReader:
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await self._consumer.stop()
            raise BrokerError(f"cannot read topic {self.topic!r}: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def offsets(self, partitions: int) -> dict[int, tuple[int, int]]:
        """(beginning, end) offsets per partition."""
        tps = [TopicPartition(self.topic, p) for p in range(partitions)]
        begin = await self._consumer.beginning_offsets(tps)
        end = await self._consumer.end_offsets(tps)
        return {tp.partition: (int(begin[tp]), int(end[tp])) for tp in tps}

    async def read(self, ranges: Mapping[int, tuple[int, int]]) -> list[LogRecord]:
        """Every record in [start, end) of each partition (compaction may leave gaps)."""
        wanted = {TopicPartition(self.topic, p): r for p, r in ranges.items() if r[1] > r[0]}
        if not wanted:
            return []
        self._consumer.assign(list(wanted))
        for tp, (start, _) in wanted.items():
            self._consumer.seek(tp, start)
        out: list[LogRecord] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        left = dict(wanted)
        while left:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {self.topic!r} took over {READ_TIMEOUT_S:g}s")
            batches = await self._consumer.getmany(*left, timeout_ms=200, max_records=5000)
            for tp, records in batches.items():
                end = wanted[tp][1]
                out.extend(
                    LogRecord(r.key, r.value, tp.partition, r.offset, r.timestamp)
                    for r in records
                    if r.offset < end
                )
            for tp in list(left):
                if await self._consumer.position(tp) >= left[tp][1]:
                    del left[tp]
        return out


def user_state(
    user: str, records: list[LogRecord], rate: float, burst: int, now: float
) -> dict[str, Any]:
    """The user's merged state per rule, as a node bootstrapping from these records holds it.

    Merged with the real CRDT (a token-bucket store in bootstrap mode, `rate`/`burst` for
    tokens); beside it, per writer, its raw cells (sum over epochs of p - n) and records.
    """
    stores: dict[str, BucketStore] = {}
    cells: dict[str, dict[str, dict[int, tuple[int, int]]]] = defaultdict(dict)
    writers: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    poison = 0
    me = f"inspect/{secrets.token_hex(4)}"
    for record in records:
        try:
            decoded = codec.decode(record.value)
        except PoisonRecord:
            poison += 1
            continue
        for rule, delta in decoded.items:
            if delta.key != user:
                continue
            store = stores.get(rule)
            if store is None:
                store = stores[rule] = BucketStore(BucketPolicy(rate, burst), me)
                store.bootstrapping = True
            store.apply(delta, now)
            epochs = cells[rule].setdefault(delta.replica, {})
            for e in delta.entries:
                p, n = epochs.get(e.epoch, (0, 0))
                epochs[e.epoch] = (max(p, e.p), max(n, e.n))
            seen = writers[rule].setdefault(delta.replica, {"records": 0, "last_ts_ms": 0})
            seen["records"] += 1
            seen["last_ts_ms"] = max(seen["last_ts_ms"], record.timestamp_ms)
    rules: dict[str, Any] = {}
    for rule, store in sorted(stores.items()):
        store.finish_bootstrap(now)
        view = store.view(user, now)
        replicas = {}
        for replica, seen in sorted(writers[rule].items()):
            raw = sum(p - n for p, n in cells[rule][replica].values())
            replicas[replica] = {
                **seen,
                "contribution": view.contributions.get(replica, 0),
                "raw_cells": raw,
            }
        rules[rule] = {
            "consumed": view.consumed,
            "tokens": round(view.tokens, 3),
            "open_epochs": view.open_epochs,
            "replicas": replicas,
        }
    return {"rules": rules, "poison_records": poison}


async def inspect_topic(
    bootstrap: str,
    topic: str,
    *,
    user: str | None = None,
    newest: int = 10,
    rate: float = 10.0,
    burst: int = 20,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Topic config, partitions (offsets, sizes), newest records and, for `user`, its state."""
    options = dict(options or {})
    description = await describe_topic(bootstrap, topic, options)
    if description is None:
        raise BrokerError(f"topic {topic!r} does not exist on {bootstrap}")
    async with admin_client(bootstrap, options) as admin:
        try:
            sizes: dict[int, int] | None = await partition_sizes(
                admin, topic, list(range(description.partitions))
            )
        except (TimeoutError, KafkaError, NotImplementedError, AttributeError):
            sizes = None  # a broker without DescribeLogDirs v1: sizes stay unknown
    async with TopicReader(bootstrap, topic, options) as reader:
        offsets = await reader.offsets(description.partitions)
        tail = await reader.read({p: (max(b, e - newest), e) for p, (b, e) in offsets.items()})
        result: dict[str, Any] = {
            "kafka": bootstrap,
            "topic": topic,
            "replication_factor": description.replication_factor,
            "config": {
                key: {"value": description.config.get(key), "expected": wanted}
                for key, wanted in STATE_TOPIC_CONFIG.items()
            },
            "partitions": [
                {
                    "partition": p,
                    "beginning_offset": b,
                    "end_offset": e,
                    "offsets": e - b,
                    "log_bytes": None if sizes is None else sizes.get(p, 0),
                }
                for p, (b, e) in sorted(offsets.items())
            ],
            "newest_records": _newest(tail, newest),
            "user": None,
        }
        if user is not None:
            partition = partition_for_user(user, description.partitions)
            records = await reader.read({partition: offsets[partition]})
            mine = [r for r in records if _names(r, user)]
            result["user"] = {
                "id": user,
                "partition": partition,
                "records_read": len(records),
                "records_naming_user": len(mine),
                "rate": rate,
                "burst": burst,
                **user_state(user, records, rate, burst, system_clock()),
                "newest_records": _newest(mine, newest),
            }
    result["mirrored"] = await mirrored_topics(bootstrap, topic, options)
    result["now_ms"] = to_unix_ms(system_clock())
    return result


async def mirrored_topics(
    bootstrap: str, topic: str, options: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Other regions' copies of `topic` on this cluster (`<region>.<topic>`, as MirrorMaker 2
    names them): partitions, offsets, and the lag of the newest record (its source stamp
    to now; a topic that stamps records itself shows the mirror's write instead)."""
    options = dict(options or {})
    selector = TopicSelector.parse(None, topic, "")
    async with admin_client(bootstrap, options) as admin:
        names = sorted(t for t in await admin.list_topics() if selector.matches(t))
    out: list[dict[str, Any]] = []
    for name in names:
        description = await describe_topic(bootstrap, name, options)
        if description is None:
            continue
        async with TopicReader(bootstrap, name, options) as reader:
            offsets = await reader.offsets(description.partitions)
            last = await reader.read({p: (max(b, e - 1), e) for p, (b, e) in offsets.items()})
        newest = max((r.timestamp_ms for r in last), default=None)
        now_ms = to_unix_ms(system_clock())
        out.append(
            {
                "topic": name,
                "region": region_of(name),
                "partitions": description.partitions,
                "offsets": sum(e - b for b, e in offsets.values()),
                "newest_ms": newest,
                "lag_s": None if newest is None else max(0, now_ms - newest) / 1000,
                "timestamp_type": description.config.get("message.timestamp.type"),
            }
        )
    return out


def _names(record: LogRecord, user: str) -> bool:
    try:
        return any(delta.key == user for _, delta in codec.decode(record.value).items)
    except PoisonRecord:
        return False


def _newest(records: list[LogRecord], count: int) -> list[dict[str, Any]]:
    ordered = sorted(records, key=lambda r: (r.timestamp_ms, r.partition, r.offset), reverse=True)
    return [describe_record(r) for r in ordered[:count]]
