"""Fleet-size model: the CPU one node spends decoding and merging its peers' deltas per
second as the fleet grows, and the fleet size at which that merging would take half a core.

Run `python -m stress_test.bench_fleet [--json] [--quick] [--writers 3,6,12,25,50]
[--deltas-per-writer-s N] [--secs S] [--kafka HOST:PORT]`.

For each writer count W: a fresh state topic, ONE real node (`fleet-observer`) that admits
nothing and only merges, and ONE producer process simulating W writers. Each simulated
writer is a distinct replica id that flushes every 20 ms one batch record per partition
holding the deltas of users it admitted since its previous flush, encoded with the node's
own codec exactly as Replicator._encode_batches does. Over a steady window the node's CPU
(/proc) and its /metrics counters give the cores it uses per merged delta; a linear fit of
cores on merged deltas/s gives the fleet size at which merging takes half a core.

Every process started here (broker, node, producer) is stopped on exit, Ctrl-C and errors
included; everything listens on loopback.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeAlias

from crdt.delta import Delta, Entry
from service.bootstrap import new_incarnation
from service.clock import system_clock, to_unix_ms
from service.errors import RateLimiterError
from service.local.nodes import NodeProcess
from service.local.process import tail
from service.replication import codec
from service.replication.replicator import MAX_ITEMS_PER_RECORD
from service.replication.topic import ensure_state_topic
from service.rules.model import DEFAULT_RULE
from stress_test.bench_processes import (
    NODE_LIMIT,
    BenchError,
    Samples,
    bucket_quantile,
    buckets,
    child,
    cpu_seconds,
    node,
    pid_of,
    scrape,
    system_busy_seconds,
    total,
)
from stress_test.bench_run import Bench, bench_main
from stress_test.provenance import header_lines, report_head

PROG = "python -m stress_test.bench_fleet"
DEFAULT_WRITERS = (3, 6, 12, 25, 50)
QUICK_WRITERS = (3, 6)
DEFAULT_RATE = 2000.0  # distinct-user deltas per second per writer
HALF_CORE = 0.5

# The observer node and what the simulated writers mirror of it (the node's defaults).
NODE_ID = "fleet-observer"
PARTITIONS = 12
MAX_KEYS = 2_000_000
FLUSH_S = 0.020  # --flush-ms 20
EPOCH_S = 1.0  # --epoch-ms 1000: entry epoch = int(cluster seconds)
NODE_RATE = float(NODE_LIMIT[NODE_LIMIT.index("--rate") + 1])  # tokens/s of the default rule
NODE_BURST = int(NODE_LIMIT[NODE_LIMIT.index("--burst") + 1])
EPS_TIME = 1e-7  # crdt.policy.EPS_TIME: admission tolerance

PHASES = 4  # writers flush in 4 groups, 5 ms apart, not all at the same instant
MAX_GAP_S = 5 * FLUSH_S  # a late flush covers at most this much; the rest is dropped (counted)
TAIL_S = 1.0  # the producer runs on this long after the window: the node is loaded to its end
DRAIN_S = 10.0  # after the producer stops, how long the node may take to merge the rest
GO_TIMEOUT_S = 600.0  # the producer gives up waiting for the start signal after this
READY_TIMEOUT_S = 600.0  # the bench gives up waiting for the producer's id table after this
KEPT_UP_SHARE = 0.9  # merged / offered at or above this: the node kept up
HELD_SHARE = 0.95  # offered / target at or above this: the producer held the rate
LAG = "ratelimiter_sync_lag_seconds"
APPLIED = "ratelimiter_deltas_applied_total"
CONSUMED = "ratelimiter_records_consumed_total"
POISON = "ratelimiter_poison_records_total"
FAILURES = (BenchError, RateLimiterError, OSError, ValueError, subprocess.SubprocessError)
PRODUCER_CODE = (
    "import sys; from stress_test.bench_fleet import producer_main; producer_main(sys.argv[1])"
)


# -- simulated writers (pure) ----------------------------------------------------------


def user_id(index: int) -> str:
    """The user id of fresh user `index`: every index is used once per writer count."""
    return f"user-{index:010d}"


# The partition of user_id(i) at i ("H": two bytes a user).
Table: TypeAlias = "array.array[int]"


def new_table() -> Table:
    """An empty partition table (two bytes a user: at most 65,536 partitions)."""
    return array.array("H")


def extend_table(table: Table, size: int, partitions: int = PARTITIONS) -> None:
    """Grow `table` (partition of user_id(i) at i) to `size` entries with the codec's
    partitioner; precomputed because Kafka's murmur2 costs microseconds in Python."""
    if partitions > 1 << 16:
        raise ValueError("a partition table holds two bytes per user: at most 65536 partitions")
    table.extend(codec.partition_for_user(user_id(i), partitions) for i in range(len(table), size))


class UserSource(Protocol):
    """Where a simulated writer takes the fresh users it admits."""

    taken: int

    def take(self) -> tuple[str, int]:
        """The next fresh user and its partition."""
        ...


class FreshUsers:
    """Users no writer has admitted yet in this run, with their partitions."""

    def __init__(self, table: Table, partitions: int = PARTITIONS) -> None:
        self.table = table
        self.partitions = partitions
        self.taken = 0

    def take(self) -> tuple[str, int]:
        """The next fresh user and its partition (the table grows if it runs out)."""
        index = self.taken
        self.taken += 1
        if index >= len(self.table):
            extend_table(self.table, index + 10_000, self.partitions)
        return user_id(index), self.table[index]


class Record(NamedTuple):
    """One batch record as the node's Replicator would publish it."""

    partition: int
    key: bytes
    value: bytes
    deltas: int


@dataclass(frozen=True, slots=True)
class Shape:
    """What every simulated writer admits: its rate, the share of repeat users, and the
    node's limit (rule, refill interval, burst) its token buckets follow."""

    rate: float = DEFAULT_RATE
    repeat_share: float = 0.1
    rule: str = DEFAULT_RULE
    interval: float = 1.0 / NODE_RATE
    burst: int = NODE_BURST
    epoch_s: float = EPOCH_S
    max_gap_s: float = MAX_GAP_S


@dataclass
class SimWriter:
    """One writer replica: admits users at `shape.rate` per second and, at each flush,
    emits one batch record per partition holding a delta per user it admitted since its
    previous flush (absolute own cells of the user's epoch, as BucketStore.flush does).

    Fresh users get a full bucket: floor = admission time, p = 1. A repeat user (one this
    writer admitted earlier in the same epoch) follows the node's token bucket: its floor
    moves to `t - used * interval` once the bucket has refilled, and p counts its
    admissions. Repeats are drawn only within the epoch, so every delta holds one entry.
    """

    replica: str
    last_flush: float  # cluster seconds of the previous flush (the next record's `since`)
    carry: float = 0.0  # admissions owed but not yet whole
    dropped: float = 0.0  # admissions not made because a flush came later than max_gap_s
    epoch: int = -(2**62)
    own: dict[str, tuple[float, int, int]] = field(default_factory=dict)  # floor, used, part
    recent: list[str] = field(default_factory=list)  # users admitted in this epoch

    def flush(
        self, now: float, shape: Shape, users: UserSource, rng: random.Random
    ) -> list[Record]:
        """Admit the users due since the last flush (spread evenly over the interval) and
        return their deltas as batch records; `now` is the flush time (cluster seconds)."""
        span = now - self.last_flush
        covered = min(max(span, 0.0), shape.max_gap_s)
        self.dropped += (max(span, 0.0) - covered) * shape.rate
        self.carry += covered * shape.rate
        count = int(self.carry)
        self.carry -= count
        touched: dict[str, tuple[int, Entry]] = {}
        start = now - covered
        step = covered / count if count else 0.0
        interval, limit = shape.interval, shape.burst * shape.interval + EPS_TIME
        own, recent = self.own, self.recent
        for i in range(count):
            t = start + (i + 1) * step
            epoch = int(t // shape.epoch_s)
            if epoch != self.epoch:
                self.epoch = epoch
                own.clear()
                recent.clear()
            if recent and shape.repeat_share and rng.random() < shape.repeat_share:
                user = recent[rng.randrange(len(recent))]
                floor, used, part = own[user]
                tat = floor + used * interval
                if (tat - t if tat > t else 0.0) + interval <= limit:
                    if tat < t:
                        floor = t - used * interval
                    used += 1
                    own[user] = (floor, used, part)
                    touched[user] = (part, Entry(epoch, floor, used, 0))
                    continue  # else denied: admit a fresh user instead
            user, part = users.take()
            own[user] = (t, 1, part)
            recent.append(user)
            touched[user] = (part, Entry(epoch, t, 1, 0))
        by_partition: dict[int, list[tuple[str, Delta]]] = {}
        replica, rule = self.replica, shape.rule
        for user, (part, entry) in touched.items():
            by_partition.setdefault(part, []).append((rule, Delta(user, replica, (entry,))))
        since_ms, now_ms = to_unix_ms(self.last_flush), to_unix_ms(now)
        self.last_flush = now
        records = []
        for part in sorted(by_partition):
            items = by_partition[part]
            key = codec.batch_record_key(replica, part)
            for i in range(0, len(items), MAX_ITEMS_PER_RECORD):
                chunk = items[i : i + MAX_ITEMS_PER_RECORD]
                value = codec.encode_batch(replica, chunk, since_ms, now_ms)
                records.append(Record(part, key, value, len(chunk)))
        return records


def writer_node_ids(count: int) -> list[str]:
    """The node ids of `count` simulated writers."""
    return [f"fleet-writer-{i:02d}" for i in range(count)]


def writer_ids(count: int, node_ids: Sequence[str] | None = None) -> list[str]:
    """Replica ids shaped like a node's (`<node-id>/<incarnation>`), one per writer."""
    nodes = writer_node_ids(count) if node_ids is None else list(node_ids)
    return [f"{node}/{new_incarnation()}" for node in nodes[:count]]


# -- fit (pure) ------------------------------------------------------------------------


class Fit(NamedTuple):
    """cores = a + b * deltas_per_s, by least squares over `points` points."""

    a: float
    b: float
    r2: float | None
    points: int


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> Fit | None:
    """Least-squares line through (x, y); None with fewer than 2 distinct x."""
    n = len(xs)
    if n != len(ys) or n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx
    a = my - b * mx
    syy = sum((y - my) ** 2 for y in ys)
    residual = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1 - residual / syy if syy > 0 else None
    return Fit(a, b, r2, n)


def half_core(
    fit: Fit | None, per_writer_rate: float, measured: Sequence[int], cores: float = HALF_CORE
) -> dict[str, Any]:
    """The fleet size (writers at `per_writer_rate` deltas/s each) at which the fit reaches
    `cores`, whether that is an extrapolation beyond the measured writer counts, and why
    there is none when the fit cannot say."""
    out: dict[str, Any] = {
        "cores": cores,
        "per_writer_deltas_per_s": per_writer_rate,
        "writers": None,
        "deltas_per_s": None,
        "extrapolated": None,
        "note": "",
    }
    if fit is None:
        out["note"] = "no fit: fewer than 2 usable points"
    elif fit.b <= 0:
        out["note"] = "the fit does not grow with the delta rate: no crossing"
    elif fit.a >= cores:
        out["writers"] = 0.0
        out["deltas_per_s"] = 0.0
        out["extrapolated"] = False
        out["note"] = f"the node already uses {fit.a:.2f} cores with no deltas (intercept)"
    else:
        rate = (cores - fit.a) / fit.b
        writers = rate / per_writer_rate if per_writer_rate > 0 else math.inf
        out["deltas_per_s"] = round(rate)
        out["writers"] = round(writers, 1)
        low, high = (min(measured), max(measured)) if measured else (0, 0)
        out["extrapolated"] = not low <= writers <= high
        if writers > high:
            out["note"] = f"extrapolated beyond the largest fleet measured ({high} writers)"
        elif writers < low:
            out["note"] = f"below the smallest fleet measured ({low} writers)"
        else:
            out["note"] = "within the measured range"
    return out


def fit_points(points: Sequence[Mapping[str, Any]]) -> tuple[Fit | None, str]:
    """The fit of node cores on merged deltas/s over the points where the node kept up
    (all measured points when fewer than 2 did), and which points it used."""
    measured = [p for p in points if p.get("merged_deltas_per_s") and p.get("node_cores")]
    kept = [p for p in measured if p.get("kept_up")]
    used, which = (
        (kept, "points where the node kept up")
        if len(kept) >= 2
        else (measured, "every measured point (fewer than 2 kept up)")
    )
    fit = linear_fit(
        [float(p["merged_deltas_per_s"]) for p in used], [float(p["node_cores"]) for p in used]
    )
    return fit, f"{which}: writers {','.join(str(p['writers']) for p in used)}"


def parse_writers(text: str) -> list[int]:
    """`3,6,12` -> [3, 6, 12] (sorted, unique); each at least 1."""
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"writer counts must be integers >= 1: {text!r}")
    return values


# -- the producer process --------------------------------------------------------------


@dataclass
class Counts:
    """What the producer sent over a span of time."""

    deltas: int = 0
    records: int = 0
    value_bytes: int = 0  # keys and values of the records
    flushes: int = 0


async def _send(producer: Any, topic: str, partition: int, builder: Any) -> tuple[Any, int]:
    """Hand one produce batch to the producer: its delivery future and record count."""
    future = await producer.send_batch(builder, topic, partition=partition)
    return future, int(builder.record_count())


def producer_main(spec_json: str) -> None:
    """The producer process: build its user table, connect, wait for the start signal,
    run every writer until the end, write its counts as JSON to spec["output"]."""
    import uvloop

    spec = json.loads(spec_json)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    writers, rate = int(spec["writers"]), float(spec["rate"])
    duration = float(spec["warmup"]) + float(spec["secs"]) + TAIL_S
    # Every fresh user of the run, hashed before the start: not while producing.
    table = load_table(Path(spec["table"]), math.ceil(writers * rate * (duration + 1)) + 1000)
    users = FreshUsers(table)
    outcome = uvloop.run(produce(spec, [users] * writers))
    Path(spec["output"]).write_text(json.dumps(outcome))


def load_table(path: Path, size: int, partitions: int = PARTITIONS) -> Table:
    """The partition table kept in the work dir, grown to `size` (kept across writer counts:
    each count's run uses a fresh topic and node, so ids may repeat between counts)."""
    table = new_table()
    if path.exists():
        table.frombytes(path.read_bytes())
    if len(table) < size:
        extend_table(table, size, partitions)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(table.tobytes())
        tmp.replace(path)
    return table


def _wait_go(path: Path) -> float:
    """The start time (monotonic) the bench writes to `path`, once it exists."""
    deadline = time.monotonic() + GO_TIMEOUT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise BenchError(f"no start signal within {GO_TIMEOUT_S} s")
        time.sleep(0.005)
    return float(path.read_text())


async def produce(
    spec: dict[str, Any],
    sources: Sequence[UserSource],
    before_ready: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Connect, await `before_ready`, write the ready file, wait for the start signal and
    run the writers (writer i takes its users from `sources[i]`)."""
    from aiokafka import AIOKafkaProducer

    writers, warmup, secs = int(spec["writers"]), float(spec["warmup"]), float(spec["secs"])
    shape = Shape(rate=float(spec["rate"]), repeat_share=float(spec["repeat_share"]))
    rng = random.Random(int(spec["seed"]))
    topic = str(spec["topic"])
    producer = AIOKafkaProducer(
        bootstrap_servers=spec["kafka"], client_id="bench-fleet-writers", acks=1,
        linger_ms=0, max_batch_size=1 << 20, max_request_size=8 << 20,
        request_timeout_ms=30_000,
    )  # fmt: skip
    await producer.start()
    try:
        await producer.partitions_for(topic)
        if before_ready is not None:
            await before_ready()
        await asyncio.to_thread(Path(spec["ready"]).write_text, "ready")
        t0 = await asyncio.to_thread(_wait_go, Path(spec["go"]))
        send = spec.get("send")
        return await _run_writers(
            producer, topic, writers, shape, sources, rng, t0, warmup, secs, spec.get("ids"),
            None if send is None else frozenset(send),
        )  # fmt: skip
    finally:
        await producer.stop()


async def _run_writers(
    producer: Any,
    topic: str,
    count: int,
    shape: Shape,
    sources: Sequence[UserSource],
    rng: random.Random,
    t0: float,
    warmup: float,
    secs: float,
    node_ids: Sequence[str] | None = None,
    send: frozenset[int] | None = None,
) -> dict[str, Any]:
    """Writer i flushes at t0 + k * FLUSH_S + (i % PHASES) * FLUSH_S / PHASES (monotonic);
    each phase's records of one partition go to the broker as one produce batch; only the
    records of partitions in `send` when given (the others are counted as unsent)."""
    window_start, window_end = t0 + warmup, t0 + warmup + secs
    end = window_end + TAIL_S
    delay = t0 - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    to_cluster = system_clock() - time.monotonic()  # monotonic -> cluster seconds
    ids = writer_ids(count, node_ids)
    offsets = [g * FLUSH_S / PHASES for g in range(PHASES)]
    groups = [
        [SimWriter(r, t0 + offsets[i % PHASES] - FLUSH_S + to_cluster) for i, r in enumerate(ids)
         if i % PHASES == g]
        for g in range(PHASES)
    ]  # fmt: skip
    due = [t0 + off for off in offsets]
    index = {replica: i for i, replica in enumerate(ids)}
    window, whole = Counts(), Counts()
    pending: list[tuple[Any, int]] = []
    acked = failed = late = skipped = unsent = unsent_window = 0
    max_late = 0.0
    while True:
        g = min(range(PHASES), key=due.__getitem__)
        at = due[g]
        if at >= end:
            break
        wait = at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        mono = time.monotonic()
        lateness = mono - at
        max_late = max(max_late, lateness)
        late += lateness > FLUSH_S / PHASES
        now = mono + to_cluster
        builders: dict[int, Any] = {}
        sent = Counts(flushes=len(groups[g]))
        for writer in groups[g]:
            for record in writer.flush(now, shape, sources[index[writer.replica]], rng):
                if send is not None and record.partition not in send:
                    unsent += record.deltas
                    unsent_window += window_start <= mono < window_end and record.deltas
                    continue
                builder = builders.get(record.partition)
                if builder is None:
                    builder = builders[record.partition] = producer.create_batch()
                while builder.append(timestamp=None, key=record.key, value=record.value) is None:
                    pending.append(await _send(producer, topic, record.partition, builder))
                    builder = builders[record.partition] = producer.create_batch()
                sent.deltas += record.deltas
                sent.records += 1
                sent.value_bytes += len(record.key) + len(record.value)
        for part, builder in builders.items():
            pending.append(await _send(producer, topic, part, builder))
        for counts in (whole, window) if window_start <= mono < window_end else (whole,):
            counts.deltas += sent.deltas
            counts.records += sent.records
            counts.value_bytes += sent.value_bytes
            counts.flushes += sent.flushes
        next_at = at + FLUSH_S
        if next_at < time.monotonic():
            missed = math.ceil((time.monotonic() - next_at) / FLUSH_S)
            skipped += missed
            next_at += missed * FLUSH_S
        due[g] = next_at
        if len(pending) > 2000:
            still = []
            for future, records in pending:
                if not future.done():
                    still.append((future, records))
                elif future.exception() is None:
                    acked += records
                else:
                    failed += records
            pending = still
    if pending:
        await asyncio.wait([f for f, _ in pending], timeout=30)
        for future, records in pending:
            if future.done() and future.exception() is None:
                acked += records
            else:
                failed += records
    writers = [w for group in groups for w in group]
    return {
        "window": vars(window),
        "whole": vars(whole),
        "records_acked": acked,
        "records_failed": failed,
        "late_flush_groups": late,
        "max_late_ms": round(max_late * 1000, 1),
        "skipped_slots": skipped,
        "dropped_deltas": round(sum(w.dropped for w in writers)),
        "fresh_users": sum({id(s): s.taken for s in sources}.values()),
        "unsent_deltas": unsent,
        "unsent_deltas_window": unsent_window,
        "window_s": secs,
    }


# -- measuring -------------------------------------------------------------------------


class Sample(NamedTuple):
    """What one instant of a run reads: time, CPU seconds of each process, /metrics."""

    at: float
    node_cpu: float
    producer_cpu: float
    broker_cpu: float | None
    busy: float
    metrics: Samples


@dataclass
class FleetBench(Bench):
    """Bench (options, work dir, lazy broker) with a benchmark's log prefix."""

    prog: str = "bench_fleet"

    def say(self, message: str) -> None:
        """Progress on stderr (stdout holds only the report)."""
        stamp = time.strftime("%H:%M:%S")
        print(f"[{self.prog} {stamp}] {message}", file=sys.stderr, flush=True)


def run_measured(
    name: str,
    args: argparse.Namespace,
    argv: Sequence[str],
    measure: Callable[[FleetBench], dict[str, Any]],
    **fields: Any,
) -> dict[str, Any]:
    """The report of `python -m stress_test.<name>`: its head, `fields`, and what
    `measure` returns on a FleetBench (or why it could not), always stopping what the
    bench started (ExitStack: nodes, nginx, the broker)."""
    started = time.monotonic()
    report: dict[str, Any] = {
        **report_head(f"stress_test.{name}", argv),
        **fields,
        "results": {},
        "skipped": "",
    }
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{name}-")))
        bench = FleetBench(args, work, stack, None, prog=name)
        try:
            report["results"] = measure(bench)
        except FAILURES as exc:
            report["skipped"] = str(exc)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    return report


def node_args(topic: str) -> list[str]:
    """The observer node's `serve` options (besides --node-id, --port, --kafka)."""
    return [
        "--topic", topic, "--partitions", str(PARTITIONS), "--max-keys", str(MAX_KEYS),
        *NODE_LIMIT, "--log-level", "warning",
    ]  # fmt: skip


def _sample(proc: NodeProcess, producer: int, brokers: Sequence[int]) -> Sample:
    broker: float | None = None
    with contextlib.suppress(OSError):
        broker = sum(cpu_seconds(p) for p in brokers) if brokers else None
    node_cpu = cpu_seconds(pid_of(proc))
    metrics = scrape(proc.url)
    return Sample(
        time.monotonic(), node_cpu, cpu_seconds(producer), broker, system_busy_seconds(), metrics
    )


def _sleep_until(at: float, producer: subprocess.Popen[bytes], log: Path) -> None:
    while (left := at - time.monotonic()) > 0:
        if producer.poll() is not None:
            raise BenchError(f"the producer exited with {producer.returncode}: {_tail(log)}")
        time.sleep(min(left, 0.1))


def _tail(log: Path) -> str:
    return " | ".join(tail(log, 5))


def _ms(seconds: float | None) -> float | str | None:
    if seconds is None:
        return None
    return "+Inf" if math.isinf(seconds) else round(seconds * 1000, 1)


def _diff(before: Samples, after: Samples, name: str) -> float:
    return (total(after, name) or 0.0) - (total(before, name) or 0.0)


def summarize_point(
    writers: int, rate: float, before: Sample, after: Sample, produced: Mapping[str, Any]
) -> dict[str, Any]:
    """The figures of one writer count from the samples around its window and the
    producer's counts."""
    wall = after.at - before.at
    node_cpu = after.node_cpu - before.node_cpu
    merged = _diff(before.metrics, after.metrics, APPLIED)
    records = _diff(before.metrics, after.metrics, CONSUMED)
    offered = float(produced["window"]["deltas"]) / float(produced["window_s"])
    merged_per_s = merged / wall
    lag_before, lag_after = buckets(before.metrics, LAG), buckets(after.metrics, LAG)
    p99 = bucket_quantile(lag_before, lag_after, 0.99)
    kept_up = (
        bool(offered) and merged_per_s >= KEPT_UP_SHARE * offered and (p99 is None or p99 <= 1.0)
    )
    broker = (
        None
        if after.broker_cpu is None or before.broker_cpu is None
        else round((after.broker_cpu - before.broker_cpu) / wall, 3)
    )
    return {
        "writers": writers,
        "target_deltas_per_s": round(writers * rate),
        "offered_deltas_per_s": round(offered),
        "offered_share_of_target": round(offered / (writers * rate), 3),
        "rate_held": offered >= HELD_SHARE * writers * rate,
        "merged_deltas_per_s": round(merged_per_s),
        "merged_share_of_offered": round(merged_per_s / offered, 3) if offered else None,
        "records_per_s": round(records / wall),
        "deltas_per_record": round(merged / records, 2) if records else None,
        "node_cores": round(node_cpu / wall, 4),
        "node_cpu_us_per_delta": round(node_cpu / merged * 1e6, 2) if merged else None,
        "kept_up": kept_up,
        "sync_lag_p50_ms_bound": _ms(bucket_quantile(lag_before, lag_after, 0.5)),
        "sync_lag_p99_ms_bound": _ms(p99),
        "window_s": round(wall, 2),
        "other_cores": {
            "producer": round((after.producer_cpu - before.producer_cpu) / wall, 3),
            "broker": broker,
            "machine_busy": round((after.busy - before.busy) / wall, 3),
        },
        "node_tracked_keys_at_end": total(after.metrics, "ratelimiter_tracked_keys"),
    }


def _drain(proc: NodeProcess, produced: int, deadline_s: float) -> Samples:
    """Scrape until the node has merged `produced` deltas or `deadline_s` passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        samples = scrape(proc.url)
        if (total(samples, APPLIED) or 0.0) >= produced or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def run_point(bench: FleetBench, writers: int, index: int) -> dict[str, Any]:
    """One writer count: fresh topic, observer node, producer; the window's figures."""
    a = bench.args
    kafka = bench.kafka()
    topic = bench.fresh_topic(f"fleet-{writers}")
    asyncio.run(ensure_state_topic(kafka, topic, PARTITIONS))
    work = bench.work_dir
    files = {n: work / f"producer-{writers}.{n}" for n in ("ready", "go", "output")}
    for path in files.values():
        path.unlink(missing_ok=True)
    spec = {
        "kafka": kafka, "topic": topic, "writers": writers, "rate": a.deltas_per_writer_s,
        "repeat_share": a.repeat_share, "warmup": a.warmup, "secs": a.secs,
        "seed": a.seed + index, "table": str(work / "partitions.bin"),
        **{n: str(p) for n, p in files.items()},
    }  # fmt: skip
    log = work / f"producer-{writers}.log"
    command = [sys.executable, "-c", PRODUCER_CODE, json.dumps(spec)]
    with contextlib.ExitStack() as stack:
        producer = stack.enter_context(child(command, log))
        bench.say(f"{writers} writers: topic {topic}, starting the node and the producer")
        proc = stack.enter_context(node(NODE_ID, kafka, node_args(topic), work))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not files["ready"].exists():
            if producer.poll() is not None:
                raise BenchError(f"the producer exited with {producer.returncode}: {_tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"the producer was not ready within {READY_TIMEOUT_S} s")
            time.sleep(0.05)
        t0 = time.monotonic() + 0.2
        files["go"].with_suffix(".tmp").write_text(repr(t0))
        files["go"].with_suffix(".tmp").replace(files["go"])
        brokers = bench.broker_pids()
        load = round(os.getloadavg()[0], 2)
        bench.say(f"{writers} writers: producing (load avg {load:.2f}); window {a.secs:g} s "
                  f"after {a.warmup:g} s warm-up")  # fmt: skip
        _sleep_until(t0 + a.warmup, producer, log)
        before = _sample(proc, producer.pid, brokers)
        _sleep_until(t0 + a.warmup + a.secs, producer, log)
        after = _sample(proc, producer.pid, brokers)
        try:
            producer.wait(timeout=TAIL_S + 60)
        except subprocess.TimeoutExpired:
            raise BenchError("the producer did not finish in time") from None
        if producer.returncode != 0 or not files["output"].exists():
            raise BenchError(f"the producer failed ({producer.returncode}): {_tail(log)}")
        produced = json.loads(files["output"].read_text())
        acked = int(produced["whole"]["deltas"]) if not produced["records_failed"] else -1
        final = _drain(proc, max(acked, 0), DRAIN_S)
    point = summarize_point(writers, float(a.deltas_per_writer_s), before, after, produced)
    merged_all = round(total(final, APPLIED) or 0.0)
    point["load_avg_1m_at_start"] = load
    point["producer"] = {k: v for k, v in produced.items() if k not in ("window_s",)}
    point["check"] = {
        "deltas_produced": int(produced["whole"]["deltas"]),
        "deltas_merged": merged_all,
        "all_merged": merged_all == int(produced["whole"]["deltas"]),
        "poison_records": round(total(final, POISON) or 0.0),
    }
    return point


def run_points(bench: FleetBench) -> list[dict[str, Any]]:
    """Every writer count in turn; one that fails is reported and the others still run."""
    points = []
    for index, writers in enumerate(bench.args.writers):
        try:
            point = run_point(bench, writers, index)
        except FAILURES as exc:
            bench.say(f"{writers} writers failed: {exc}")
            bench.skipped[f"writers_{writers}"] = str(exc)
            continue
        bench.say(
            f"{writers} writers: offered {point['offered_deltas_per_s']}/s, merged "
            f"{point['merged_deltas_per_s']}/s, node {point['node_cores']:.3f} cores, "
            f"{point['node_cpu_us_per_delta']} us/delta"
        )
        points.append(point)
    return points


# -- command line and report -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m stress_test.bench_fleet`."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="CPU one node spends merging its peers' deltas as the number of writers "
        "grows (simulated writers producing to a real broker), and the fleet size at which "
        "merging takes half a core.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="writers 3,6; 4 s windows, 2 s warm-up")
    p.add_argument(
        "--writers",
        type=parse_writers,
        metavar="LIST",
        help="writer counts (default 3,6,12,25,50; quick 3,6)",
    )
    p.add_argument(
        "--deltas-per-writer-s",
        type=float,
        default=DEFAULT_RATE,
        metavar="N",
        help=f"distinct-user deltas per second each writer publishes ({DEFAULT_RATE:g})",
    )
    p.add_argument("--secs", type=float, help="measured seconds per writer count (15; quick 4)")
    p.add_argument("--warmup", type=float, help="seconds before the window (5; quick 2)")
    p.add_argument(
        "--repeat-share",
        type=float,
        default=0.1,
        help="share of deltas for a user the writer admitted earlier in the epoch (0.1)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the writers' choices (1)")
    p.add_argument(
        "--kafka",
        metavar="HOST:PORT",
        help="an existing broker (default: start a local one on a free port)",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options with --quick defaults filled in."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    if args.writers is None:
        args.writers = list(QUICK_WRITERS if quick else DEFAULT_WRITERS)
    if args.secs is None:
        args.secs = 4.0 if quick else 15.0
    if args.warmup is None:
        args.warmup = 2.0 if quick else 5.0
    if args.secs < 1:
        parser.error("--secs must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if not 0 < args.deltas_per_writer_s <= 100_000:
        parser.error("--deltas-per-writer-s must be in (0, 100000]")
    if not 0 <= args.repeat_share < 1:
        parser.error("--repeat-share must be in [0, 1)")
    return args


NOTES = [
    "writers: one producer process simulates every writer; each is a distinct replica id "
    "that flushes every 20 ms (4 phase groups 5 ms apart) one batch record per partition "
    "holding a delta per user it admitted since its previous flush, encoded with "
    "service.replication.codec as Replicator._encode_batches does (rule 'default', "
    "since = previous flush, entries [int(t), floor, p, 0] of the node's token bucket)",
    "users: fresh ids (never sent before in the run) except repeat_share of deltas, which "
    "name a user the same writer admitted earlier in the same epoch (p grows, the floor "
    "follows the bucket's refill); so most deltas are new keys to the node",
    "Kafka batching: the records of the writers of one phase group share one produce batch "
    "per partition; real writers each send their own (a per-record-batch cost of the node's "
    "consumer that is not in these figures)",
    "node_cores: the node's CPU seconds (utime+stime, /proc) over the window's wall time; "
    "the node admits nothing, so this is merging (fetch, decode, apply, sweep) plus its idle "
    "work (flush loop, probes, /metrics scrapes); the producer's and the broker's CPU are "
    "reported under other_cores and not counted",
    "merged_deltas_per_s, records_per_s: ratelimiter_deltas_applied_total and "
    "ratelimiter_records_consumed_total over the window; sync lag: upper bounds of the "
    "ratelimiter_sync_lag_seconds buckets holding p50/p99 (includes the 20 ms flush interval)",
    f"kept_up: merged >= {KEPT_UP_SHARE} x offered and sync lag p99 <= 1 s; rate_held: "
    f"offered >= {HELD_SHARE} x target; the fit uses the points where the node kept up",
    "fit: cores = a + b x merged deltas/s; per-record costs are folded into b, valid at this "
    "per-writer rate (records/s grow with writers, not with the rate)",
    "check: every delta produced in the run (warm-up and tail included) against the node's "
    "total merged after the producer stopped, and records the node refused as poison",
]


def render_table(report: dict[str, Any]) -> str:
    """The report as readable text."""
    results = report["results"]
    lines = [
        *header_lines(report),
        "",
        f"{'writers':>7}{'target/s':>10}{'offered/s':>11}{'merged/s':>10}{'records/s':>11}"
        f"{'cores':>8}{'us/delta':>10}{'lag p50/p99 ms':>16}{'kept up':>9}",
    ]
    for p in results["points"]:
        lag = f"{p['sync_lag_p50_ms_bound']}/{p['sync_lag_p99_ms_bound']}"
        lines.append(
            f"{p['writers']:>7}{p['target_deltas_per_s']:>10}{p['offered_deltas_per_s']:>11}"
            f"{p['merged_deltas_per_s']:>10}{p['records_per_s']:>11}{p['node_cores']:>8.3f}"
            f"{p['node_cpu_us_per_delta'] or 0:>10.2f}{lag:>16}{'yes' if p['kept_up'] else 'NO':>9}"
        )
    fit = results["fit"]
    lines.append("")
    if fit:
        lines.append(
            f"fit: cores = {fit['a_cores']:.4f} + {fit['b_us_per_delta']:.3f}e-6 x deltas/s "
            f"(r2 {fit['r2']}, {fit['used']})"
        )
    half = results["half_core"]
    lines.append(
        f"half a core at {half['writers']} writers x {half['per_writer_deltas_per_s']:g} "
        f"deltas/s = {half['deltas_per_s']} deltas/s ({half['note']})"
    )
    lines += [f"skipped {name}: {reason}" for name, reason in report["skipped"].items()]
    return "\n".join(lines)


def results_of(points: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    """The points, the fit over them and the half-core fleet size."""
    fit, used = fit_points(points)
    return {
        "points": points,
        "fit": None
        if fit is None
        else {
            "a_cores": round(fit.a, 4),
            "b_cores_per_delta_per_s": fit.b,
            "b_us_per_delta": round(fit.b * 1e6, 3),
            "r2": None if fit.r2 is None else round(fit.r2, 4),
            "points": fit.points,
            "used": used,
        },
        "half_core": half_core(fit, rate, [int(p["writers"]) for p in points]),
    }


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Every writer count; always stops what was started (producer, node, then broker)."""
    started = time.monotonic()
    report: dict[str, Any] = {
        **report_head("stress_test.bench_fleet", argv),
        "settings": {
            "writers": args.writers,
            "deltas_per_writer_s": args.deltas_per_writer_s,
            "secs": args.secs,
            "warmup_s": args.warmup,
            "repeat_share": args.repeat_share,
            "flush_ms": FLUSH_S * 1000,
            "phase_groups": PHASES,
            "partitions": PARTITIONS,
            "node_args": ["--node-id", NODE_ID, *node_args("<fresh topic>")],
            "kafka": args.kafka or "a local broker started here",
        },
    }
    points: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_fleet-")))
        bench = FleetBench(args, work_dir, stack, None)
        try:
            points = run_points(bench)
        except FAILURES as exc:
            bench.say(f"failed: {exc}")
            bench.skipped["run"] = str(exc)
    report.update(
        results=results_of(points, float(args.deltas_per_writer_s)),
        skipped=bench.skipped,
        notes=NOTES,
        elapsed_s=round(time.monotonic() - started, 1),
        load_avg_at_end=[round(x, 2) for x in os.getloadavg()],
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 with a report (failed writer counts say why), 2 on bad options."""
    return bench_main(PROG, argv, parse_args, run, render_table)


if __name__ == "__main__":
    sys.exit(main())
