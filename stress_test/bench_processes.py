"""Processes a benchmark runs and reads: wrk, node and baseline servers, redis-server,
py-spy; their output, /metrics and /proc figures parsed."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from service.local.nodes import NodeProcess
from service.local.process import LOOPBACK, free_port, tail

WRK_DIR = Path(__file__).with_name("wrk")
NODE_LIMIT = ("--rate", "10", "--burst", "20")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


class BenchError(Exception):
    """A benchmark step failed (a server did not start, wrk failed, a tool is missing)."""


# -- wrk -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles (ms) and failures."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: int = 0


def _ms(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


def parse_wrk(text: str) -> WrkResult:
    """The figures of `wrk --latency` output; ValueError when it holds no result."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in " + _DURATION, text, re.MULTILINE)
    if rps is None or total is None:
        raise ValueError("no 'Requests/sec' or 'N requests in' line in wrk output")
    percentiles = {
        int(float(p)): _ms(n, u)
        for p, n, u in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+" + _DURATION, text, re.MULTILINE)
    }
    missing = {50, 75, 90, 99} - percentiles.keys()
    if missing:
        raise ValueError(f"wrk output lacks the {sorted(missing)} percentiles (use --latency)")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_ms(total.group(2), total.group(3)) / 1000,
        rps=float(rps.group(1)),
        p50_ms=percentiles[50],
        p75_ms=percentiles[75],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def wrk_command(
    wrk: str, url: str, conns: int, secs: float, script: str, script_args: Sequence[str]
) -> list[str]:
    """One-thread wrk with latency percentiles and a Lua script from stress_test/wrk."""
    return [
        wrk, "-t1", f"-c{conns}", f"-d{max(1, round(secs))}s", "--latency",
        "-s", str(WRK_DIR / script), url, "--", *script_args,
    ]  # fmt: skip


def run_wrk(
    wrk: str, url: str, conns: int, secs: float, script: str, script_args: Sequence[str]
) -> WrkResult:
    """Run wrk to the end and parse its output."""
    command = wrk_command(wrk, url, conns, secs, script, script_args)
    done = subprocess.run(command, capture_output=True, text=True, timeout=secs + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(command)} failed: {done.stderr.strip() or done.stdout}")
    return parse_wrk(done.stdout)


def summarize(runs: Sequence[WrkResult]) -> dict[str, Any]:
    """Medians over repetitions (each figure separately), with every run kept."""
    requests = sum(r.requests for r in runs)
    return {
        "rps": round(statistics.median(r.rps for r in runs), 1),
        "p50_ms": round(statistics.median(r.p50_ms for r in runs), 3),
        "p99_ms": round(statistics.median(r.p99_ms for r in runs), 3),
        "admitted_share": round(1 - sum(r.non_2xx for r in runs) / requests, 4)
        if requests
        else None,
        "socket_errors": sum(r.socket_errors for r in runs),
        "runs": [asdict(r) for r in runs],
    }


# -- processes -----------------------------------------------------------------------


def wait_http(
    url: str, timeout_s: float, method: str, ok: Sequence[int], proc: subprocess.Popen[bytes]
) -> None:
    """Poll `url` until it answers one of `ok`; BenchError if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise BenchError(f"the server for {url} exited with {proc.returncode}")
        request = urllib.request.Request(url, method=method, headers={"X-User-ID": "probe"})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310
                if response.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{url} did not answer {list(ok)} within {timeout_s}s")
        time.sleep(0.05)


@contextlib.contextmanager
def child(
    command: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own session (SIGTERM, then SIGKILL, on exit)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def uvicorn_app(
    target: str, log_dir: Path, *, factory: bool = False, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """A baseline app under uvicorn as the node runs (uvloop, httptools, no access log);
    yields its POST /protected URL and pid."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", target, "--host", LOOPBACK, "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
        *(["--factory"] if factory else []),
    ]  # fmt: skip
    name = target.rpartition(":")[2]
    log = log_dir / f"{name}.log"
    with child(command, log, env) as proc:
        url = f"http://{LOOPBACK}:{port}/protected"
        try:
            wait_http(url, 30, "POST", (200, 429), proc)
        except BenchError as exc:
            raise BenchError(f"{exc}: {' | '.join(tail(log, 5))}") from None
        yield url, proc.pid


@contextlib.contextmanager
def node(
    node_id: str, kafka: str, args: Sequence[str], log_dir: Path, timeout_s: float = 120
) -> Iterator[NodeProcess]:
    """A `ratelimiter serve` process, ready; stopped (SIGTERM) on exit."""
    process = NodeProcess(node_id, free_port(), kafka, list(args), log_dir)
    try:
        process.start().wait_ready(timeout_s)
        yield process
    finally:
        process.stop()


def pid_of(proc: NodeProcess) -> int:
    """The pid of a started node process."""
    if proc.process is None:
        raise BenchError(f"{proc.node_id} was not started")
    return proc.process.pid


@contextlib.contextmanager
def redis_server(log_dir: Path) -> Iterator[tuple[str, int]]:
    """A throwaway redis-server without persistence; yields its URL and pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server not found (Debian/Ubuntu: apt-get install redis-server)")
    port = free_port()
    command = [
        binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
        "--dir", str(log_dir),
    ]  # fmt: skip
    with child(command, log_dir / "redis.log") as proc:
        deadline = time.monotonic() + 15
        while not _redis_pong(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise BenchError(f"redis-server on port {port} did not answer PING")
            time.sleep(0.05)
        yield f"redis://{LOOPBACK}:{port}/0", proc.pid


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# -- metrics -------------------------------------------------------------------------

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(base_url: str) -> Samples:
    """A node's /metrics as {sample name: {sorted labels: value}}."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    return parse_metrics(text)


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition as {sample name: {sorted labels: value}}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(samples: Samples, name: str) -> float | None:
    """The sum of a sample over its labels (None when absent)."""
    values = samples.get(name)
    return sum(values.values()) if values else None


def buckets(samples: Samples, name: str) -> dict[float, float]:
    """Cumulative histogram counts by upper bound `le`."""
    found = samples.get(f"{name}_bucket", {})
    return {float(dict(labels)["le"]): value for labels, value in found.items()}


def bucket_quantile(
    before: dict[float, float], after: dict[float, float], q: float
) -> float | None:
    """The upper bound of the bucket holding quantile q of the observations between two
    scrapes (a bound, not an interpolation); inf beyond the last finite bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    return next(b for b, c in zip(bounds, counts, strict=True) if c >= rank)


def histogram_delta(
    before: Mapping[float, float], after: Mapping[float, float]
) -> dict[float, float]:
    """Cumulative bucket counts observed between two scrapes."""
    return {bound: after[bound] - before.get(bound, 0.0) for bound in after}


def per_bucket(before: dict[float, float], after: dict[float, float]) -> dict[str, int]:
    """Observations between two scrapes per bucket, keyed "<=bound ms" (not cumulative)."""
    out: dict[str, int] = {}
    below = 0.0
    for bound in sorted(after):
        cumulative = after[bound] - before.get(bound, 0.0)
        if cumulative > below:
            label = "+Inf" if math.isinf(bound) else f"<={bound * 1000:g}"
            out[label] = round(cumulative - below)
        below = cumulative
    return out


def _ms_bound(seconds: float | None) -> float | str | None:
    if seconds is None:
        return None
    return "+Inf" if math.isinf(seconds) else round(seconds * 1000, 3)


def lag_summary(delta: Mapping[float, float]) -> dict[str, Any]:
    """Event-loop lag over a window from its cumulative bucket delta: p50, p99 and max as the
    upper bound (ms) of the bucket holding them ("+Inf" beyond the last bucket); max is the
    smallest bound holding every observation."""
    counts = dict(delta)
    return {
        "observations": round(counts.get(math.inf, 0.0)),
        "p50_ms_bound": _ms_bound(bucket_quantile({}, counts, 0.5)),
        "p99_ms_bound": _ms_bound(bucket_quantile({}, counts, 0.99)),
        "max_ms_bound": _ms_bound(bucket_quantile({}, counts, 1.0)),
        "per_bucket_ms": per_bucket({}, counts),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float:
    """CPU seconds every core spent busy since boot (all of /proc/stat but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's reaped children (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def vm_rss_mb(pid: int) -> float:
    """Resident set size of a process from /proc/<pid>/status, in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise BenchError(f"no VmRSS for pid {pid}")


# -- profiles ------------------------------------------------------------------------


def _short(frame: str) -> str:
    """`fn (/venv/lib/python3.X/site-packages/pkg/mod.py:12)` -> `fn (pkg/mod.py:12)`."""
    stdlib = f"/lib/python{sys.version_info.major}.{sys.version_info.minor}/"
    for marker in ("site-packages/", stdlib, str(Path.cwd()) + "/"):
        if marker in frame:
            head, _, tail = frame.partition("(")
            return head + "(" + tail.rpartition(marker)[2]
    return frame


def top_functions(collapsed: str, n: int = 15) -> dict[str, Any]:
    """Self and inclusive shares of the busiest functions in py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        samples += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def top(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:n]
        return [(frame, round(100 * c / samples, 1)) for frame, c in ranked]

    return {"samples": samples, "self_pct": top(own), "inclusive_pct": top(inclusive)}


@contextlib.contextmanager
def profiled(pid: int, out_dir: Path | None, name: str, sink: dict[str, Any]) -> Iterator[None]:
    """Sample `pid` with py-spy while the block runs when `out_dir` is set; the busiest
    functions go to sink["profile"], the raw stacks to out_dir/<name>.txt."""
    if out_dir is None:
        yield
        return
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        raise BenchError("py-spy not found (pip install py-spy) but --profile was given")
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{name}.txt"
    command = [
        py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--function",
        "--output", str(output),
    ]  # fmt: skip
    sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        if sampler.poll() is None:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = sampler.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            sampler.kill()
            _, err = sampler.communicate()
    if not output.exists():
        raise BenchError(f"py-spy wrote no profile: {err.decode(errors='replace').strip()}")
    sink["profile"] = {"file": str(output), **top_functions(output.read_text())}


def add_wrk_options(parser: argparse.ArgumentParser) -> None:
    """--json, --quick, --secs, --reps and --conns of a benchmark driven by wrk."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="1 x 3 s per scenario")
    parser.add_argument("--secs", type=float, help="seconds per wrk run (default 8; quick 3)")
    parser.add_argument("--reps", type=int, help="wrk runs per scenario (default 3; quick 1)")
    parser.add_argument("--conns", type=int, default=16, help="wrk connections, 1 thread (16)")


def wrk_options(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, counts: Sequence[str] = ()
) -> argparse.Namespace:
    """Parsed options with the --quick defaults filled in; an argparse error when --reps,
    --conns or one of `counts` is below 1, or --secs below a second (wrk's unit)."""
    args = parser.parse_args(argv)
    if args.secs is None:
        args.secs = 3.0 if args.quick else 8.0
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    for name in ("reps", "conns", *counts):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.secs < 1:
        parser.error("--secs must be at least 1 (wrk runs whole seconds)")
    return args
