"""Memory per key: RSS of a standalone node before and after one request per distinct user."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

from stress_test.bench_processes import (
    NODE_LIMIT,
    BenchError,
    node,
    parse_wrk,
    pid_of,
    scrape,
    total,
    vm_rss_mb,
    wrk_command,
)
from stress_test.bench_run import Bench

SEAL_MS = 600_000  # keys are deleted once idle and sealed (~3 s by default): keep them all


def run_memory(bench: Bench) -> dict[str, Any]:
    """Fill a standalone node with `memory_users` distinct keys through wrk (distinct.lua)."""
    wrk, a = bench.require_wrk(), bench.args
    users = int(a.memory_users)
    args = [
        *NODE_LIMIT, "--max-keys", str(2 * users + 1000), "--seal-ms", str(SEAL_MS),
        "--log-level", "warning",
    ]  # fmt: skip
    done_file = bench.work_dir / "memory.done"
    limit_s = max(60.0, users / 2000)  # far above the expected fill time
    with node("bench-mem", "none", args, bench.work_dir) as proc:
        pid = pid_of(proc)
        rss_before = vm_rss_mb(pid)
        keys_before = total(scrape(proc.url), "ratelimiter_tracked_keys") or 0.0
        command = wrk_command(
            wrk, f"{proc.url}/protected", a.conns, limit_s, "distinct.lua",
            [str(users), "mem-", str(done_file)],
        )  # fmt: skip
        started = time.monotonic()
        client = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            while not done_file.exists() and client.poll() is None:
                if time.monotonic() - started > limit_s + 30:
                    raise BenchError(f"{users} distinct requests did not finish in {limit_s} s")
                time.sleep(0.2)
            fill_s = time.monotonic() - started
            if client.poll() is None:
                client.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
            out, err = client.communicate(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(timeout=10)
        if not done_file.exists():
            raise BenchError(f"wrk stopped before {users} answers: {err.strip() or out}")
        filled = parse_wrk(out)
        keys_after = total(scrape(proc.url), "ratelimiter_tracked_keys") or 0.0
        rss_after = vm_rss_mb(pid)
    growth = rss_after - rss_before
    added = keys_after - keys_before
    return {
        "users_sent": users,
        "tracked_keys_before": int(keys_before),
        "tracked_keys_after": int(keys_after),
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
        "rss_growth_mb": round(growth, 1),
        "bytes_per_key": round(growth * 1e6 / added) if added > 0 else None,
        "fill_s": round(fill_s, 1),
        "fill_rps": round(filled.requests / filled.seconds) if filled.seconds else None,
        "non_2xx": filled.non_2xx,
        "notes": [
            f"standalone node (--kafka none), --max-keys {2 * users + 1000}, --seal-ms "
            f"{SEAL_MS} so no key is swept while idle; ids 'mem-0'..'mem-{users - 1}'",
            "RSS from /proc/<pid>/status VmRSS, MB = 10^6 bytes",
        ],
    }
