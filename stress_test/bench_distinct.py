"""Distinct-user benchmark: a node's POST /protected where every request carries a new
X-User-ID (wrk, 1 thread), on a standalone node, on a node replicating through Kafka, and on
that node while its broker is down; throughput, latency, statuses, CPU per request and the
node's event-loop lag (ratelimiter_event_loop_lag_seconds).

Run `python -m stress_test.bench_distinct [--json] [--quick] [--secs S] [--reps N]
[--conns C] [--kafka HOST:PORT]`. Every process started here is stopped on exit, Ctrl-C and
errors included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import RateLimiterError
from service.local.broker import LocalBroker
from service.local.nodes import NodeProcess
from stress_test.bench_processes import (
    NODE_LIMIT,
    BenchError,
    Samples,
    WrkResult,
    add_wrk_options,
    buckets,
    cpu_seconds,
    histogram_delta,
    lag_summary,
    node,
    pid_of,
    profiled,
    run_wrk,
    scrape,
    summarize,
    total,
    wait_http,
    wrk_options,
)
from stress_test.bench_run import Bench
from stress_test.provenance import header_lines, report_head

PROG = "python -m stress_test.bench_distinct"
MAX_KEYS = 2_000_000  # far above the ids one run sends: no eviction in the measured windows
LOOP_LAG = "ratelimiter_event_loop_lag_seconds"
RECOVERY_TIMEOUT_S = 60.0  # how long the node may take to publish again after the restart
# What fails one step (a node, the broker, wrk) without losing the figures already taken.
FAILURES = (BenchError, RateLimiterError, OSError, ValueError, subprocess.SubprocessError)

# Written to the work dir and passed to wrk by absolute path (wrk_command joins it to WRK_DIR,
# which an absolute path replaces). Status classes are counted per thread and written at the
# end to STATUS_FILE: wrk itself only reports "Non-2xx or 3xx responses".
LUA_SCRIPT = """\
-- POST with a new X-User-ID on every request: PREFIX .. thread .. "." .. n, where thread
-- is wrk's thread number (1..T) and n counts that thread's requests from 1; never reused.
-- At the end, writes "name count" lines (s2xx s429 s4xx s5xx sother sent) to STATUS_FILE.
-- Usage: wrk -tT ... -s <this> URL -- PREFIX STATUS_FILE
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1] or "d."
  status_file = args[2]
  sent = 0
  s2xx, s429, s4xx, s5xx, sother = 0, 0, 0, 0, 0
end

function request()
  sent = sent + 1
  local user = prefix .. tid .. "." .. sent
  return wrk.format("POST", nil, { ["X-User-ID"] = user, ["Content-Length"] = "0" }, nil)
end

function response(status, headers, body)
  if status == 429 then
    s429 = s429 + 1
  elseif status >= 200 and status < 300 then
    s2xx = s2xx + 1
  elseif status >= 500 then
    s5xx = s5xx + 1
  elseif status >= 400 then
    s4xx = s4xx + 1
  else
    sother = sother + 1
  end
end

function done(summary, latency, requests)
  local names = { "s2xx", "s429", "s4xx", "s5xx", "sother", "sent" }
  local path = threads[1]:get("status_file")
  if not path then
    return
  end
  local f = assert(io.open(path, "w"))
  for _, name in ipairs(names) do
    local count = 0
    for _, thread in ipairs(threads) do
      count = count + (thread:get(name) or 0)
    end
    f:write(string.format("%s %d\\n", name, count))
  end
  f:close()
end
"""
STATUS_NAMES = {
    "s2xx": "2xx",
    "s429": "429",
    "s4xx": "4xx_other",
    "s5xx": "5xx",
    "sother": "other",
    "sent": "ids_sent",
}


# -- pure parts ------------------------------------------------------------------------


def write_script(work_dir: Path) -> Path:
    """The Lua script as a file in the work dir."""
    path = work_dir / "distinct_ids.lua"
    path.write_text(LUA_SCRIPT)
    return path


def run_prefix(token: str, index: int) -> str:
    """The X-User-ID prefix of wrk run `index` of this benchmark run (`token` is random per
    benchmark run): ids never repeat across runs, nodes or benchmark runs."""
    return f"{token}.{index}."


def parse_statuses(text: str) -> dict[str, int]:
    """The script's STATUS_FILE as {2xx, 429, 4xx_other, 5xx, other, ids_sent: count}."""
    out = dict.fromkeys(STATUS_NAMES.values(), 0)
    for line in text.splitlines():
        name, _, count = line.partition(" ")
        if name in STATUS_NAMES and count.strip().isdigit():
            out[STATUS_NAMES[name]] = int(count)
    return out


def add_counts(*counts: Mapping[Any, float]) -> dict[Any, float]:
    """The key-wise sum of several count dicts (histogram deltas, counters)."""
    out: dict[Any, float] = {}
    for one in counts:
        for key, value in one.items():
            out[key] = out.get(key, 0.0) + value
    return out


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """A sample summed by the values of one label."""
    out: dict[str, float] = {}
    for labels, value in samples.get(name, {}).items():
        key = dict(labels).get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


COUNTERS = {  # reported name -> (sample, label or None, label value)
    "admitted": ("ratelimiter_decisions_total", "outcome", "admitted"),
    "denied": ("ratelimiter_decisions_total", "outcome", "denied"),
    "evicted_active": ("ratelimiter_store_events_total", "kind", "evicted_active"),
    "deleted_idle": ("ratelimiter_store_events_total", "kind", "deleted_idle"),
    "records_produced": ("ratelimiter_records_produced_total", None, ""),
    "publish_failures": ("ratelimiter_publish_failures_total", None, ""),
    "outbox_compactions": ("ratelimiter_outbox_compactions_total", None, ""),
}
GAUGES = {
    "tracked_keys": "ratelimiter_tracked_keys",
    "buffered_deltas": "ratelimiter_buffered_deltas",
    "broker_up": "ratelimiter_broker_up",
}


def _counter(samples: Samples, sample: str, label: str | None, value: str) -> float:
    if label is None:
        return total(samples, sample) or 0.0
    return by_label(samples, sample, label).get(value, 0.0)


def counter_deltas(before: Samples, after: Samples) -> dict[str, float]:
    """The node's decision, key-store and publish counters over a window."""
    return {
        name: _counter(after, *spec) - _counter(before, *spec) for name, spec in COUNTERS.items()
    }


def gauges(samples: Samples, *, synced: bool) -> dict[str, float | None]:
    """Key gauges at a scrape (None when absent); the Kafka ones only for a synced node."""
    names = GAUGES if synced else {"tracked_keys": GAUGES["tracked_keys"]}
    return {name: total(samples, sample) for name, sample in names.items()}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def ratios(results: Mapping[str, Any]) -> dict[str, float | None]:
    """Synced over standalone (req/s, p99, CPU per request), outage during over before (p99)."""

    def get(*path: str) -> float | None:
        node: Any = results
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        return float(node) if isinstance(node, int | float) else None

    return {
        "synced_vs_standalone_rps": _ratio(get("synced", "rps"), get("standalone", "rps")),
        "synced_vs_standalone_p99": _ratio(get("synced", "p99_ms"), get("standalone", "p99_ms")),
        "synced_vs_standalone_cpu_per_request": _ratio(
            get("synced", "cpu_us_per_request"), get("standalone", "cpu_us_per_request")
        ),
        "outage_during_vs_before_p99": _ratio(
            get("outage", "during", "p99_ms"), get("outage", "before", "p99_ms")
        ),
        "outage_during_vs_before_rps": _ratio(
            get("outage", "during", "rps"), get("outage", "before", "rps")
        ),
    }


# -- measuring -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One wrk run against one node with what the node reported over it."""

    wrk: WrkResult
    statuses: dict[str, int]
    wall_s: float
    node_cpu_s: float
    broker_cpu_s: float | None  # None when no broker of ours ran throughout
    lag: dict[float, float]  # cumulative bucket delta of the event-loop lag
    counters: dict[str, float]
    gauges_after: dict[str, float | None]
    load_avg_1m: float


def summarize_runs(runs: Sequence[Run]) -> dict[str, Any]:
    """Medians of req/s, p50 and p99 over runs; totals of statuses and counters; CPU per
    request over all runs; event-loop lag over every measured window together."""
    base = summarize([r.wrk for r in runs])
    requests = sum(r.wrk.requests for r in runs)
    wall = sum(r.wall_s for r in runs)
    node_cpu = sum(r.node_cpu_s for r in runs)
    broker = [r.broker_cpu_s for r in runs]
    statuses = {k: round(v) for k, v in add_counts(*(r.statuses for r in runs)).items()}
    return {
        "rps": base["rps"],
        "p50_ms": base["p50_ms"],
        "p99_ms": base["p99_ms"],
        "requests": requests,
        "non_2xx": sum(r.wrk.non_2xx for r in runs),
        "status_429": statuses.get("429", 0),
        "status_5xx": statuses.get("5xx", 0),
        "socket_errors": base["socket_errors"],
        "statuses": statuses,
        "cpu_us_per_request": round(node_cpu / requests * 1e6, 1) if requests else None,
        "node_cpu_cores": round(node_cpu / wall, 2) if wall else None,
        "broker_cpu_us_per_request": (
            round(sum(b for b in broker if b is not None) / requests * 1e6, 1)
            if requests and broker and all(b is not None for b in broker)
            else None
        ),
        "event_loop_lag": lag_summary(add_counts(*(r.lag for r in runs))),
        "node_counters": {k: round(v) for k, v in add_counts(*(r.counters for r in runs)).items()},
        "node_gauges_at_end": runs[-1].gauges_after if runs else {},
        "load_avg_1m": [r.load_avg_1m for r in runs],
        "runs": base["runs"],
    }


@dataclass
class DistinctBench(Bench):
    """Bench (options, work dir, lazy broker, results) with this benchmark's log prefix, its
    wrk script and a counter that makes every run's user ids new."""

    script: Path = field(init=False)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    runs_started: int = 0

    def __post_init__(self) -> None:
        self.script = write_script(self.work_dir)

    def say(self, message: str) -> None:
        """Progress on stderr (stdout holds only the report)."""
        stamp = time.strftime("%H:%M:%S")
        print(f"[bench_distinct {stamp}] {message}", file=sys.stderr, flush=True)

    @property
    def broker(self) -> LocalBroker | None:
        """The broker started here (None with --kafka or before kafka())."""
        return self._broker

    def measure(self, proc: NodeProcess, secs: float, label: str) -> Run:
        """One wrk run of new users against `proc`, with its CPU and /metrics deltas."""
        self.runs_started += 1
        prefix = run_prefix(self.token, self.runs_started)
        status_file = self.work_dir / f"statuses-{self.runs_started}.txt"
        load = round(os.getloadavg()[0], 2)
        self.say(f"wrk {label} {secs:g} s (load avg {load:.2f})")
        synced = proc.kafka != "none"
        # The broker's CPU counts for the node replicating through it only.
        pid, brokers = pid_of(proc), self.broker_pids() if synced else ()
        before = scrape(proc.url)
        cpu_before = cpu_seconds(pid)
        broker_before = _cpu_or_none(brokers)
        started = time.monotonic()
        result = run_wrk(
            self.require_wrk(),
            f"{proc.url}/protected",
            self.args.conns,
            secs,
            str(self.script),  # absolute: replaces WRK_DIR in wrk_command
            [prefix, str(status_file)],
        )
        wall = time.monotonic() - started
        node_cpu = cpu_seconds(pid) - cpu_before
        broker_after = _cpu_or_none(brokers)
        after = scrape(proc.url)
        statuses = parse_statuses(status_file.read_text()) if status_file.exists() else {}
        return Run(
            wrk=result,
            statuses=statuses,
            wall_s=wall,
            node_cpu_s=node_cpu,
            broker_cpu_s=(
                None
                if broker_before is None or broker_after is None
                else broker_after - broker_before
            ),
            lag=histogram_delta(buckets(before, LOOP_LAG), buckets(after, LOOP_LAG)),
            counters=counter_deltas(before, after),
            gauges_after=gauges(after, synced=synced),
            load_avg_1m=load,
        )


def _cpu_or_none(pids: Iterable[int]) -> float | None:
    """CPU seconds of the broker processes; None with none or when one is gone."""
    pids = list(pids)
    if not pids:
        return None
    try:
        return sum(cpu_seconds(p) for p in pids)
    except OSError:
        return None


def node_args(extra: Sequence[str] = ()) -> list[str]:
    """`serve` flags of every node here: default limit, MAX_KEYS, warnings only."""
    return [*NODE_LIMIT, "--max-keys", str(MAX_KEYS), "--log-level", "warning", *extra]


def run_outage(bench: DistinctBench, synced: NodeProcess) -> dict[str, Any]:
    """The synced node with the broker up (before), down (during), restarted (after), and
    how long it took to publish again."""
    broker = bench.broker
    if broker is None:
        raise BenchError("the broker was given with --kafka: not ours to stop")
    secs = bench.args.secs
    out: dict[str, Any] = {"before": summarize_runs([bench.measure(synced, secs, "before")])}
    bench.say("stopping the broker ...")
    started = time.monotonic()
    broker.down()
    out["broker_stop_s"] = round(time.monotonic() - started, 1)
    out["during"] = summarize_runs([bench.measure(synced, secs, "during outage")])
    bench.say("starting the broker again ...")
    started = time.monotonic()
    broker.up()
    out["broker_restart_s"] = round(time.monotonic() - started, 1)
    out["recovery"] = recover(bench, synced)
    out["after"] = summarize_runs([bench.measure(synced, max(2.0, secs / 2), "after restart")])
    return out


def recover(bench: DistinctBench, synced: NodeProcess) -> dict[str, Any]:
    """Whether the node answers after the restart, and when it reports the broker up again
    with nothing left to publish (bounded by RECOVERY_TIMEOUT_S)."""
    if synced.process is None:
        raise BenchError("the synced node was not started")
    started = time.monotonic()
    wait_http(f"{synced.url}/protected", 10, "POST", (200,), synced.process)
    answered = time.monotonic() - started
    up_after: float | None = None
    drained_after: float | None = None
    last: dict[str, float | None] = {}
    while (elapsed := time.monotonic() - started) < RECOVERY_TIMEOUT_S:
        last = gauges(scrape(synced.url), synced=True)
        if up_after is None and last["broker_up"] == 1:
            up_after = elapsed
        if up_after is not None and not last["buffered_deltas"]:
            drained_after = elapsed
            break
        time.sleep(0.1)
    return {
        "answers_200_after_s": round(answered, 2),
        "broker_up_after_s": None if up_after is None else round(up_after, 2),
        "backlog_published_after_s": None if drained_after is None else round(drained_after, 2),
        "gauges": last,
        "timeout_s": RECOVERY_TIMEOUT_S,
    }


def run_scenarios(bench: DistinctBench) -> None:
    """Start the standalone and synced nodes; take turns between them for each repetition
    (one under load at a time); then the outage on the synced node."""
    a = bench.args
    nodes: dict[str, NodeProcess] = {}
    stack = bench.stack
    try:
        nodes["standalone"] = stack.enter_context(
            node("distinct-standalone", "none", node_args(), bench.work_dir)
        )
    except (BenchError, RateLimiterError) as exc:
        bench.say(f"standalone skipped: {exc}")
        bench.skipped["standalone"] = str(exc)
    try:
        topic = bench.fresh_topic("distinct")
        args = node_args(["--topic", topic])
        nodes["synced"] = stack.enter_context(
            node("distinct-synced", bench.kafka(), args, bench.work_dir)
        )
        bench.results["synced_topic"] = topic
    except (BenchError, RateLimiterError) as exc:
        bench.say(f"synced and outage skipped: {exc}")
        bench.skipped["synced"] = bench.skipped["outage"] = str(exc)
    for name, proc in nodes.items():  # warm-up, discarded (the broker's JIT too)
        bench.measure(proc, a.warmup, f"{name} warm-up")
    runs: dict[str, list[Run]] = {name: [] for name in nodes}
    for rep in range(a.reps):
        for name, proc in nodes.items():
            runs[name].append(bench.measure(proc, a.secs, f"{name} {rep + 1}/{a.reps}"))
    for name, measured in runs.items():
        bench.results[name] = summarize_runs(measured)
        if a.profile:  # an extra run: sampling slows the node, so it counts for nothing
            sink: dict[str, Any] = {}
            with profiled(pid_of(nodes[name]), a.profile, f"distinct-{name}", sink):
                bench.measure(nodes[name], a.secs, f"{name} under py-spy")
            bench.results[name]["profile"] = sink.get("profile")
    if "synced" in nodes:
        try:
            bench.results["outage"] = run_outage(bench, nodes["synced"])
        except FAILURES as exc:
            bench.say(f"outage skipped: {exc}")
            bench.skipped["outage"] = str(exc)


# -- command line and report -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m stress_test.bench_distinct`."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark a node's POST /protected with a new X-User-ID on every request: "
        "standalone, replicating through Kafka, and during a broker outage.",
    )
    add_wrk_options(p)
    p.add_argument(
        "--kafka",
        metavar="HOST:PORT",
        help="an existing broker (default: start a local one on a free port); "
        "the outage scenario needs a broker started here",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds of load per node before measuring, discarded (default 5): a broker "
        "started here compiles its hot paths meanwhile (JIT) and uses less CPU after",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after the measured runs, one more run per node sampled with py-spy (top "
        "functions in the report, stacks in DIR); it counts for no figure",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options with --quick defaults filled in."""
    return wrk_options(build_parser(), argv)


NOTES = [
    "every request carries a new X-User-ID (wrk Lua: prefix.thread.n, never reused), so "
    "each is the first request of its user and is admitted: no 429 is expected",
    f"nodes: serve {' '.join(node_args())}; --max-keys {MAX_KEYS} so evictions do not "
    "dominate (node_counters.evicted_active counts them)",
    "rps, p50_ms, p99_ms: medians over repetitions of wrk's figures (closed loop, 1 thread)",
    "cpu_us_per_request: CPU seconds of the node process (/proc) over wrk's answers, all "
    "runs; broker_cpu_us_per_request: the same for the local broker (synced node only)",
    "node_counters: deltas over the measured windows; deleted_idle counts keys the sweeper "
    "dropped once their bucket had refilled (not evictions)",
    "event_loop_lag: ratelimiter_event_loop_lag_seconds observed during the measured windows "
    "(scraped before and after each run); each figure is the upper bound of the bucket "
    "holding it; max is the smallest bound holding every observation; the probe timer "
    "fires every 20 ms, so observations ~ 50 per second of wall time",
    "warm-up: --warmup seconds of the same load per node first, discarded: a broker started "
    "here spends its first minute compiling (JIT): 2.6x its CPU per request of later runs",
    "outage: one run with the broker up (before), one right after it stopped (during), "
    "one shorter run after it was started again and the node published its backlog (after)",
]


def render_table(report: dict[str, Any]) -> str:
    """The report as readable text."""
    results = report["results"]
    lines = [
        *header_lines(report),
        "",
        f"{'scenario':<18}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non2xx':>8}{'429':>6}"
        f"{'5xx':>5}{'sockerr':>8}{'CPU us/req':>11}{'lag p50/p99/max ms':>22}",
    ]
    rows = [(name, results.get(name)) for name in ("standalone", "synced")]
    outage = results.get("outage") or {}
    rows += [(f"outage {k}", outage.get(k)) for k in ("before", "during", "after")]
    for label, r in rows:
        if not r:
            continue
        lag = r["event_loop_lag"]
        lags = "/".join(str(lag[k]) for k in ("p50_ms_bound", "p99_ms_bound", "max_ms_bound"))
        lines.append(
            f"{label:<18}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['non_2xx']:>8}{r['status_429']:>6}{r['status_5xx']:>5}{r['socket_errors']:>8}"
            f"{r['cpu_us_per_request'] or 0:>11.1f}{lags:>22}"
        )
    if outage.get("recovery"):
        lines.append(f"recovery: {outage['recovery']}")
    lines.append("")
    lines += [f"{name:<40}{value}" for name, value in report["ratios"].items()]
    lines += [f"skipped {name}: {reason}" for name, reason in report["skipped"].items()]
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Every scenario; always stops what was started (nodes, then the broker)."""
    started = time.monotonic()
    report: dict[str, Any] = {
        **report_head("stress_test.bench_distinct", argv),
        "settings": {
            "wrk_threads": 1,
            "conns": args.conns,
            "secs": args.secs,
            "reps": args.reps,
            "node_args": node_args(),
            "kafka": args.kafka or "a local broker started here",
        },
    }
    with contextlib.ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_distinct-")))
        bench = DistinctBench(args, work_dir, stack, shutil.which("wrk"))
        try:
            run_scenarios(bench)
        except FAILURES as exc:
            bench.say(f"failed: {exc}")
            bench.skipped["run"] = str(exc)
    topic = bench.results.pop("synced_topic", None)
    report["settings"]["synced_topic"] = topic
    report.update(
        results=bench.results,
        ratios=ratios(bench.results),
        skipped=bench.skipped,
        notes=NOTES,
        elapsed_s=round(time.monotonic() - started, 1),
        load_avg_at_end=[round(x, 2) for x in os.getloadavg()],
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 with a report (skipped scenarios say why), 2 on bad options."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)
    if shutil.which("wrk") is None:
        print(f"{PROG}: wrk not found on PATH (Debian/Ubuntu: apt-get install wrk)",
              file=sys.stderr)  # fmt: skip
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(args, given)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    print(json.dumps(report) if args.json else render_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
