"""HTTP benchmark: a node's POST /protected against bare FastAPI, raw ASGI and slowapi+Redis
(wrk), p99 and sync lag at half load on two nodes, memory per key, bootstrap time.

Run `python -m stress_test.bench_http [--json] [--quick] [--only node,bare,...]`. Servers
run one at a time; every process started here is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from stress_test.bench_bootstrap import run_bootstrap
from stress_test.bench_half import run_half
from stress_test.bench_memory import run_memory
from stress_test.bench_processes import (
    NODE_LIMIT,
    BenchError,
    WrkResult,
    children_cpu_seconds,
    cpu_seconds,
    node,
    pid_of,
    profiled,
    redis_server,
    run_wrk,
    scrape,
    summarize,
    system_busy_seconds,
    total,
    uvicorn_app,
)
from stress_test.bench_run import Bench
from stress_test.provenance import machine_info

SECTIONS = ("node", "bare", "raw", "slowapi", "half", "memory", "bootstrap")
TARGETS = {
    "node_vs_bare_fastapi": ">= 2.0",
    "node_vs_slowapi_redis": ">= 6.0",
    "half_load_p99_ms": "<= 2.0",
    "sync_lag_p99_ms": "<= 50",
    "memory_growth_mb": "<= 400",
    "bootstrap_s": "<= 10",
}


# -- the run -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A server under test: its POST /protected URL, its pid and its helpers' pids."""

    url: str
    pid: int
    helpers: tuple[int, ...] = ()


@contextlib.contextmanager
def serve(bench: Bench, name: str) -> Iterator[Target]:
    """Start one server of the throughput comparison (stopped on exit)."""
    apps = "stress_test.baseline_apps:"
    if name == "node":  # Kafka sync on, fresh topic, rate 10 burst 20
        args = [*NODE_LIMIT, "--topic", bench.fresh_topic("node"), "--log-level", "warning"]
        with node("bench-node", bench.kafka(), args, bench.work_dir) as proc:
            yield Target(f"{proc.url}/protected", pid_of(proc), bench.broker_pids())
    elif name == "bare":  # a FastAPI route that always answers 200
        with uvicorn_app(apps + "bare_fastapi", bench.work_dir, factory=True) as (url, pid):
            yield Target(url, pid)
    elif name == "raw":  # the ceiling of any Python ASGI app under uvicorn
        with uvicorn_app(apps + "raw_asgi", bench.work_dir) as (url, pid):
            yield Target(url, pid)
    else:  # slowapi, Redis moving window, 10/second per X-User-ID
        with (
            redis_server(bench.work_dir) as (redis_url, redis_pid),
            uvicorn_app(
                apps + "slowapi_redis",
                bench.work_dir,
                factory=True,
                env={"BENCH_REDIS_URL": redis_url},
            ) as (url, pid),
        ):
            yield Target(url, pid, (redis_pid,))


def _timed_wrk(bench: Bench, target: Target, secs: float) -> tuple[WrkResult, dict[str, float]]:
    """One wrk run with the CPU (in cores) of the server, its helpers, wrk and the rest."""
    a = bench.args
    pids = (target.pid, *target.helpers)
    before = [cpu_seconds(p) for p in pids], children_cpu_seconds(), system_busy_seconds()
    started = time.monotonic()
    result = run_wrk(bench.require_wrk(), target.url, a.conns, secs, "users.lua", bench.users)
    wall = time.monotonic() - started
    server, *helpers = (cpu_seconds(p) - b for p, b in zip(pids, before[0], strict=True))
    client = children_cpu_seconds() - before[1]
    busy = system_busy_seconds() - before[2]
    cpu = {
        "server": server / wall,
        "helpers": sum(helpers) / wall,
        "wrk": client / wall,
        "background": max(0.0, busy - server - sum(helpers) - client) / wall,
        # CPU per answer: robust to the machine's other load, unlike req/s.
        "server_us_per_request": server / max(1, result.requests) * 1e6,
        "with_helpers_us_per_request": (server + sum(helpers)) / max(1, result.requests) * 1e6,
    }
    return result, cpu


def run_throughput(bench: Bench, names: Sequence[str]) -> None:
    """Start every selected server, then take turns: each repetition runs wrk against each
    server in order (one under load at a time), so a slow drift of the machine's other load
    hits all of them alike. Medians per server go to bench.results."""
    a = bench.args
    with contextlib.ExitStack() as servers:
        targets: dict[str, Target] = {}
        for name in names:
            try:
                targets[name] = servers.enter_context(serve(bench, name))
            except BenchError as exc:
                bench.say(f"{name} skipped: {exc}")
                bench.skipped[name] = str(exc)
        for target in targets.values():  # warm-up, discarded
            run_wrk(bench.require_wrk(), target.url, a.conns, 1, "users.lua", bench.users)
        runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
        cpus: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for rep in range(a.reps):
            for name, target in targets.items():
                bench.say(f"wrk {name} {rep + 1}/{a.reps} (load avg {os.getloadavg()[0]:.2f})")
                result, cpu = _timed_wrk(bench, target, a.secs)
                runs[name].append(result)
                cpus[name].append(cpu)
        extra: dict[str, dict[str, Any]] = {name: {} for name in targets}
        if "node" in targets:
            node_url = targets["node"].url.removesuffix("/protected")
            produced = total(scrape(node_url), "ratelimiter_records_produced_total")
            extra["node"] = {"kafka_sync": True, "records_produced": produced}
            if a.profile:  # an extra run: sampling slows the node, so it counts for nothing
                with profiled(targets["node"].pid, a.profile, "node", extra["node"]):
                    run_wrk(bench.require_wrk(), targets["node"].url, a.conns, a.secs,
                            "users.lua", bench.users)  # fmt: skip
    for name in targets:
        cpu = {k: round(statistics.median(c[k] for c in cpus[name]), 2) for k in cpus[name][0]}
        bench.results[name] = {
            **summarize(runs[name]),
            "conns": a.conns,
            "secs": a.secs,
            "reps": a.reps,
            "users": a.users,
            "cpu_cores": cpu,
            **extra[name],
        }


def section_half(bench: Bench) -> dict[str, Any]:
    """Open-loop load at a fraction of the node's req/s on two nodes; p99 and sync lag."""
    if bench.args.half_rate:
        return run_half(bench, None)
    if "node" not in bench.results:
        bench.kafka()  # started (and remembered) here, not in the copy below
        quick = argparse.Namespace(**{**vars(bench.args), "reps": 1, "secs": 3.0})
        run_throughput(dataclasses.replace(bench, args=quick), ["node"])
    return run_half(bench, float(bench.results["node"]["rps"]))


THROUGHPUT = ("node", "bare", "raw", "slowapi")
RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "half": section_half,
    "memory": run_memory,
    "bootstrap": run_bootstrap,
}


# -- command line and report -------------------------------------------------------------


def parse_sections(text: str) -> list[str]:
    """`node,bare` -> ["node", "bare"] in run order; argparse error on unknown names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(SECTIONS)}"
        )
    return [s for s in SECTIONS if s in names]


def parse_fractions(text: str) -> list[float]:
    """`0.25,0.1` -> [0.25, 0.1]; each in (0, 1]."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1]: {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m stress_test.bench_http`."""
    p = argparse.ArgumentParser(
        prog="python -m stress_test.bench_http",
        description="Benchmark a node's POST /protected against FastAPI, raw ASGI and "
        "slowapi+Redis; p99 and sync lag at half load; memory per key; bootstrap time.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--quick", action="store_true", help="1 x 3 s per server, small memory/bootstrap"
    )
    p.add_argument(
        "--only",
        type=parse_sections,
        default=list(SECTIONS),
        metavar="LIST",
        help=f"comma-separated sections among {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument(
        "--kafka",
        metavar="HOST:PORT",
        help="an existing broker (default: start a local one on a free port)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the node with py-spy in the node, half and bootstrap sections "
        "(top functions in the report, stacks in DIR); slows what it samples",
    )
    p.add_argument("--reps", type=int, help="wrk repetitions per server (default 3; quick 1)")
    p.add_argument("--secs", type=float, help="seconds per wrk run (default 8; quick 3)")
    p.add_argument("--conns", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--users", type=int, default=1000, help="distinct X-User-ID cycled (1000)")
    p.add_argument(
        "--half-fraction",
        type=float,
        default=0.5,
        help="open-loop rate as a fraction of the node's req/s (0.5)",
    )
    p.add_argument(
        "--half-also",
        type=parse_fractions,
        default=[0.25, 0.1],
        metavar="LIST",
        help="further fractions run on the same two nodes (0.25,0.1; '' for none)",
    )
    p.add_argument("--half-rate", type=float, help="open-loop req/s (default: fraction x node)")
    p.add_argument("--half-secs", type=float, help="measured open-loop seconds (10; quick 4)")
    p.add_argument("--memory-users", type=int, help="distinct users for memory (1e6; quick 5e4)")
    p.add_argument(
        "--bootstrap-users", type=int, help="users written for bootstrap (1e6; quick 5e4)"
    )
    return p  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options with --quick defaults filled in."""
    args = build_parser().parse_args(argv)
    quick = bool(args.quick)
    defaults = {
        "reps": 1 if quick else 3,
        "secs": 3.0 if quick else 8.0,
        "half_secs": 4.0 if quick else 10.0,
        "memory_users": 50_000 if quick else 1_000_000,
        "bootstrap_users": 50_000 if quick else 1_000_000,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("reps", "conns", "users", "memory_users", "bootstrap_users"):
        if getattr(args, name) < 1:
            build_parser().error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.half_fraction <= 1:
        build_parser().error("--half-fraction must be in (0, 1]")
    return args


def ratios_and_targets(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Throughput ratios of the node to each baseline, and every target with its figure."""

    def rps(name: str) -> float | None:
        r = results.get(name)
        return float(r["rps"]) if r and r.get("rps") else None

    def cpu_us(name: str) -> float | None:
        r = results.get(name) or {}
        value = (r.get("cpu_cores") or {}).get("with_helpers_us_per_request")
        return float(value) if value else None

    node_rps, node_us = rps("node"), cpu_us("node")
    ratios: dict[str, Any] = {}
    for key, base in (("bare_fastapi", "bare"), ("slowapi_redis", "slowapi"), ("raw_asgi", "raw")):
        other = rps(base)
        ratios[f"node_vs_{key}"] = round(node_rps / other, 2) if node_rps and other else None
    for key, base in (("bare_fastapi", "bare"), ("slowapi_redis", "slowapi"), ("raw_asgi", "raw")):
        other_us = cpu_us(base)
        # Answers per CPU-second (server + its broker or Redis), node over baseline.
        ratios[f"node_vs_{key}_per_cpu"] = (
            round(other_us / node_us, 2) if node_us and other_us else None
        )
    half = results.get("half") or {}
    values = {
        "node_vs_bare_fastapi": ratios["node_vs_bare_fastapi"],
        "node_vs_slowapi_redis": ratios["node_vs_slowapi_redis"],
        "half_load_p99_ms": half.get("p99_ms_from_send"),
        "sync_lag_p99_ms": half.get("sync_lag_p99_ms_bound"),
        "memory_growth_mb": (results.get("memory") or {}).get("rss_growth_mb"),
        "bootstrap_s": (results.get("bootstrap") or {}).get("ready_after_s"),
    }
    targets = {}
    for name, target in TARGETS.items():
        value = values[name]
        op, bound = target.split()
        met = (
            None
            if value is None
            else (value >= float(bound) if op == ">=" else value <= float(bound))
        )
        targets[name] = {"target": target, "value": value, "met": met}
    return ratios, targets


def render_table(report: dict[str, Any]) -> str:
    """The report as readable text."""
    lines = [
        f"# {report['command']}",
        f"date {report['date']}  elapsed {report['elapsed_s']} s",
        "machine " + ", ".join(f"{k}={v}" for k, v in report["machine"].items()),
        "",
        f"{'server':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'admitted':>10}{'CPU us/req':>12}",
    ]
    names = {"node": "node (Kafka on)", "bare": "bare FastAPI", "raw": "raw ASGI",
             "slowapi": "slowapi+Redis"}  # fmt: skip
    results = report["results"]
    for key, label in names.items():
        r = results.get(key)
        if r:
            share = "" if r["admitted_share"] is None else f"{r['admitted_share']:.1%}"
            us = (r.get("cpu_cores") or {}).get("with_helpers_us_per_request")
            lines.append(
                f"{label:<16}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{share:>10}"
                + ("" if us is None else f"{us:>12.1f}")
            )
    lines.append("")
    for name, value in report["ratios"].items():
        lines.append(f"{name:<28}{value}")
    for key in ("half", "memory", "bootstrap"):
        if results.get(key):
            lines.append("")
            lines.append(f"[{key}]")
            lines += [f"  {k}: {v}" for k, v in results[key].items() if k != "notes"]
            lines += [f"  note: {n}" for n in results[key].get("notes", [])]
    lines.append("")
    lines.append("targets:")
    for name, t in report["targets"].items():
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"  {name:<24}{t['target']:<10}{t['value']!s:<12}{verdict}")
    for name, reason in report["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_section(bench: Bench, name: str) -> None:
    load = round(os.getloadavg()[0], 2)
    bench.results[name] = {**RUNNERS[name](bench), "load_avg_1m_at_start": load}


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Run the selected sections one after another; always stop what was started."""
    started = time.monotonic()
    command = shlex.join(["python", "-m", "stress_test.bench_http", *argv])
    report: dict[str, Any] = {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
    }
    with contextlib.ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_http-")))
        bench = Bench(args, work_dir, stack, shutil.which("wrk"))
        compared = [name for name in args.only if name in THROUGHPUT]
        steps: list[tuple[list[str], Callable[[], None]]] = []
        if compared:
            steps.append((compared, lambda: run_throughput(bench, compared)))
        for name in args.only:
            if name in RUNNERS:
                steps.append(([name], partial(_run_section, bench, name)))
        for names, step in steps:
            bench.say(f"section {','.join(names)} (load avg {os.getloadavg()[0]:.2f})")
            try:
                step()
            except BenchError as exc:
                bench.say(f"section {','.join(names)} skipped: {exc}")
                bench.skipped.update(dict.fromkeys(names, str(exc)))
            except Exception as exc:  # one failed section must not lose the others' figures
                bench.say(f"section {','.join(names)} failed: {exc!r}")
                bench.skipped.update(dict.fromkeys(names, f"failed: {exc!r}"))
    ratios, targets = ratios_and_targets(bench.results)
    report.update(
        results=bench.results,
        ratios=ratios,
        targets=targets,
        skipped=bench.skipped,
        elapsed_s=round(time.monotonic() - started, 1),
        load_avg_at_end=[round(x, 2) for x in os.getloadavg()],
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 with a report (skipped sections say why), 2 on bad options."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)
    if shutil.which("wrk") is None and set(args.only) & {
        "node",
        "bare",
        "raw",
        "slowapi",
        "memory",
    }:
        print("bench_http: wrk not found on PATH; install it (Debian/Ubuntu: apt-get install "
              "wrk) or choose --only half,bootstrap", file=sys.stderr)  # fmt: skip
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(args, given)
    except KeyboardInterrupt:
        print("bench_http: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    print(
        json.dumps(report, indent=None if args.json else 2) if args.json else render_table(report)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
