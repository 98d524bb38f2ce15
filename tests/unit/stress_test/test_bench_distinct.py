"""The distinct-user benchmark's pure parts: the wrk Lua script, its status file, event-loop
lag from histogram deltas, node counters, options, ratios and the report (no wrk, no Kafka)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from stress_test.bench_distinct import (
    LUA_SCRIPT,
    MAX_KEYS,
    STATUS_NAMES,
    Run,
    add_counts,
    counter_deltas,
    gauges,
    node_args,
    parse_args,
    parse_statuses,
    ratios,
    render_table,
    run_prefix,
    summarize_runs,
    write_script,
)
from stress_test.bench_processes import (
    WrkResult,
    histogram_delta,
    lag_summary,
    parse_metrics,
    wrk_command,
)


def lua_user_id(prefix: str, thread: int, n: int) -> str:
    """What the script's request() sends as the n-th id of wrk thread `thread` (from 1)."""
    return f"{prefix}{thread}.{n}"


def test_script_defines_wrk_hooks_and_balanced_blocks() -> None:
    for hook in ("setup(thread)", "init(args)", "request()", "response(status, headers, body)",
                 "done(summary, latency, requests)"):  # fmt: skip
        assert f"function {hook}" in LUA_SCRIPT
    code = "\n".join(line.split("--")[0] for line in LUA_SCRIPT.splitlines())
    opened = len(re.findall(r"\b(function|if|for|while)\b", code))
    assert opened == len(re.findall(r"\bend\b", code))
    assert "%" not in code.replace("%s %d", "")  # no modulo: ids are never cycled


def test_script_sends_a_new_id_per_request_in_the_documented_format() -> None:
    assert "sent = sent + 1" in LUA_SCRIPT
    assert 'local user = prefix .. tid .. "." .. sent' in LUA_SCRIPT
    assert '["X-User-ID"] = user' in LUA_SCRIPT
    assert 'thread:set("tid", #threads + 1)' in LUA_SCRIPT
    # The same format over several runs and threads never repeats an id.
    ids = [
        lua_user_id(run_prefix(token, run), thread, n)
        for token in ("a1b2c3", "d4e5f6")
        for run in (1, 2, 11)
        for thread in (1, 2, 11)
        for n in range(1, 200)
    ]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "a1b2c3.1.1.1"
    assert all(len(i) <= 256 and i.isprintable() and i == i.strip() for i in ids)


def test_script_status_names_are_the_parsed_ones(tmp_path: Path) -> None:
    names = re.search(r"local names = \{(.*?)\}", LUA_SCRIPT)
    assert names is not None
    assert re.findall(r'"(\w+)"', names.group(1)) == list(STATUS_NAMES)
    path = write_script(tmp_path)
    assert path.read_text() == LUA_SCRIPT
    # An absolute script path replaces wrk_command's WRK_DIR.
    command = wrk_command("wrk", "http://h/p", 16, 8, str(path), ["tok.1.", "/s.txt"])
    assert command[command.index("-s") + 1] == str(path)
    assert command[:3] == ["wrk", "-t1", "-c16"]


def test_status_file_is_parsed() -> None:
    text = "s2xx 100\ns429 2\ns4xx 0\ns5xx 3\nsother 1\nsent 107\n"
    assert parse_statuses(text) == {
        "2xx": 100, "429": 2, "4xx_other": 0, "5xx": 3, "other": 1, "ids_sent": 107,
    }  # fmt: skip
    assert parse_statuses("s2xx 5\ngarbage\nsent x\n") == {
        "2xx": 5, "429": 0, "4xx_other": 0, "5xx": 0, "other": 0, "ids_sent": 0,
    }  # fmt: skip


BEFORE = {0.001: 10.0, 0.002: 10.0, 0.005: 10.0, 0.1: 10.0, math.inf: 10.0}
AFTER = {0.001: 110.0, 0.002: 205.0, 0.005: 209.0, 0.1: 210.0, math.inf: 210.0}


def test_lag_from_the_histogram_delta_over_the_window() -> None:
    delta = histogram_delta(BEFORE, AFTER)
    assert delta == {0.001: 100.0, 0.002: 195.0, 0.005: 199.0, 0.1: 200.0, math.inf: 200.0}
    summary = lag_summary(delta)
    assert summary["observations"] == 200
    assert summary["p50_ms_bound"] == 1.0  # rank 100 is in the first bucket
    assert summary["p99_ms_bound"] == 5.0  # rank 198
    assert summary["max_ms_bound"] == 100.0  # the smallest bound holding all 200
    assert summary["per_bucket_ms"] == {"<=1": 100, "<=2": 95, "<=5": 4, "<=100": 1}


def test_lag_beyond_the_last_bucket_and_without_observations() -> None:
    late = lag_summary({0.001: 1.0, 2.5: 1.0, math.inf: 2.0})
    assert (late["p50_ms_bound"], late["max_ms_bound"]) == (1.0, "+Inf")
    empty = lag_summary(histogram_delta(BEFORE, BEFORE))
    assert empty["observations"] == 0
    assert (empty["p50_ms_bound"], empty["p99_ms_bound"], empty["max_ms_bound"]) == (None,) * 3
    assert lag_summary({})["max_ms_bound"] is None


def test_deltas_of_several_windows_add_up() -> None:
    one = histogram_delta(BEFORE, AFTER)
    both = add_counts(one, {0.001: 0.0, 0.002: 0.0, 0.005: 0.0, 0.1: 1.0, math.inf: 1.0})
    summary = lag_summary(both)
    assert (summary["observations"], summary["max_ms_bound"]) == (201, 100.0)
    assert add_counts() == {}


METRICS_BEFORE = """\
# TYPE ratelimiter_decisions counter
ratelimiter_decisions_total{rule="default",outcome="admitted"} 100.0
ratelimiter_decisions_total{rule="premium",outcome="admitted"} 5.0
ratelimiter_decisions_total{rule="default",outcome="denied"} 1.0
# TYPE ratelimiter_store_events counter
ratelimiter_store_events_total{kind="evicted_active"} 0.0
ratelimiter_store_events_total{kind="deleted_idle"} 7.0
# TYPE ratelimiter_records_produced counter
ratelimiter_records_produced_total{kind="batch"} 10.0
ratelimiter_records_produced_total{kind="snapshot"} 1.0
# TYPE ratelimiter_tracked_keys gauge
ratelimiter_tracked_keys{kind="default"} 50.0
# TYPE ratelimiter_broker_up gauge
ratelimiter_broker_up 1.0
"""


def test_counter_deltas_and_gauges() -> None:
    before = parse_metrics(METRICS_BEFORE)
    after = parse_metrics(
        METRICS_BEFORE.replace('admitted"} 100.0', 'admitted"} 1100.0')
        .replace('deleted_idle"} 7.0', 'deleted_idle"} 9.0')
        .replace('batch"} 10.0', 'batch"} 30.0')
        .replace("broker_up 1.0", "broker_up 0.0")
    )
    assert counter_deltas(before, after) == {
        "admitted": 1000.0, "denied": 0.0, "evicted_active": 0.0, "deleted_idle": 2.0,
        "records_produced": 20.0, "publish_failures": 0.0, "outbox_compactions": 0.0,
    }  # fmt: skip
    assert gauges(after, synced=True) == {
        "tracked_keys": 50.0, "buffered_deltas": None, "broker_up": 0.0,
    }  # fmt: skip
    assert gauges(after, synced=False) == {"tracked_keys": 50.0}


def _run(rps: float, p99: float, requests: int, broker_cpu: float | None = 0.5) -> Run:
    wrk = WrkResult(requests, 8.0, rps, 1.0, 2.0, 3.0, p99)
    return Run(
        wrk=wrk,
        statuses={"2xx": requests, "429": 0, "5xx": 0},
        wall_s=8.0,
        node_cpu_s=requests * 50e-6,
        broker_cpu_s=broker_cpu,
        lag=histogram_delta(BEFORE, AFTER),
        counters={"admitted": float(requests)},
        gauges_after={"tracked_keys": 10.0},
        load_avg_1m=1.0,
    )


def test_runs_are_summarized_with_medians_totals_and_lag() -> None:
    summary = summarize_runs([_run(1000, 5, 8000), _run(3000, 9, 24000), _run(2000, 7, 16000)])
    assert (summary["rps"], summary["p99_ms"]) == (2000.0, 7.0)
    assert (summary["requests"], summary["non_2xx"], summary["status_5xx"]) == (48000, 0, 0)
    assert summary["cpu_us_per_request"] == 50.0
    assert summary["broker_cpu_us_per_request"] == round(1.5 / 48000 * 1e6, 1)
    assert summary["event_loop_lag"]["observations"] == 600
    assert summary["node_counters"] == {"admitted": 48000}
    without_broker = summarize_runs([_run(1000, 5, 8000, broker_cpu=None)])
    assert without_broker["broker_cpu_us_per_request"] is None


def _results() -> dict[str, Any]:
    standalone = summarize_runs([_run(10000, 4, 80000)])
    synced = summarize_runs([_run(6000, 10, 48000)])
    before = summarize_runs([_run(6000, 10, 48000)])
    during = summarize_runs([_run(6000, 50, 48000, broker_cpu=None)])
    return {
        "standalone": standalone,
        "synced": synced,
        "outage": {"before": before, "during": during, "recovery": {"broker_up_after_s": 1.0}},
    }


def test_ratios_and_missing_scenarios() -> None:
    found = ratios(_results())
    assert found["synced_vs_standalone_rps"] == 0.6
    assert found["synced_vs_standalone_p99"] == 2.5
    assert found["synced_vs_standalone_cpu_per_request"] == 1.0
    assert found["outage_during_vs_before_p99"] == 5.0
    assert set(ratios({"standalone": {"rps": 1.0}}).values()) == {None}


def test_table_names_every_scenario_and_ratio() -> None:
    report = {
        "command": "python -m stress_test.bench_distinct --quick",
        "date": "2026-01-01T00:00:00+00:00",
        "git": {"commit": "abc1234", "dirty": True},
        "elapsed_s": 1.0,
        "machine": {"nproc": 2},
        "results": _results(),
        "ratios": ratios(_results()),
        "skipped": {"x": "why"},
    }
    text = render_table(report)
    for word in ("standalone", "synced", "outage before", "outage during", "abc1234 (dirty tree)",
                 "outage_during_vs_before_p99", "skipped x: why", "1.0/5.0/100.0"):  # fmt: skip
        assert word in text


def test_defaults_quick_and_overrides() -> None:
    full = parse_args([])
    assert (full.reps, full.secs, full.conns, full.kafka, full.json) == (3, 8.0, 16, None, False)
    quick = parse_args(["--quick", "--json"])
    assert (quick.reps, quick.secs, quick.json) == (1, 3.0, True)
    given = parse_args(["--quick", "--secs", "5", "--reps", "2", "--kafka", "127.0.0.1:9092"])
    assert (given.reps, given.secs, given.kafka) == (2, 5.0, "127.0.0.1:9092")


@pytest.mark.parametrize(
    "argv", [["--reps", "0"], ["--conns", "0"], ["--secs", "0.5"], ["--threads", "2"]]
)
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_nodes_hold_enough_keys() -> None:
    args = node_args(["--topic", "t"])
    assert args[args.index("--max-keys") + 1] == str(MAX_KEYS) == "2000000"
    assert args[-2:] == ["--topic", "t"]
