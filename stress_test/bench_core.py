"""Decision-core benchmark: crdt.BucketStore against the `limits` library and a dict of floats.

`python -m stress_test.bench_core --json` prints one JSON object: decisions per second on
1,000 hot keys and on 1,000,000 keys, memory per tracked key (tracemalloc), remote merge
records per second, the `limits` library's in-memory moving and fixed windows on the same
key sequence, a plain dict-of-floats GCRA (the floor), their ratios and the machine. Every
rate is the median of several repetitions in this one process. `--quick` shrinks all sizes
(a smoke run, not a measurement).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import limits
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from crdt.delta import Delta
from crdt.policy import BucketPolicy, SyncTiming
from crdt.store import BucketStore

START = 1000.0  # cluster seconds; moderate magnitudes keep float seconds precise
STEP = 1e-6  # simulated seconds between decisions: time advances as it would at 1M/s
# Hot-key runs: 1,000 keys at 1M decisions/s is 1,000 requests/s per key; a bucket of
# 2,000/s (burst 100) and a window of 1,000/s admit almost all of them, as in normal
# operation. The "denied" pair runs 10/s, where almost every decision is a denial.
HOT_RATE, HOT_BURST, HOT_ITEM = 2000.0, 100, "1000/second"
DENY_RATE, DENY_BURST, DENY_ITEM = 10.0, 10, "10/second"


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does (calls per repetition, keys)."""

    repeat: int
    hot_keys: int
    hot_calls: int
    many_keys: int
    many_calls: int
    memory_keys: int
    active_keys: int
    merge_records: int
    limits_calls: int


FULL = Sizes(
    repeat=5,
    hot_keys=1_000,
    hot_calls=300_000,
    many_keys=1_000_000,
    many_calls=300_000,
    memory_keys=1_000_000,
    active_keys=20_000,
    merge_records=200_000,
    limits_calls=100_000,
)
QUICK = Sizes(
    repeat=1,
    hot_keys=100,
    hot_calls=5_000,
    many_keys=5_000,
    many_calls=5_000,
    memory_keys=5_000,
    active_keys=1_000,
    merge_records=2_000,
    limits_calls=2_000,
)


@dataclass(frozen=True)
class Timed:
    """A figure to measure: `once()` runs `calls` operations and returns the seconds."""

    calls: int
    once: Callable[[], float]


def _median_rates(figures: dict[str, Timed], runs: int) -> dict[str, float]:
    """Median of calls / seconds per figure over `runs` rounds. Figures take turns within
    each round, so load from other processes drifting over time hits all of them alike
    and their ratios stay fair."""
    rates: dict[str, list[float]] = {name: [] for name in figures}
    for _ in range(runs):
        for name, figure in figures.items():
            gc.collect()
            rates[name].append(figure.calls / figure.once())
    return {name: statistics.median(values) for name, values in rates.items()}


def _median_rate(runs: int, figure: Timed) -> float:
    return _median_rates({"figure": figure}, runs)["figure"]


def _sequence(keys: Sequence[str], calls: int, seed: int) -> list[str]:
    """The same uniformly random key sequence for every implementation."""
    rng = random.Random(seed)
    return [keys[rng.randrange(len(keys))] for _ in range(calls)]


def _keys(count: int) -> list[str]:
    return [f"user-{i:06d}" for i in range(count)]


# -- the crdt core -------------------------------------------------------------------------


def _decide(store: BucketStore, sequence: list[str], now: float) -> tuple[float, float, int]:
    """Run `acquire(key, 1, now)` over the sequence; (seconds, end time, admitted)."""
    acquire = store.acquire
    admitted = 0
    started = time.perf_counter()
    for key in sequence:
        now += STEP
        if acquire(key, 1, now) >= 0:
            admitted += 1
    return time.perf_counter() - started, now, admitted


def bench_decisions(sizes: Sizes, rate: float, burst: int) -> tuple[Timed, Callable[[], float]]:
    """Decisions on hot keys, one store across repetitions; and the admitted fraction."""
    store = BucketStore(BucketPolicy(rate, burst), "bench/1")
    sequence = _sequence(_keys(sizes.hot_keys), sizes.hot_calls, seed=1)
    now = START
    _, now, _ = _decide(store, sequence[: len(sequence) // 10], now)  # warm up
    admitted_total = 0
    calls_total = 0

    def once() -> float:
        nonlocal now, admitted_total, calls_total
        seconds, now, admitted = _decide(store, sequence, now)
        admitted_total += admitted
        calls_total += len(sequence)
        store.flush(now)
        store.sweep(now)
        return seconds

    return Timed(sizes.hot_calls, once), lambda: admitted_total / max(calls_total, 1)


def bench_decisions_with_flush(sizes: Sizes) -> Timed:
    """Hot-key decisions/s including a flush (deltas out) every 20 ms of cluster time."""
    store = BucketStore(BucketPolicy(HOT_RATE, HOT_BURST), "bench/1")
    sequence = _sequence(_keys(sizes.hot_keys), sizes.hot_calls, seed=1)
    per_flush = int(0.02 / STEP)
    now = START

    def once() -> float:
        nonlocal now
        acquire, flush = store.acquire, store.flush
        started = time.perf_counter()
        for i, key in enumerate(sequence):
            now += STEP
            acquire(key, 1, now)
            if i % per_flush == 0:
                flush(now)
        return time.perf_counter() - started

    return Timed(sizes.hot_calls, once)


def bench_many_keys(sizes: Sizes) -> tuple[float, float]:
    """(decisions/s over `many_keys` tracked keys picked uniformly at random, dirty keys
    flushed per second). Cache-unfriendly, and most decisions are a key's first in its
    epoch, so they pay the epoch roll too."""
    keys = _keys(sizes.many_keys)
    store = BucketStore(BucketPolicy(HOT_RATE, HOT_BURST), "bench/1", max_keys=sizes.many_keys + 1)
    now = START
    for key in keys:  # every key tracked (and dirty) before timing
        now += STEP
        store.acquire(key, 1, now)
    gc.collect()
    started = time.perf_counter()
    flushed = len(store.flush(now))
    flush_rate = flushed / (time.perf_counter() - started)
    sequence = _sequence(keys, sizes.many_calls, seed=2)

    def once() -> float:
        nonlocal now
        seconds, now, _ = _decide(store, sequence, now)
        return seconds

    return _median_rate(min(sizes.repeat, 3), Timed(sizes.many_calls, once)), flush_rate


def _traced_bytes_per_key(keys: list[str], times: Sequence[float]) -> float:
    """Traced bytes of a store per key after one admitted request per key at each of
    `times`, each round followed by a flush and a full sweep, as a node runs them."""
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        store = BucketStore(BucketPolicy(HOT_RATE, HOT_BURST), "bench/1", max_keys=len(keys) + 1)
        for t in times:
            now = t
            for key in keys:
                now += STEP
                store.acquire(key, 1, now)
            store.flush(now)
            store.sweep(now, budget=len(keys))
        gc.collect()
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(store) == len(keys)
    return (used - base) / len(keys)


def bench_memory(sizes: Sizes) -> tuple[float, float, float]:
    """Bytes per tracked key (tracemalloc): (with its key string, state alone, state of a
    key that stays busy in every epoch).

    The first two track each key after one admitted request and a flush (the dirty set
    is empty between flushes). Key strings are created before tracing starts, so traced
    bytes are the store's (dict slot, KeyState, its float); the strings' own size is
    added for the total. The third keeps `active_keys` keys busy for 8 epochs: each then
    holds the epochs not yet sealed (seal_after / epoch of them) and its folded totals.
    """
    keys = _keys(sizes.memory_keys)
    strings = sum(sys.getsizeof(k) for k in keys) / len(keys)
    state = _traced_bytes_per_key(keys, [START])
    timing = SyncTiming()
    active = _traced_bytes_per_key(
        _keys(sizes.active_keys), [START + i * timing.epoch for i in range(8)]
    )
    return state + strings, state, active


def bench_merge(sizes: Sizes) -> float:
    """Remote Delta records merged per second into a fresh store.

    A writer admits over the hot keys and flushes every 20 ms of cluster time, so cells
    grow from record to record and epochs roll as they would. The reader sweeps between
    flushes as a node does (untimed: that is maintenance, not merging).
    """
    writer = BucketStore(BucketPolicy(HOT_RATE, HOT_BURST), "bench/2", SyncTiming())
    keys = _keys(sizes.hot_keys)
    rng = random.Random(3)
    batches: list[tuple[float, list[Delta]]] = []
    count = 0
    now = START
    while count < sizes.merge_records:
        for _ in range(sizes.hot_keys):
            now += STEP * 20
            writer.acquire(keys[rng.randrange(len(keys))], 1, now)
        now += 0.02
        batch = writer.flush(now)[: sizes.merge_records - count]
        batches.append((now, batch))
        count += len(batch)

    def once() -> float:
        reader = BucketStore(BucketPolicy(HOT_RATE, HOT_BURST), "bench/1", SyncTiming())
        apply = reader.apply
        elapsed = 0.0
        for at, batch in batches:
            started = time.perf_counter()
            for delta in batch:
                apply(delta, at)
            elapsed += time.perf_counter() - started
            reader.sweep(at, budget=len(batch))
        return elapsed

    return _median_rate(sizes.repeat, Timed(count, once))


# -- the yardsticks --------------------------------------------------------------------------


def bench_limits(sizes: Sizes, strategy: str, item_text: str) -> tuple[Timed, Callable[[], None]]:
    """hit() per call of the `limits` library's in-memory strategy (it reads the clock)."""
    storage = MemoryStorage()
    limiter = (
        MovingWindowRateLimiter(storage)
        if strategy == "moving"
        else FixedWindowRateLimiter(storage)
    )
    item = limits.parse(item_text)
    sequence = _sequence(_keys(sizes.hot_keys), sizes.limits_calls, seed=1)

    def once() -> float:
        hit = limiter.hit
        started = time.perf_counter()
        for key in sequence:
            hit(item, key)
        return time.perf_counter() - started

    def close() -> None:
        storage.reset()
        timer = getattr(storage, "timer", None)
        if timer is not None:
            timer.cancel()

    return Timed(sizes.limits_calls, once), close


def bench_naive(sizes: Sizes) -> Timed:
    """A dict of floats (GCRA TAT per key): the least a Python token bucket can do."""
    interval = 1.0 / HOT_RATE
    limit = HOT_BURST * interval
    sequence = _sequence(_keys(sizes.hot_keys), sizes.hot_calls, seed=1)
    tats: dict[str, float] = {}
    now = START

    def once() -> float:
        nonlocal now
        get = tats.get
        started = time.perf_counter()
        for key in sequence:
            now += STEP
            tat = get(key, now)
            if tat < now:
                tat = now
            if tat + interval - now <= limit:
                tats[key] = tat + interval
        return time.perf_counter() - started

    return Timed(sizes.hot_calls, once)


# -- report ------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(sizes: Sizes) -> dict[str, object]:
    """Every figure, in one process, in a fixed order."""
    started = time.perf_counter()
    hot, admitted = bench_decisions(sizes, HOT_RATE, HOT_BURST)
    hot_denied, admitted_denied = bench_decisions(sizes, DENY_RATE, DENY_BURST)
    moving_timed, close_moving = bench_limits(sizes, "moving", HOT_ITEM)
    fixed_timed, close_fixed = bench_limits(sizes, "fixed", HOT_ITEM)
    denied_timed, close_denied = bench_limits(sizes, "moving", DENY_ITEM)
    try:
        rates = _median_rates(
            {
                "decisions": hot,
                "limits_moving": moving_timed,
                "limits_fixed": fixed_timed,
                "naive": bench_naive(sizes),
                "decisions_denied": hot_denied,
                "limits_moving_denied": denied_timed,
                "with_flush": bench_decisions_with_flush(sizes),
            },
            sizes.repeat,
        )
    finally:
        for close in (close_moving, close_fixed, close_denied):
            close()
    decisions, moving, fixed, naive = (
        rates["decisions"],
        rates["limits_moving"],
        rates["limits_fixed"],
        rates["naive"],
    )
    many, flush_rate = bench_many_keys(sizes)
    merge = bench_merge(sizes)
    bytes_per_key, bytes_state, bytes_active = bench_memory(sizes)
    return {
        "decisions_per_s": round(decisions),
        "admitted_fraction": round(admitted(), 4),
        "decisions_per_s_with_flush": round(rates["with_flush"]),
        "decisions_per_s_1m_keys": round(many),
        "flush_deltas_per_s": round(flush_rate),
        "decisions_per_s_mostly_denied": round(rates["decisions_denied"]),
        "admitted_fraction_mostly_denied": round(admitted_denied(), 4),
        "bytes_per_key": round(bytes_per_key, 1),
        "bytes_per_key_state": round(bytes_state, 1),
        "bytes_per_key_state_busy_every_epoch": round(bytes_active, 1),
        "merge_records_per_s": round(merge),
        "limits_moving_window_per_s": round(moving),
        "limits_fixed_window_per_s": round(fixed),
        "limits_moving_window_mostly_denied_per_s": round(rates["limits_moving_denied"]),
        "naive_dict_bucket_per_s": round(naive),
        "decisions_vs_limits_moving": round(decisions / moving, 2),
        "decisions_vs_limits_fixed": round(decisions / fixed, 2),
        "decisions_vs_naive": round(decisions / naive, 3),
        "params": {
            "repeat": sizes.repeat,
            "hot_keys": sizes.hot_keys,
            "hot_calls": sizes.hot_calls,
            "many_keys": sizes.many_keys,
            "memory_keys": sizes.memory_keys,
            "active_keys": sizes.active_keys,
            "merge_records": sizes.merge_records,
            "limits_calls": sizes.limits_calls,
            "bucket": {"rate": HOT_RATE, "burst": HOT_BURST},
            "limits_item": HOT_ITEM,
            "mostly_denied": {"rate": DENY_RATE, "burst": DENY_BURST, "limits_item": DENY_ITEM},
            "step_s": STEP,
            "limits_version": limits.__version__,
        },
        "machine": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "cpu_count": os.cpu_count(),
            "cpu": _cpu_model(),
            "platform": platform.platform(),
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print a table, or one JSON object with --json."""
    parser = argparse.ArgumentParser(prog="python -m stress_test.bench_core", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--repeat", type=int, help="repetitions per figure (median)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.repeat:
        sizes = Sizes(**{**sizes.__dict__, "repeat": args.repeat})
    result = run(sizes)
    if args.json:
        print(json.dumps(result))
        return 0
    for name, value in result.items():
        if not isinstance(value, dict):
            print(f"{name:>42}  {value}")
    machine = result["machine"]
    assert isinstance(machine, dict)
    print(f"{'machine':>42}  {machine['cpu']} x{machine['cpu_count']}, Python {machine['python']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
