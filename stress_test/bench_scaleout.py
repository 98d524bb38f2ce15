"""Scale-out: one real node's merge CPU under `--replicas all` and `--replicas R` as the
simulated fleet grows, with fleet traffic proportional to its writers.

Run `python -m stress_test.bench_scaleout [--json] [--quick] [--writers 3,6,12,25,50]
[--replicas all,2] [--deltas-per-writer-s N] [--partitions P] [--secs S] [--kafka HOST:PORT]`.

For each (replicas, writers W): a fresh state topic of P partitions, ONE real node
(`fleet-observer`, it admits nothing and only merges) and ONE producer process simulating W
writers with bench_fleet's writers (the node's codec, a batch record per partition per 20 ms
flush, distinct users; each writer a fixed deltas/s). Under `--replicas R` the producer also
announces the W writers on a members topic with the membership codec (a heartbeat a second,
each naming the partitions it answers for), so the node sees W + 1 members and owns the
partitions rendezvous hashing gives it among them, as every node of such a fleet would; and a
writer admits only users of the partitions it owns, as a real fleet's node decides only for
those (others are forwarded). Only the writers sharing a partition with the node are
simulated, and only their records of the node's partitions are sent: the rest of the fleet's
records would load the broker, never the node.

The node's CPU (scheduler run time of its threads, /proc/<pid>/task/*/sched) over an idle
window before the writers start is its baseline; merge CPU = its CPU over the measured
window minus that baseline (each the median of 3 equal parts of its window).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from service.membership.codec import Member, decode_member, encode_member
from service.membership.log import KafkaMembersLog
from service.membership.rendezvous import owners
from service.replication.topic import ensure_state_topic
from stress_test.bench_fleet import (
    APPLIED,
    FAILURES,
    MAX_KEYS,
    NODE_ID,
    TAIL_S,
    FleetBench,
    FreshUsers,
    Table,
    _drain,
    _sample,
    _sleep_until,
    _tail,
    extend_table,
    linear_fit,
    load_table,
    parse_writers,
    produce,
    summarize_point,
    user_id,
    writer_node_ids,
)
from stress_test.bench_processes import (
    NODE_LIMIT,
    BenchError,
    child,
    cpu_seconds,
    node,
    pid_of,
    total,
)
from stress_test.bench_run import bench_main
from stress_test.provenance import header_lines, report_head

PROG = "python -m stress_test.bench_scaleout"
DEFAULT_WRITERS = (3, 6, 12, 25, 50)
QUICK_WRITERS = (6, 25)
DEFAULT_RATE = 100.0  # deltas/s per writer: moderate, the machine's 2 cores are shared
# Enough partitions that 51 members each own several (R = 2: about 10 each); aiokafka's
# cost per fetch grows with the partitions a node reads, so not many more.
DEFAULT_PARTITIONS = 256
HEARTBEAT_S = 1.0
EXPIRY_S = 60.0  # the node's --member-expiry-s: simulated members never expire in a run
SCAN = 20_000  # users hashed at a time when a partition's pool of fresh users runs dry
FLAT_FROM = 6  # the target: merge CPU flat within 20% from 6 writers to the largest count
FLAT_WITHIN = 0.2
SUBWINDOWS = 3
PRODUCER_CODE = (
    "import sys; from stress_test.bench_scaleout import producer_main; producer_main(sys.argv[1])"
)


# -- the users each simulated writer admits (pure) -----------------------------------------


class PartitionPools:
    """Fresh users by partition, drawn from the partition table in order: each user is
    taken once, whichever writer takes it."""

    def __init__(self, table: Table, partitions: int) -> None:
        self.table = table
        self.partitions = partitions
        self.pools: list[deque[int]] = [deque() for _ in range(partitions)]
        self.scanned = 0
        self.taken = 0

    def take_in(self, partition: int) -> tuple[str, int]:
        """A fresh user of `partition`."""
        pool = self.pools[partition]
        while not pool:
            self._scan()
        self.taken += 1
        return user_id(pool.popleft()), partition

    def _scan(self) -> None:
        end = self.scanned + SCAN
        if end > len(self.table):
            extend_table(self.table, end, self.partitions)
        pools, table = self.pools, self.table
        for i in range(self.scanned, end):
            pools[table[i]].append(i)
        self.scanned = end


class OwnedUsers:
    """A writer's fresh users: users of the partitions it owns, a partition drawn evenly
    at random for each (uniform users: each owned partition gets its share)."""

    def __init__(self, pools: PartitionPools, owned: Sequence[int], rng: random.Random) -> None:
        if not owned:
            raise ValueError("a writer that owns no partition admits nobody")
        self.pools = pools
        self.owned = list(owned)
        self.rng = rng
        self.taken = 0

    def take(self) -> tuple[str, int]:
        """The next fresh user of one of the owned partitions."""
        self.taken += 1
        return self.pools.take_in(self.owned[self.rng.randrange(len(self.owned))])


def ownership(
    writers: int, partitions: int, replicas: int
) -> tuple[list[str], dict[str, list[int]]]:
    """The writers' node ids and the partitions each member (the observer included) owns:
    the top `replicas` of the W + 1 members by rendezvous hash, as the node computes."""
    ids = writer_node_ids(writers)
    members = [NODE_ID, *ids]
    owned: dict[str, list[int]] = {m: [] for m in members}
    for p in range(partitions):
        for member in owners(p, members, replicas):
            owned[member].append(p)
    return ids, owned


# -- the producer process ------------------------------------------------------------------


async def _heartbeats(log: KafkaMembersLog, members: Sequence[Member]) -> None:
    while True:
        now_ms = int(time.time() * 1000)
        for m in members:
            beat = Member(m.node, m.replica, m.address, now_ms, m.ready)
            await log.publish(m.node.encode(), encode_member(beat))
        await asyncio.sleep(HEARTBEAT_S)


def producer_main(spec_json: str) -> None:
    """The producer process: bench_fleet's writers, each taking users of its own partitions
    under --replicas R (announced on the members topic), of every partition otherwise."""
    import uvloop

    spec = json.loads(spec_json)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    writers, rate, partitions = int(spec["writers"]), float(spec["rate"]), int(spec["partitions"])
    duration = float(spec["warmup"]) + float(spec["secs"]) + TAIL_S
    need = math.ceil(writers * rate * (duration + 1)) + 1000
    owned: dict[str, list[int]] | None = spec.get("owned")
    # Per-partition pools want more users hashed than are taken: partitions differ in load.
    table = load_table(Path(spec["table"]), need * (3 if owned else 1), partitions)
    ids: list[str] = list(spec["ids"])
    if owned is None:
        users = FreshUsers(table, partitions)
        sources: list[Any] = [users] * writers
    else:
        pools = PartitionPools(table, partitions)
        rng = random.Random(int(spec["seed"]) + 1)
        sources = [OwnedUsers(pools, owned[node_id], rng) for node_id in ids]

    async def main() -> dict[str, Any]:
        if owned is None:
            return await produce(spec, sources)
        members_log = KafkaMembersLog(spec["kafka"], spec["members_topic"], "bench-members")
        members = [
            Member(n, "sim", "127.0.0.1:9", 0, frozenset(owned[n])) for n in spec["members"]
        ]  # port 9: the observer gets no requests, so it never forwards to one
        tasks: list[asyncio.Task[None]] = []

        async def announce() -> None:
            await members_log.start()
            tasks.append(asyncio.create_task(_heartbeats(members_log, members)))

        try:
            return await produce(spec, sources, announce)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await members_log.stop()

    outcome = uvloop.run(main())
    Path(spec["output"]).write_text(json.dumps(outcome))


# -- measuring -------------------------------------------------------------------------------


def exec_seconds(pid: int) -> float:
    """CPU seconds of every live thread of `pid` from /proc/<pid>/task/*/sched (the
    scheduler's sum_exec_runtime, microsecond resolution; /proc/<pid>/stat counts 10 ms
    ticks, too coarse for a node merging a few hundred deltas a second). Falls back to
    /proc/<pid>/stat where the kernel has no sched files."""
    total_ms = 0.0
    found = False
    for sched in Path(f"/proc/{pid}/task").glob("*/sched"):
        with contextlib.suppress(OSError):
            for line in sched.read_text().splitlines():
                if line.startswith("se.sum_exec_runtime"):
                    total_ms += float(line.rpartition(":")[2])
                    found = True
                    break
    return total_ms / 1000 if found else cpu_seconds(pid)


async def _observer_ready(kafka: str, topic: str) -> frozenset[int] | None:
    """The partitions the observer last announced it answers for (None: not announced)."""
    async with KafkaMembersLog(kafka, topic, "bench-members-reader") as log:
        records = await log.read_to_end(30)
    ready = None
    for r in records:
        if r.key == NODE_ID.encode():
            ready = None if r.value is None else decode_member(r.key, r.value).ready
    return ready


def wait_owned(kafka: str, topic: str, expected: frozenset[int], timeout_s: float) -> float:
    """Seconds until the observer announces it answers for exactly `expected`."""
    start = time.monotonic()
    seen: frozenset[int] | None = None
    while time.monotonic() - start < timeout_s:
        seen = asyncio.run(_observer_ready(kafka, topic))
        if seen == expected:
            return time.monotonic() - start
        time.sleep(0.5)
    raise BenchError(
        f"the node answers for {len(seen or ())} partitions, not the {len(expected)} "
        f"rendezvous hashing gives it"
    )


def median_cores(
    pid: int, start: float, seconds: float, producer: subprocess.Popen[bytes], log: Path
) -> float:
    """The median over SUBWINDOWS equal parts of [start, start + seconds] of the cores the
    process used (a burst of the machine's other work spoils one part, not the figure)."""
    _sleep_until(start, producer, log)
    part = seconds / SUBWINDOWS
    cores = []
    for k in range(SUBWINDOWS):
        t0, cpu0 = time.monotonic(), exec_seconds(pid)
        _sleep_until(start + (k + 1) * part, producer, log)
        cores.append((exec_seconds(pid) - cpu0) / (time.monotonic() - t0))
    return statistics.median(cores)


def node_args(topic: str, partitions: int, replicas: str, members_topic: str) -> list[str]:
    """The observer's `serve` options (besides --node-id, --port, --kafka)."""
    args = [
        "--topic", topic, "--partitions", str(partitions), "--max-keys", str(MAX_KEYS),
        *NODE_LIMIT, "--log-level", "warning", "--replicas", replicas,
    ]  # fmt: skip
    if replicas != "all":
        args += [
            "--members-topic", members_topic, "--heartbeat-s", str(HEARTBEAT_S),
            "--member-expiry-s", str(EXPIRY_S),
        ]  # fmt: skip
    return args


def run_point(bench: FleetBench, replicas: str, writers: int, index: int) -> dict[str, Any]:
    """One (replicas, writers): fresh topics, producer, observer; idle then loaded."""
    a = bench.args
    kafka = bench.kafka()
    partitions = int(a.partitions)
    topic = bench.fresh_topic(f"scaleout-{replicas}-{writers}")
    members_topic = f"{topic}.members"
    asyncio.run(ensure_state_topic(kafka, topic, partitions))
    ids, owned = (
        (writer_node_ids(writers), None)
        if replicas == "all"
        else ownership(writers, partitions, int(replicas))
    )
    mine = frozenset(range(partitions)) if owned is None else frozenset(owned[NODE_ID])
    run_ids = ids
    if owned is not None:
        # Only the writers that share a partition with the node write what it reads; the
        # others' records would load the broker, never the node: they are not simulated.
        run_ids = [w for w in ids if mine & set(owned[w])]
    work = bench.work_dir
    files = {n: work / f"producer-{replicas}-{writers}.{n}" for n in ("ready", "go", "output")}
    spec = {
        "kafka": kafka, "topic": topic, "members_topic": members_topic,
        "writers": len(run_ids), "members": ids,
        "rate": a.deltas_per_writer_s, "repeat_share": a.repeat_share, "warmup": a.warmup,
        "secs": a.secs, "seed": a.seed + index, "partitions": partitions, "ids": run_ids,
        "owned": owned, "table": str(work / f"partitions-{partitions}.bin"),
        "send": None if owned is None else sorted(mine),
        **{n: str(p) for n, p in files.items()},
    }  # fmt: skip
    log = work / f"producer-{replicas}-{writers}.log"
    command = [sys.executable, "-c", PRODUCER_CODE, json.dumps(spec)]
    with contextlib.ExitStack() as stack:
        producer = stack.enter_context(child(command, log))
        deadline = time.monotonic() + 600
        while not files["ready"].exists():  # members announced before the node starts
            if producer.poll() is not None:
                raise BenchError(f"the producer exited with {producer.returncode}: {_tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError("the producer was not ready within 600 s")
            time.sleep(0.05)
        bench.say(f"replicas {replicas}, {writers} writers: starting the node")
        args = node_args(topic, partitions, replicas, members_topic)
        proc = stack.enter_context(node(NODE_ID, kafka, args, work))
        settle = 0.0
        if owned is not None:
            settle = wait_owned(kafka, members_topic, mine, 60)
        pid = pid_of(proc)
        idle_cores = median_cores(pid, time.monotonic(), a.idle_secs, producer, log)
        t0 = time.monotonic() + 0.2
        files["go"].with_suffix(".tmp").write_text(repr(t0))
        files["go"].with_suffix(".tmp").replace(files["go"])
        load = round(os.getloadavg()[0], 2)
        brokers = bench.broker_pids()
        _sleep_until(t0 + a.warmup, producer, log)
        before = _sample(proc, producer.pid, brokers)
        loaded_cores = median_cores(pid, t0 + a.warmup, a.secs, producer, log)
        after = _sample(proc, producer.pid, brokers)
        try:
            producer.wait(timeout=TAIL_S + 60)
        except subprocess.TimeoutExpired:
            raise BenchError("the producer did not finish in time") from None
        if producer.returncode != 0 or not files["output"].exists():
            raise BenchError(f"the producer failed ({producer.returncode}): {_tail(log)}")
        produced = json.loads(files["output"].read_text())
        final = _drain(proc, int(produced["whole"]["deltas"]) * len(mine) // partitions, 5)
    point = summarize_point(writers, float(a.deltas_per_writer_s), before, after, produced)
    point["node_cores"] = round(loaded_cores, 4)
    merge = loaded_cores - idle_cores
    window_s = float(produced["window_s"])
    point.update(
        fleet_writers=writers,
        writers_simulated=len(run_ids),
        # Deltas/s the simulated writers admitted (sent to the node's partitions or not).
        generated_deltas_per_s=round(
            (produced["window"]["deltas"] + produced["unsent_deltas_window"]) / window_s
        ),
        replicas=replicas,
        members=writers + 1,
        owned_partitions=len(mine),
        expected_owned=round(
            partitions if replicas == "all" else partitions * int(replicas) / (writers + 1), 1
        ),
        idle_cores=round(idle_cores, 4),
        merge_cores=round(merge, 4),
        # Merge cores had this node owned exactly its expected share R * P / (W + 1).
        merge_cores_at_expected_share=round(
            merge * (partitions * int(replicas) / (writers + 1)) / len(mine), 4
        )
        if owned is not None and mine
        else round(merge, 4),
        merge_us_per_delta=(
            round(merge / point["merged_deltas_per_s"] * 1e6, 2)
            if point["merged_deltas_per_s"]
            else None
        ),
        owners_settled_s=round(settle, 2),
        load_avg_1m_at_start=load,
        deltas_merged_total=round(total(final, APPLIED) or 0.0),
        records_failed=produced["records_failed"],
        dropped_deltas=produced["dropped_deltas"],
        unsent_deltas=produced["unsent_deltas"],
    )
    return point


# -- report ----------------------------------------------------------------------------------


def curves(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per replicas setting: merge cores by writers, the linear fit on writers, and the
    flatness (largest / smallest merge cores from FLAT_FROM writers on); the ratio of
    replicas R to all at each writer count."""
    by: dict[str, dict[int, Mapping[str, Any]]] = {}
    for p in points:
        by.setdefault(str(p["replicas"]), {})[int(p["writers"])] = p
    out: dict[str, Any] = {"modes": {}, "ratio_to_all": {}}
    for mode, rows in by.items():
        ws = sorted(rows)
        fit = linear_fit([float(w) for w in ws], [float(rows[w]["merge_cores"]) for w in ws])
        flat = [float(rows[w]["merge_cores"]) for w in ws if w >= FLAT_FROM]
        spread = (max(flat) / min(flat) - 1) if len(flat) >= 2 and min(flat) > 0 else None
        even = [float(rows[w]["merge_cores_at_expected_share"]) for w in ws if w >= FLAT_FROM]
        spread_even = (max(even) / min(even) - 1) if len(even) >= 2 and min(even) > 0 else None
        first = float(rows[ws[0]]["merge_cores"]) if ws else 0.0
        base_w = min((w for w in ws if w >= FLAT_FROM), default=None)
        above = (
            max(float(rows[w]["merge_cores"]) for w in ws if w >= FLAT_FROM)
            / float(rows[base_w]["merge_cores"])
            - 1
            if base_w is not None and float(rows[base_w]["merge_cores"]) > 0
            else None
        )
        out["modes"][mode] = {
            "growth_first_to_last": (
                round(float(rows[ws[-1]]["merge_cores"]) / first - 1, 3) if first > 0 else None
            ),
            # The most any larger fleet's merge CPU exceeds that of FLAT_FROM writers.
            f"most_above_{FLAT_FROM}_writers": None if above is None else round(above, 3),
            "never_20pct_above": None if above is None else above <= FLAT_WITHIN,
            "writers": ws,
            "merge_cores": [rows[w]["merge_cores"] for w in ws],
            "fit_cores_per_writer": None if fit is None else round(fit.b, 5),
            "fit_r2": None if fit is None or fit.r2 is None else round(fit.r2, 3),
            f"spread_from_{FLAT_FROM}_writers": None if spread is None else round(spread, 3),
            "flat_within_20pct": None if spread is None else spread <= FLAT_WITHIN,
            "merge_cores_at_expected_share": [rows[w]["merge_cores_at_expected_share"] for w in ws],
            "spread_at_expected_share": None if spread_even is None else round(spread_even, 3),
        }
    base = by.get("all", {})
    for mode, rows in by.items():
        if mode == "all":
            continue
        out["ratio_to_all"][mode] = {
            w: round(float(rows[w]["merge_cores"]) / float(base[w]["merge_cores"]), 3)
            for w in sorted(rows)
            if w in base and float(base[w]["merge_cores"]) > 0
        }
    return out


def render_table(report: dict[str, Any]) -> str:
    """The report as readable text."""
    lines = [
        *header_lines(report),
        "",
        f"{'R':>4}{'writers':>8}{'simulated':>10}{'owned/exp':>11}{'admitted/s':>11}"
        f"{'to node/s':>10}{'merged/s':>9}"
        f"{'cores':>8}{'idle':>7}{'merge':>8}{'us/delta':>9}{'kept up':>8}",
    ]
    for p in report["results"]["points"]:
        lines.append(
            f"{p['replicas']:>4}{p['writers']:>8}{p['writers_simulated']:>10}"
            f"{p['owned_partitions']:>6}/{p['expected_owned']:<5}{p['generated_deltas_per_s']:>10}"
            f"{p['offered_deltas_per_s']:>10}{p['merged_deltas_per_s']:>9}"
            f"{p['node_cores']:>8.3f}{p['idle_cores']:>7.3f}{p['merge_cores']:>8.3f}"
            f"{p['merge_us_per_delta'] or 0:>9.1f}{'yes' if p['kept_up'] else 'NO':>8}"
        )
    c = report["results"]["curves"]
    lines.append("")
    for mode, m in c["modes"].items():
        lines.append(
            f"replicas {mode}: merge cores {m['merge_cores']} at writers {m['writers']}; "
            f"fit {m['fit_cores_per_writer']} cores/writer (r2 {m['fit_r2']}); spread from "
            f"{FLAT_FROM} writers {m[f'spread_from_{FLAT_FROM}_writers']}, at most "
            f"{m[f'most_above_{FLAT_FROM}_writers']} above {FLAT_FROM} writers; at the expected "
            f"share {m['merge_cores_at_expected_share']}, spread {m['spread_at_expected_share']}"
        )
    for mode, ratios in c["ratio_to_all"].items():
        lines.append(f"replicas {mode} / all: {ratios}")
    lines += [f"skipped {name}: {reason}" for name, reason in report["skipped"].items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="writers 6,25; 4 s windows")
    p.add_argument("--writers", type=parse_writers, metavar="LIST")
    p.add_argument(
        "--replicas", default="all,2", help="settings to compare, comma-separated (all,2)"
    )
    p.add_argument("--deltas-per-writer-s", type=float, default=DEFAULT_RATE, metavar="N")
    p.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    p.add_argument("--secs", type=float, help="measured seconds per point (8; quick 4)")
    p.add_argument("--warmup", type=float, help="seconds before the window (3; quick 2)")
    p.add_argument("--idle-secs", type=float, help="idle baseline seconds (4; quick 2)")
    p.add_argument("--repeat-share", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kafka", metavar="HOST:PORT", help="an existing broker")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options with --quick defaults filled in."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    args.writers = args.writers or list(QUICK_WRITERS if quick else DEFAULT_WRITERS)
    args.secs = args.secs or (4.0 if quick else 8.0)
    args.warmup = 2.0 if quick and args.warmup is None else (args.warmup or 3.0)
    args.idle_secs = args.idle_secs or (2.0 if quick else 4.0)
    args.modes = [m.strip() for m in args.replicas.split(",") if m.strip()]
    if not args.modes or any(m != "all" and not m.isdigit() for m in args.modes):
        parser.error("--replicas takes 'all' and/or replica counts, e.g. all,2")
    if not 1 <= args.partitions <= 10_000:
        parser.error("--partitions must be in [1, 10000]")
    return args


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Every (replicas, writers) point; always stops what was started."""
    started = time.monotonic()
    report: dict[str, Any] = {
        **report_head("stress_test.bench_scaleout", argv),
        "settings": {
            k: getattr(args, k)
            for k in ("writers", "modes", "deltas_per_writer_s", "partitions", "secs")
        }
        | {"warmup_s": args.warmup, "idle_s": args.idle_secs},
    }
    points: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_scaleout-")))
        bench = FleetBench(args, work, stack, None, prog="bench_scaleout")
        index = 0
        for writers in args.writers:
            for mode in args.modes:
                index += 1
                try:
                    point = run_point(bench, mode, writers, index)
                except FAILURES as exc:
                    bench.say(f"replicas {mode}, {writers} writers failed: {exc}")
                    bench.skipped[f"{mode}_{writers}"] = str(exc)
                    continue
                bench.say(
                    f"replicas {mode}, {writers} writers: owns {point['owned_partitions']} "
                    f"partitions, merged {point['merged_deltas_per_s']}/s, merge "
                    f"{point['merge_cores']:.3f} cores (idle {point['idle_cores']:.3f})"
                )
                points.append(point)
    report.update(
        results={"points": points, "curves": curves(points)},
        skipped=bench.skipped,
        elapsed_s=round(time.monotonic() - started, 1),
        load_avg_at_end=[round(x, 2) for x in os.getloadavg()],
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 with a report (failed points say why), 2 on bad options."""
    return bench_main(PROG, argv, parse_args, run, render_table)


if __name__ == "__main__":
    sys.exit(main())
