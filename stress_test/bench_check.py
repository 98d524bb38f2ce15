"""Decision API benchmark: a node's POST /v1/check (one check, and batches of 10) against
Gubernator's single-node HTTP JSON API (POST /v1/GetRateLimits), with the node's POST
/protected as a reference; wrk, one thread, the same keys for every server.

Run `python -m stress_test.bench_check [--json] [--quick] [--secs S] [--reps N] [--conns C]`.
Both servers start first and idle while the other is loaded: each repetition runs wrk
against each scenario in turn (never two at once), so a drift of the machine's other load
hits all alike. Gubernator v2.13.0 is built once with `go install` into .gubernator/bin at
the repository root; without Go (or when the build fails) its part is skipped and said so.
Every process started here is stopped on exit, errors and Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.local.jars import repo_root
from service.local.nodes import NodeFailed
from service.local.process import LOOPBACK, free_port, tail
from stress_test.bench_processes import (
    BenchError,
    WrkResult,
    add_wrk_options,
    child,
    children_cpu_seconds,
    cpu_seconds,
    node,
    pid_of,
    run_wrk,
    summarize,
    system_busy_seconds,
    wait_http,
    wrk_options,
)
from stress_test.provenance import header_lines, machine_info, report_head

GUBERNATOR_MODULE = "github.com/gubernator-io/gubernator/v2"
GUBERNATOR_VERSION = "v2.13.0"
GUBERNATOR_PACKAGE = f"{GUBERNATOR_MODULE}/cmd/gubernator@{GUBERNATOR_VERSION}"
GUBERNATOR_DIR = ".gubernator"  # at the repository root: bin/gubernator, build.log
GUBER_NAME = "bench"
GUBER_LIMIT = 1_000_000
GUBER_DURATION_MS = 60_000
GUBER_CACHE_DEFAULT = 50_000  # Gubernator's own default GUBER_CACHE_SIZE
NODE_LIMIT = ("--rate", "1000000", "--burst", "1000000")  # no check is ever denied
BATCH = 10
KEY_PREFIX = "user-"
BUILD_TIMEOUT_S = 900
_MARK = "@KEY@"
_BRACKET = "]==]"  # closes the Lua long strings the bodies are written in


# -- request bodies and the wrk script ---------------------------------------------------


def check_item(key: str) -> dict[str, Any]:
    """One check of our POST /v1/check."""
    return {"key": key, "cost": 1}


def check_body(keys: Sequence[str]) -> dict[str, Any]:
    """Our POST /v1/check body: one check for one key, the batch form for several."""
    return check_item(keys[0]) if len(keys) == 1 else check_batch_body(keys)


def check_batch_body(keys: Sequence[str]) -> dict[str, Any]:
    """Our POST /v1/check body in the batch form (answered `{"results": [...]}`)."""
    return {"checks": [check_item(k) for k in keys]}


def gubernator_item(key: str) -> dict[str, Any]:
    """One rate limit request of Gubernator: a hit on `key` under 1e6 per minute."""
    return {
        "name": GUBER_NAME,
        "unique_key": key,
        "hits": 1,
        "limit": GUBER_LIMIT,
        "duration": GUBER_DURATION_MS,
    }


def gubernator_body(keys: Sequence[str]) -> dict[str, Any]:
    """Gubernator's POST /v1/GetRateLimits body."""
    return {"requests": [gubernator_item(k) for k in keys]}


def compact(doc: Any) -> str:
    """JSON without spaces, as both bodies are sent."""
    return json.dumps(doc, separators=(",", ":"))


def body_parts(
    item: Callable[[str], dict[str, Any]], body: Callable[[Sequence[str]], dict[str, Any]]
) -> tuple[str, str, str]:
    """(head, item format, tail) such that a body of keys k1..kn is
    head + ",".join(format % k for each k) + tail; the format has one `%s`."""
    one = compact(item(_MARK))
    head, found, rest = compact(body([_MARK])).partition(one)
    if not found:
        raise ValueError("the body does not hold its item")
    return head, one.replace("%", "%%").replace(_MARK, "%s"), rest


def lua_script(name: str, parts: tuple[str, str, str], per_request: int) -> str:
    """A wrk script POSTing JSON bodies of `per_request` keys: request r holds the keys
    PREFIX((r * per_request + j) mod N), j < per_request, so requests cycle over N keys
    (each key `per_request` times per N requests). Bodies are built once in init()."""
    if per_request < 1:
        raise ValueError("per_request must be at least 1")
    if any(_BRACKET in p for p in parts):
        raise ValueError(f"a body part holds {_BRACKET!r}")
    head, item, rest = parts
    return f"""\
-- {name}: POST JSON bodies of {per_request} key(s) cycling over N keys; written by
-- stress_test/bench_check.py. Usage: wrk -t1 ... -s this.lua URL -- N [PREFIX]
local head = [==[{head}]==]
local item = [==[{item}]==]
local tail = [==[{rest}]==]
local per_request = {per_request}
local requests = {{}}
local count = 0
local i = 0

function init(args)
  local keys = tonumber(args[1]) or 1000
  local prefix = args[2] or "{KEY_PREFIX}"
  local headers = {{ ["Content-Type"] = "application/json" }}
  count = keys
  for r = 0, count - 1 do
    local items = {{}}
    for j = 0, per_request - 1 do
      items[j + 1] = string.format(item, prefix .. ((r * per_request + j) % keys))
    end
    requests[r + 1] = wrk.format("POST", nil, headers, head .. table.concat(items, ",") .. tail)
  end
end

function request()
  i = i % count + 1
  return requests[i]
end
"""


# -- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """One wrk target: which server, which path, how many checks a request carries."""

    name: str
    server: str  # "node" or "gubernator"
    path: str
    per_request: int
    label: str
    script: Callable[[], str] | None  # Lua text; None: stress_test/wrk/users.lua (headers)


SCENARIOS = (
    Scenario(
        "check", "node", "/v1/check", 1, "ours POST /v1/check",
        lambda: lua_script("check", body_parts(check_item, check_body), 1),
    ),
    Scenario(
        "check_batch10", "node", "/v1/check", BATCH, f"ours /v1/check x{BATCH}",
        lambda: lua_script("check_batch10", body_parts(check_item, check_batch_body), BATCH),
    ),
    Scenario(
        "gubernator", "gubernator", "/v1/GetRateLimits", 1, "Gubernator GetRateLimits",
        lambda: lua_script("gubernator", body_parts(gubernator_item, gubernator_body), 1),
    ),
    Scenario("protected", "node", "/protected", 1, "ours POST /protected", None),
)  # fmt: skip


def answer_ok(scenario: Scenario, status: int, doc: Any) -> str | None:
    """None when a probe's answer is a real, allowed decision; else what is wrong."""
    if scenario.name == "protected":
        return None if status in (200, 429) else f"status {status}"
    if status != 200:
        return f"status {status}: {doc}"
    if scenario.server == "gubernator":
        answers = doc.get("responses") if isinstance(doc, dict) else None
        if not isinstance(answers, list) or len(answers) != scenario.per_request:
            return f"expected {scenario.per_request} responses: {doc}"
        bad = [
            a
            for a in answers
            if not isinstance(a, dict) or a.get("error") or a.get("status") != "UNDER_LIMIT"
        ]
        return f"not under limit or an error: {bad[0]}" if bad else None
    answers = [doc] if scenario.per_request == 1 else None
    if scenario.per_request > 1 and isinstance(doc, dict):
        answers = doc.get("results")
    if not isinstance(answers, list) or len(answers) != scenario.per_request:
        return f"expected {scenario.per_request} results: {doc}"
    bad = [a for a in answers if not (isinstance(a, dict) and a.get("allowed") is True)]
    return f"not allowed: {bad[0]}" if bad else None


def probe(scenario: Scenario, url: str) -> str | None:
    """Send one request as the wrk script would (keys 0..n-1); None when it answers right."""
    keys = [f"{KEY_PREFIX}{k}" for k in range(scenario.per_request)]
    if scenario.server == "gubernator":
        data: bytes | None = compact(gubernator_body(keys)).encode()
    elif scenario.name == "protected":
        data = b""
    else:
        data = compact(check_body(keys)).encode()
    headers = {"Content-Type": "application/json", "X-User-ID": keys[0]}
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        return f"no answer: {exc}"
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = raw[:200].decode(errors="replace")
    return answer_ok(scenario, status, doc)


# -- Gubernator: build and run ---------------------------------------------------------------


def module_version(go_version_m: str, module: str) -> str | None:
    """The version of `module` in `go version -m BINARY` output (its `mod` line)."""
    for line in go_version_m.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "mod" and fields[1] == module:
            return fields[2]
    return None


def gubernator_binary(root: Path, say: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The Gubernator binary under root/.gubernator/bin, built with `go install` when absent
    or of another version; BenchError (saying why) when it can be neither found nor built."""
    folder = root / GUBERNATOR_DIR
    binary = folder / "bin" / "gubernator"
    go = shutil.which("go")
    info: dict[str, Any] = {"binary": str(binary), "package": GUBERNATOR_PACKAGE}

    def version() -> str | None:
        if go is None:
            return None
        done = subprocess.run(
            [go, "version", "-m", str(binary)], capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        return module_version(done.stdout, GUBERNATOR_MODULE)

    if binary.exists() and go is None:
        return binary, {**info, "version": "unverified (no go to read it)", "built_now": False}
    if binary.exists() and version() == GUBERNATOR_VERSION:
        return binary, {**info, "version": GUBERNATOR_VERSION, "built_now": False}
    if go is None:
        raise BenchError(
            "Gubernator skipped: `go` not found on PATH and no cached binary at "
            f"{binary}; install Go 1.21+ or build it: GOBIN={binary.parent} go install "
            f"{GUBERNATOR_PACKAGE}"
        )
    folder.mkdir(exist_ok=True)
    log = folder / "build.log"
    command = [go, "install", GUBERNATOR_PACKAGE]
    say(f"building Gubernator: GOBIN={binary.parent} {shlex.join(command)} (log {log})")
    started = time.monotonic()
    with log.open("w") as out:
        try:
            done = subprocess.run(
                command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, check=False,
                env={**os.environ, "GOBIN": str(binary.parent)}, timeout=BUILD_TIMEOUT_S,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"Gubernator skipped: its build took over {BUILD_TIMEOUT_S} s"
            ) from None
    if done.returncode != 0 or not binary.exists():
        raise BenchError(
            f"Gubernator skipped: `go install` failed ({done.returncode}): "
            + " | ".join(tail(log, 5))
        )
    built = version()
    if built != GUBERNATOR_VERSION:
        raise BenchError(f"Gubernator skipped: built {built}, expected {GUBERNATOR_VERSION}")
    return binary, {
        **info, "version": built, "built_now": True,
        "build_s": round(time.monotonic() - started, 1),
    }  # fmt: skip


def gubernator_env(http_port: int, grpc_port: int, gossip_port: int, keys: int) -> dict[str, str]:
    """One standalone Gubernator on loopback. Peer discovery `none` leaves the peer pool
    empty (every request then answers 200 with the error "unable to pick a peer"), so it is
    a one-member member-list, joining itself, gossiping on loopback only."""
    gossip = f"{LOOPBACK}:{gossip_port}"
    return {
        "GUBER_HTTP_ADDRESS": f"{LOOPBACK}:{http_port}",
        "GUBER_GRPC_ADDRESS": f"{LOOPBACK}:{grpc_port}",
        "GUBER_ADVERTISE_ADDRESS": f"{LOOPBACK}:{grpc_port}",
        "GUBER_PEER_DISCOVERY_TYPE": "member-list",
        "GUBER_MEMBERLIST_ADDRESS": gossip,
        "GUBER_MEMBERLIST_BIND_ADDRESS": gossip,
        "GUBER_MEMBERLIST_KNOWN_NODES": gossip,
        "GUBER_INSTANCE_ID": "bench",
        "GUBER_CACHE_SIZE": str(max(GUBER_CACHE_DEFAULT, 2 * keys)),
        "OTEL_TRACES_EXPORTER": "none",  # no collector here: do not export spans to one
    }


@contextlib.contextmanager
def gubernator(binary: Path, log_dir: Path, keys: int) -> Iterator[tuple[str, int, dict[str, str]]]:
    """A running Gubernator; yields its base URL, pid and environment (stopped on exit)."""
    http_port, grpc_port, gossip_port = free_port(), free_port(), free_port()
    env = gubernator_env(http_port, grpc_port, gossip_port, keys)
    log = log_dir / "gubernator.log"
    with child([str(binary)], log, env) as proc:
        base = f"http://{LOOPBACK}:{http_port}"
        try:
            wait_http(f"{base}/v1/HealthCheck", 30, "GET", (200,), proc)
        except BenchError as exc:
            raise BenchError(f"Gubernator skipped: {exc}: {' | '.join(tail(log, 5))}") from None
        yield base, proc.pid, env


# -- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A scenario bound to a running server."""

    scenario: Scenario
    url: str
    pid: int
    script: str  # a Lua file: absolute, or a name in stress_test/wrk


def measured(
    wrk: str, target: Target, conns: int, secs: float, keys: int
) -> tuple[WrkResult, dict[str, float]]:
    """One wrk run with the CPU seconds of the server, of wrk and of everything else."""
    before = cpu_seconds(target.pid), children_cpu_seconds(), system_busy_seconds()
    started = time.monotonic()
    result = run_wrk(wrk, target.url, conns, secs, target.script, [str(keys), KEY_PREFIX])
    wall = time.monotonic() - started
    server = cpu_seconds(target.pid) - before[0]
    client = children_cpu_seconds() - before[1]
    busy = system_busy_seconds() - before[2]
    return result, {
        "server_cpu_s": server,
        "wall_s": wall,
        "server_cores": server / wall,
        "wrk_cores": client / wall,
        "other_cores": max(0.0, busy - server - client) / wall,
        "server_cpu_s_per_request": server / max(1, result.requests),
    }


def scenario_result(
    scenario: Scenario, runs: Sequence[WrkResult], cpus: Sequence[dict[str, float]]
) -> dict[str, Any]:
    """Medians over repetitions of one scenario (per request, and per check for batches)."""
    summary = summarize(runs)
    cpu = {k: statistics.median(c[k] for c in cpus) for k in cpus[0]}
    per = scenario.per_request
    per_request_s = cpu["server_cpu_s_per_request"]
    return {
        "label": scenario.label,
        "server": scenario.server,
        "path": scenario.path,
        "checks_per_request": per,
        "rps": summary["rps"],
        "checks_per_s": round(summary["rps"] * per, 1),
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "requests": sum(r.requests for r in runs),
        "non_2xx": sum(r.non_2xx for r in runs),
        "socket_errors": summary["socket_errors"],
        "cpu_s_per_request": per_request_s,
        "cpu_us_per_request": round(per_request_s * 1e6, 2),
        "cpu_us_per_check": round(per_request_s * 1e6 / per, 2),
        "server_cores": round(cpu["server_cores"], 2),
        "wrk_cores": round(cpu["wrk_cores"], 2),
        "other_cores": round(cpu["other_cores"], 2),
        "runs": [{**r, **{k: round(v, 9) for k, v in c.items()}}
                 for r, c in zip(summary["runs"], cpus, strict=True)],
    }  # fmt: skip


def verdict(name: str, result: dict[str, Any]) -> str | None:
    """What is wrong with a scenario's counts, or None: /v1/check and Gubernator must answer
    every request 200; /protected's non-2xx may be 429s (success), which wrk does not tell
    apart, so only socket errors count against it."""
    if result["socket_errors"]:
        return f"{result['socket_errors']} socket errors"
    if name != "protected" and result["non_2xx"]:
        return f"{result['non_2xx']} non-2xx answers"
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b to 3 decimals; None when either is missing or b is zero."""
    return round(a / b, 3) if a is not None and b else None


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """Ours over Gubernator: throughput (requests, and checks for batches), p99, CPU."""

    def get(name: str, key: str) -> float | None:
        value = (results.get(name) or {}).get(key)
        return None if value is None else float(value)

    gub_rps, gub_p99 = get("gubernator", "rps"), get("gubernator", "p99_ms")
    gub_cpu = get("gubernator", "cpu_s_per_request")
    batch_cpu = get("check_batch10", "cpu_s_per_request")
    return {
        "check_rps_vs_gubernator": ratio(get("check", "rps"), gub_rps),
        "check_p99_vs_gubernator": ratio(get("check", "p99_ms"), gub_p99),
        "check_cpu_per_request_vs_gubernator": ratio(get("check", "cpu_s_per_request"), gub_cpu),
        "batch10_checks_per_s_vs_gubernator": ratio(get("check_batch10", "checks_per_s"), gub_rps),
        "batch10_cpu_per_check_vs_gubernator": ratio(
            None if batch_cpu is None else batch_cpu / BATCH, gub_cpu
        ),
        "protected_rps_vs_gubernator": ratio(get("protected", "rps"), gub_rps),
    }


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Start the servers, run every scenario in turns, stop everything; the report."""
    started = time.monotonic()
    root = repo_root(Path(__file__).resolve().parent)
    report: dict[str, Any] = {
        **report_head("stress_test.bench_check", argv),
        "machine": {**machine_info(), "go": go_version()},
        "settings": {
            "wrk": f"1 thread, {args.conns} connections, {args.secs:g} s x {args.reps} reps "
            "per scenario (medians), after a 1 s warm-up each",
            "keys": f"cycled over {args.keys} keys {KEY_PREFIX}0..{KEY_PREFIX}{args.keys - 1}, "
            "the same for every scenario (a batch of 10 takes 10 consecutive keys)",
            "node": f"python -m service serve --node-id bench --port P --kafka none "
            f"{' '.join(NODE_LIMIT)}",
            "gubernator_request": gubernator_item(f"{KEY_PREFIX}N"),
        },
    }
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    problems: dict[str, str] = {}
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk not found on PATH (Debian/Ubuntu: apt-get install wrk)")
    with contextlib.ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_check-")))
        targets = start_servers(args, root, work_dir, stack, report, skipped)
        for target in list(targets):  # a wrong answer is not measured, the rest are
            problem = probe(target.scenario, target.url)
            if problem:
                say(f"{target.scenario.name} skipped: a probe request failed: {problem}")
                skipped[target.scenario.name] = f"a probe request failed: {problem}"
                targets.remove(target)
        for target in targets:  # warm-up, discarded
            run_wrk(wrk, target.url, args.conns, 1, target.script, [str(args.keys), KEY_PREFIX])
        runs: dict[str, list[WrkResult]] = {t.scenario.name: [] for t in targets}
        cpus: dict[str, list[dict[str, float]]] = {t.scenario.name: [] for t in targets}
        for rep in range(args.reps):
            for target in targets:
                name = target.scenario.name
                say(f"wrk {name} {rep + 1}/{args.reps} (load avg {os.getloadavg()[0]:.2f})")
                result, cpu = measured(wrk, target, args.conns, args.secs, args.keys)
                runs[name].append(result)
                cpus[name].append(cpu)
        for target in targets:  # still deciding right after the load?
            problem = probe(target.scenario, target.url)
            if problem:
                problems[target.scenario.name] = f"probe after the runs: {problem}"
    for target in targets:
        name = target.scenario.name
        results[name] = scenario_result(target.scenario, runs[name], cpus[name])
        problem = problems.get(name) or verdict(name, results[name])
        results[name]["ok"] = problem is None
        if problem:
            problems[name] = problem
    report.update(
        results=results,
        ratios=ratios(results),
        problems=problems,
        skipped=skipped,
        elapsed_s=round(time.monotonic() - started, 1),
        load_avg_at_end=[round(x, 2) for x in os.getloadavg()],
    )
    return report


def start_servers(
    args: argparse.Namespace,
    root: Path,
    work_dir: Path,
    stack: contextlib.ExitStack,
    report: dict[str, Any],
    skipped: dict[str, str],
) -> list[Target]:
    """Start the node and Gubernator (stopped when `stack` closes); their targets in order.
    Gubernator's absence is recorded in `skipped`, not raised."""
    scripts: dict[str, str] = {}
    for scenario in SCENARIOS:
        if scenario.script is None:
            scripts[scenario.name] = "users.lua"
        else:
            path = work_dir / f"{scenario.name}.lua"
            path.write_text(scenario.script())
            scripts[scenario.name] = str(path)  # absolute: WRK_DIR / it is itself
    say("starting the node ...")
    proc = stack.enter_context(node("bench", "none", NODE_LIMIT, work_dir))
    servers: dict[str, tuple[str, int]] = {"node": (proc.url, pid_of(proc))}
    try:
        binary, build = gubernator_binary(root, say)
        say(f"starting Gubernator {build['version']} ...")
        base, pid, env = stack.enter_context(gubernator(binary, work_dir, args.keys))
        servers["gubernator"] = (base, pid)
        report["gubernator"] = {**build, "args": [], "env": env}
    except BenchError as exc:
        say(str(exc))
        skipped["gubernator"] = str(exc)
    return [
        Target(scenario, servers[scenario.server][0] + scenario.path,
               servers[scenario.server][1], scripts[scenario.name])
        for scenario in SCENARIOS if scenario.server in servers
    ]  # fmt: skip


def go_version() -> str | None:
    """`go version`, None without Go."""
    go = shutil.which("go")
    if go is None:
        return None
    done = subprocess.run([go, "version"], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() or None


def say(message: str) -> None:
    """Progress on stderr (stdout holds only the report)."""
    print(f"[bench_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- command line and report -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m stress_test.bench_check`."""
    p = argparse.ArgumentParser(
        prog="python -m stress_test.bench_check",
        description="Benchmark a node's POST /v1/check (single and batches of 10) against "
        f"Gubernator {GUBERNATOR_VERSION} (POST /v1/GetRateLimits), /protected as a reference.",
    )
    add_wrk_options(p)
    p.add_argument("--keys", type=int, default=1000, help="distinct keys cycled (1000)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options with --quick defaults filled in; an argparse error on impossible values."""
    return wrk_options(build_parser(), argv, counts=("keys",))


def render_table(report: dict[str, Any]) -> str:
    """The report as readable text."""
    lines = [
        *header_lines(report),
        *(f"{k}: {v}" for k, v in report["settings"].items()),
        "",
        f"{'scenario':<26}{'req/s':>9}{'checks/s':>10}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'non-2xx':>9}{'us CPU/chk':>11}{'srv cores':>10}{'wrk cores':>10}",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"{r['label']:<26}{r['rps']:>9.0f}{r['checks_per_s']:>10.0f}{r['p50_ms']:>8.2f}"
            f"{r['p99_ms']:>8.2f}{r['non_2xx']:>9}{r['cpu_us_per_check']:>11.1f}"
            f"{r['server_cores']:>10.2f}{r['wrk_cores']:>10.2f}"
            + ("" if r["ok"] else f"  ! {report['problems'].get(name)}")
        )
    lines.append("")
    lines += [f"{name:<38}{value}" for name, value in report["ratios"].items()]
    lines += [f"skipped {name}: {reason}" for name, reason in report["skipped"].items()]
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 with a report, 1 when a step failed, 2 on bad options, 130 when interrupted."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored (`&`)
    try:
        report = run(args, given)
    except KeyboardInterrupt:
        print("bench_check: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    except (BenchError, NodeFailed) as exc:
        print(f"bench_check: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else render_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
