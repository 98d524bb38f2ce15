"""What replicating costs a node per distinct user, in process: decisions for new users
(one admission each), then `Replicator.flush` every 20 ms of cluster time over a state log
that acknowledges at once (no broker, no sockets), against the same decisions with the
marks cleared as a standalone node does (`Engine.forget_changes`).

Run `python -m stress_test.bench_flush [--keys-per-flush K] [--flushes F] [--repeats R]
[--json]`. Modes run interleaved, repeat after repeat, each on a fresh engine; the median
process-CPU microseconds per key of each is printed, and the flush's own share. The GC
thresholds are the node's (`serve`). Reading and merging peers' records is not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Sequence

from crdt.policy import SyncTiming
from service.cli.serve import GC_THRESHOLDS
from service.engine import Engine
from service.metrics import Metrics
from service.replication.codec import partition_for_user
from service.replication.replicator import Replicator
from service.replication.statelog import OutRecord
from service.rules.model import RuleSet, default_rule
from service.testing import ManualClock

PARTITIONS = 12
FLUSH_S = 0.02
MODES = ("flush", "forget")


class AckingLog:
    """A state log that acknowledges every publish at once and keeps nothing."""

    stamps = False
    partitions = PARTITIONS

    def __init__(self) -> None:
        self.records = 0

    async def publish(self, records: Sequence[OutRecord]) -> int | None:
        self.records += len(records)
        return None


def replicator() -> Replicator:
    """A synced node's replicator (flush 20 ms, snapshots every 5 s) on its own engine."""
    clock = ManualClock()
    rules = RuleSet(default=default_rule("token_bucket", 10.0, 20, 1.0))
    engine = Engine(rules, "bench/1", clock, SyncTiming(1.0, 3.0), max_keys=10_000_000)
    return Replicator(
        engine,
        AckingLog(),  # type: ignore[arg-type]  # publish is all a flush calls
        Metrics("bench"),
        clock,
        lambda user: partition_for_user(user, PARTITIONS),
        flush_s=FLUSH_S,
        snapshot_s=5.0,
        max_buffered=100_000,
    )


async def per_key_us(mode: str, keys_per_flush: int, flushes: int) -> tuple[float, float]:
    """(CPU µs per key in all, of it in the flush or the clearing) for one run of `mode`."""
    r = replicator()
    engine, clock = r.engine, r.clock
    assert isinstance(clock, ManualClock)
    rule = engine.rules.default
    n = 0
    in_flush = 0.0
    gc.collect()
    started = time.process_time()
    for _ in range(flushes):
        for _ in range(keys_per_flush):
            n += 1
            engine.decide(f"user-{n}", 1, rule)
        clock.advance(FLUSH_S)
        t = time.process_time()
        if mode == "flush":
            await r.flush()
        else:
            engine.forget_changes(clock())
        in_flush += time.process_time() - t
    elapsed = time.process_time() - started
    if mode == "flush" and not r.log.records:  # type: ignore[attr-defined]
        raise SystemExit("the flushes published nothing")
    return elapsed / n * 1e6, in_flush / n * 1e6


async def run(keys_per_flush: int, flushes: int, repeats: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    old = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        for _ in range(repeats):
            for mode in MODES:
                samples[mode].append(await per_key_us(mode, keys_per_flush, flushes))
    finally:
        gc.set_threshold(*old)
    out = {
        mode: {
            "us_per_key": round(statistics.median(s[0] for s in runs), 2),
            "us_per_key_in_flush": round(statistics.median(s[1] for s in runs), 2),
        }
        for mode, runs in samples.items()
    }
    out["replication"] = {
        "us_per_key": round(out["flush"]["us_per_key"] - out["forget"]["us_per_key"], 2)
    }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--keys-per-flush", type=int, default=250, help="new users a flush (250)")
    p.add_argument("--flushes", type=int, default=400, help="flushes per run (400)")
    p.add_argument("--repeats", type=int, default=7, help="runs per mode (7)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    figures = asyncio.run(run(args.keys_per_flush, args.flushes, args.repeats))
    if args.json:
        print(json.dumps({"figures": figures, **vars(args)}))
        return 0
    print(
        f"median CPU microseconds per new user ({args.keys_per_flush} a flush x "
        f"{args.flushes} flushes x {args.repeats} runs)"
    )
    for mode in MODES:
        f = figures[mode]
        print(f"{mode:<8} {f['us_per_key']:>8.2f} (in the flush: {f['us_per_key_in_flush']:.2f})")
    print(f"replication costs {figures['replication']['us_per_key']:.2f} µs a new user")
    return 0


if __name__ == "__main__":
    sys.exit(main())
