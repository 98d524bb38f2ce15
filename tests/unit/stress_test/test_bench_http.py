"""The HTTP benchmark's pure parts: options, wrk output, /metrics histograms, py-spy stacks,
percentiles, ratios and the report (no servers, no wrk)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from stress_test.bench_half import percentile
from stress_test.bench_http import SECTIONS, parse_args, ratios_and_targets, render_table
from stress_test.bench_processes import (
    WRK_DIR,
    bucket_quantile,
    buckets,
    parse_metrics,
    parse_wrk,
    per_bucket,
    summarize,
    top_functions,
    total,
    wrk_command,
)

WRK_OUTPUT = """\
Running 8s test @ http://127.0.0.1:40001/protected
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.52ms    1.07ms  29.86ms   91.17%
    Req/Sec    18.33k     1.02k   19.61k    81.25%
  Latency Distribution
     50%  812.00us
     75%    3.71ms
     90%    4.35ms
     99%    1.02s
  145923 requests in 8.00s, 33.83MB read
  Socket errors: connect 0, read 2, write 0, timeout 5
  Non-2xx or 3xx responses: 72960
Requests/sec:  18238.21
Transfer/sec:      4.23MB
"""

METRICS = """\
# HELP ratelimiter_sync_lag_seconds From admission on a peer (its previous flush) to merged here
# TYPE ratelimiter_sync_lag_seconds histogram
ratelimiter_sync_lag_seconds_bucket{le="0.01"} 10.0
ratelimiter_sync_lag_seconds_bucket{le="0.02"} 50.0
ratelimiter_sync_lag_seconds_bucket{le="0.05"} 99.0
ratelimiter_sync_lag_seconds_bucket{le="+Inf"} 100.0
ratelimiter_sync_lag_seconds_count 100.0
ratelimiter_sync_lag_seconds_sum 2.0
# HELP ratelimiter_tracked_keys Keys held, by rule
# TYPE ratelimiter_tracked_keys gauge
ratelimiter_tracked_keys{kind="default"} 700.0
ratelimiter_tracked_keys{kind="premium"} 300.0
"""


def test_wrk_output_is_parsed_with_units() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.requests == 145923
    assert result.seconds == pytest.approx(8.0)
    assert result.rps == pytest.approx(18238.21)
    assert result.p50_ms == pytest.approx(0.812)
    assert result.p75_ms == pytest.approx(3.71)
    assert result.p99_ms == pytest.approx(1020.0)
    assert result.non_2xx == 72960
    assert result.socket_errors == 7


def test_wrk_output_without_errors_counts_none() -> None:
    text = "\n".join(
        line for line in WRK_OUTPUT.splitlines() if "errors" not in line and "Non-2xx" not in line
    )
    result = parse_wrk(text)
    assert (result.non_2xx, result.socket_errors) == (0, 0)


def test_wrk_output_without_latency_percentiles_is_refused() -> None:
    text = "\n".join(line for line in WRK_OUTPUT.splitlines() if "%  " not in line)
    with pytest.raises(ValueError, match="--latency"):
        parse_wrk(text)


def test_wrk_failure_output_is_refused() -> None:
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_medians_and_admitted_share_over_runs() -> None:
    fast = parse_wrk(WRK_OUTPUT)
    slow = parse_wrk(WRK_OUTPUT.replace("18238.21", "9000.00").replace("72960", "0"))
    summary = summarize([fast, slow, fast])
    assert summary["rps"] == pytest.approx(18238.2)
    assert summary["admitted_share"] == pytest.approx(1 - 2 * 72960 / (3 * 145923), abs=1e-4)
    assert len(summary["runs"]) == 3


def test_wrk_command_uses_one_thread_latency_and_a_script_of_ours() -> None:
    command = wrk_command("wrk", "http://h/p", 64, 8.4, "users.lua", ["1000", "user-"])
    assert command[:5] == ["wrk", "-t1", "-c64", "-d8s", "--latency"]
    assert command[-3:] == ["--", "1000", "user-"]
    script = Path(command[command.index("-s") + 1])
    assert script.parent == WRK_DIR
    assert {p.name for p in WRK_DIR.glob("*.lua")} >= {"users.lua", "distinct.lua"}


def test_defaults_and_quick() -> None:
    full = parse_args([])
    assert full.only == list(SECTIONS)
    assert (full.reps, full.secs, full.memory_users) == (3, 8.0, 1_000_000)
    quick = parse_args(["--quick", "--json", "--only", "raw"])
    assert (quick.reps, quick.secs, quick.json, quick.only) == (1, 3.0, True, ["raw"])
    assert parse_args(["--quick", "--reps", "2"]).reps == 2


def test_sections_are_run_in_a_fixed_order() -> None:
    assert parse_args(["--only", "bootstrap, raw,node"]).only == ["node", "raw", "bootstrap"]


@pytest.mark.parametrize(
    "argv", [["--only", "raw,turbo"], ["--only", ","], ["--conns", "0"], ["--half-fraction", "2"]]
)
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_metrics_histogram_quantile_is_a_bucket_bound() -> None:
    after = parse_metrics(METRICS)
    assert total(after, "ratelimiter_tracked_keys") == 1000.0
    cumulative = buckets(after, "ratelimiter_sync_lag_seconds")
    assert cumulative == {0.01: 10.0, 0.02: 50.0, 0.05: 99.0, math.inf: 100.0}
    assert bucket_quantile({}, cumulative, 0.5) == 0.02
    assert bucket_quantile({}, cumulative, 0.99) == 0.05
    assert bucket_quantile({}, cumulative, 0.999) == math.inf
    # Only what was observed between the scrapes counts.
    before = {0.01: 10.0, 0.02: 10.0, 0.05: 10.0, math.inf: 10.0}
    assert bucket_quantile(before, cumulative, 0.4) == 0.02
    assert bucket_quantile(cumulative, cumulative, 0.99) is None


def testper_bucket_counts_between_scrapes() -> None:
    before = {0.01: 1.0, 0.02: 1.0, math.inf: 1.0}
    after = {0.01: 3.0, 0.02: 7.0, math.inf: 8.0}
    assert per_bucket(before, after) == {"<=10": 2, "<=20": 4, "+Inf": 1}


def test_nearest_rank_percentile() -> None:
    values = list(range(1, 101))
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile(values, 0.0) == 1
    assert percentile([], 0.5) is None


def test_profile_summary_of_collapsed_stacks() -> None:
    collapsed = (
        "main (/x/service/__main__.py:1);decide (/v/site-packages/a/b.py:3) 30\n"
        "main (/x/service/__main__.py:1);send (/v/site-packages/c.py:9) 10\n"
        "not a stack line\n"
    )
    summary = top_functions(collapsed)
    assert summary["samples"] == 40
    assert summary["self_pct"][0] == ("decide (a/b.py:3)", 75.0)
    assert summary["inclusive_pct"][0][1] == 100.0


def _report(results: dict[str, Any]) -> dict[str, Any]:
    ratios, targets = ratios_and_targets(results)
    return {
        "command": "python -m stress_test.bench_http",
        "date": "2026-01-01T00:00:00+00:00",
        "elapsed_s": 1.0,
        "machine": {"nproc": 2},
        "results": results,
        "ratios": ratios,
        "targets": targets,
        "skipped": {"slowapi": "redis-server not found"},
    }


def test_ratios_targets_and_table() -> None:
    row = {
        "rps": 100.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "admitted_share": 0.5,
        "cpu_cores": {"with_helpers_us_per_request": 80.0},
    }
    results = {
        "node": {**row, "rps": 300.0, "cpu_cores": {"with_helpers_us_per_request": 40.0}},
        "bare": row,
        "raw": {**row, "rps": 400.0},
        "memory": {"rss_growth_mb": 500.0, "notes": ["n"]},
    }
    report = _report(results)
    assert report["ratios"] == {
        "node_vs_bare_fastapi": 3.0,
        "node_vs_slowapi_redis": None,
        "node_vs_raw_asgi": 0.75,
        "node_vs_bare_fastapi_per_cpu": 2.0,
        "node_vs_slowapi_redis_per_cpu": None,
        "node_vs_raw_asgi_per_cpu": 2.0,
    }
    targets = report["targets"]
    assert targets["node_vs_bare_fastapi"]["met"] is True
    assert targets["memory_growth_mb"]["met"] is False
    assert targets["bootstrap_s"]["met"] is None
    text = render_table(report)
    assert "MISSED" in text
    assert "skipped slowapi: redis-server not found" in text
