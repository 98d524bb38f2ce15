"""The local snapshot file against reading the topic, in one process: for N users, the
time to merge their deltas (what bootstrap spends per user after Kafka and decoding),
to write the snapshot file (at a graceful stop), and to load it (at the restart).

Run `python -m stress_test.bench_snapshot [--users N] [--json]`.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from crdt.delta import Delta, Entry
from crdt.policy import SyncTiming
from service.engine import Engine
from service.replication.snapshot import load_snapshot, read_snapshot, write_snapshot
from service.rules.model import RuleSet, default_rule
from service.testing import T0, ManualClock
from stress_test.provenance import git_commit, header_lines, machine_info

TOPIC = "bench.snapshot"


def _engine(replica: str, users: int) -> Engine:
    rules = RuleSet(default=default_rule("token_bucket", 10.0, 20, 1.0))
    return Engine(rules, replica, ManualClock(T0), SyncTiming(1.0, 3.0), max_keys=users + 10)


def run(users: int) -> dict[str, Any]:
    """Times of merging, writing and loading `users` users' state (seconds)."""
    gc.set_threshold(50_000, 20, 100)  # as `ratelimiter serve` runs
    reader = _engine("reader/1", users)
    deltas = [
        ("default", Delta(f"boot-{i}", "writer/1", (Entry(int(T0), T0 - 0.5, 1, 0),)))
        for i in range(users)
    ]
    reader.set_bootstrapping(True, T0)
    started = time.perf_counter()
    reader.apply(deltas, T0)
    merge_s = time.perf_counter() - started
    reader.set_bootstrapping(False, T0)
    del deltas
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.snapshot"
        started = time.perf_counter()
        written = write_snapshot(path, reader, TOPIC, 12, dict.fromkeys(range(12), 1))
        write_s = time.perf_counter() - started
        size = path.stat().st_size
        restarted = _engine("reader/2", users)
        started = time.perf_counter()
        found = read_snapshot(path, TOPIC, 12)
        assert found is not None
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        loaded = load_snapshot(found, restarted)
        load_s = time.perf_counter() - started
    assert written == loaded == users, (written, loaded)
    view = restarted.view("boot-0", reader.rules.default, T0)
    assert view.contributions == {"writer/1": 1}, view
    return {
        "users": users,
        "merge_deltas_s": round(merge_s, 2),
        "write_file_s": round(write_s, 2),
        "file_mb": round(size / 2**20, 1),
        "read_file_s": round(read_s, 2),
        "load_keys_s": round(load_s, 2),
        "restart_s": round(read_s + load_s, 2),
        "restart_vs_merge": round((read_s + load_s) / merge_s, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    figures = run(args.users)
    result = {
        "command": "python -m stress_test.bench_snapshot " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_commit(),
        "machine": machine_info(),
        "elapsed_s": round(time.monotonic() - started, 1),
        **figures,
    }
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for line in header_lines(result):
            print(line)
        for key, value in result.items():
            if key not in ("command", "date", "git", "machine", "elapsed_s"):
                print(f"{key:>18}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
