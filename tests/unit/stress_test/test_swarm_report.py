"""The swarm report: exact-replay accuracy, histogram quantiles, metrics parsing, files written."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import orjson
import pytest

from service.metrics import histogram_quantile
from stress_test.swarm import SwarmConfig, SwarmFailed, locust_command
from stress_test.swarm_data import NodeSample, Request, SwarmRun
from stress_test.swarm_report import fluid_limit, ideal_admissions, load_run, write_report
from stress_test.swarm_scrape import parse_metrics

EXPOSITION = """\
# TYPE ratelimiter_decisions_total counter
ratelimiter_decisions_total{rule="default",outcome="admitted"} 20.0
ratelimiter_decisions_total{rule="default",outcome="denied"} 10.0
ratelimiter_decisions_total{rule="default",outcome="shadow_denied"} 0.0
ratelimiter_decisions_total{rule="gold",outcome="admitted"} 5.0
# TYPE ratelimiter_sync_lag_seconds histogram
ratelimiter_sync_lag_seconds_bucket{le="0.01"} 1.0
ratelimiter_sync_lag_seconds_bucket{le="0.05"} 3.0
ratelimiter_sync_lag_seconds_bucket{le="+Inf"} 4.0
ratelimiter_sync_lag_seconds_count 4.0
ratelimiter_sync_lag_seconds_sum 0.2
# TYPE ratelimiter_tracked_keys gauge
ratelimiter_tracked_keys{kind="default"} 7.0
ratelimiter_tracked_keys{kind="gold"} 1.0
# TYPE ratelimiter_poison_records_total counter
ratelimiter_poison_records_total{kind="bad_json"} 2.0
"""


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = {0.01: 10.0, 0.02: 30.0, 0.05: 40.0, math.inf: 40.0}

    assert histogram_quantile(0.25, buckets) == pytest.approx(0.01)  # rank 10: top of bucket 1
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.015)  # rank 20: mid bucket 2
    assert histogram_quantile(1.0, buckets) == pytest.approx(0.05)
    assert histogram_quantile(0.5, {0.01: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {0.01: 1.0, math.inf: 5.0}) == 0.01  # +Inf: highest bound


def test_parse_metrics_sums_rules_and_reads_the_lag_histogram() -> None:
    sample = parse_metrics("n1", 12.5, EXPOSITION)

    assert (sample.admitted, sample.denied) == (25.0, 10.0)
    assert sample.lag_buckets == {0.01: 1.0, 0.05: 3.0, math.inf: 4.0}
    assert (sample.lag_count, sample.lag_sum) == (4.0, 0.2)
    assert (sample.tracked, sample.poison) == (8.0, 2.0)


def test_ideal_replay_is_a_token_bucket_per_key() -> None:
    # 40 requests at 20/s for one key (rate 10, burst 20): the burst, then one in two.
    steady = [Request(i / 20, "a", 1, 1, 0) for i in range(40)]
    ideal = ideal_admissions(steady, rate=10.0, burst=20)
    first_denied = ideal.index(False)

    assert all(ideal[:first_denied])
    assert sum(ideal) == pytest.approx(20 + 10 * 39 / 20, abs=1)
    # Another key has its own bucket; an error was never decided.
    other = ideal_admissions([Request(0, "b", 5, 1, 0), Request(0, "c", 1, -1, 0)], 10.0, 20)
    assert other == [True, False]
    assert fluid_limit(steady, 10.0, 20) == pytest.approx(20 + 10 * 39 / 20)


def test_locust_command_names_the_user_class_and_refuses_unknown_scenarios(
    tmp_path: Path,
) -> None:
    command = locust_command(SwarmConfig(scenario="hot_key", users=5, seconds=3), tmp_path)

    assert command[-1] == "HotKeyUser"
    assert command[command.index("-t") + 1] == "3s"
    assert "--headless" in command
    with pytest.raises(SwarmFailed, match="unknown scenario"):
        locust_command(SwarmConfig(scenario="nope"), tmp_path)


def _synthetic_run(out: Path) -> SwarmRun:
    """Two nodes, one key over the limit for 4 s, a third node joining at 2 s."""
    records = out / "records"
    records.mkdir(parents=True)
    start = 1000.0
    with (records / "requests-1.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t", "key", "cost", "outcome", "node"])
        ideal = ideal_admissions(
            [Request(start + i / 20, "k", 1, 1, 0) for i in range(80)], 10.0, 20
        )
        for i, ok in enumerate(ideal):
            writer.writerow([start + i / 20, "k", 1, 1 if ok else 0, i % (2 if i < 40 else 3)])
    samples = []
    for second in range(6):
        for node in ("swarm-1", "swarm-2") + (("swarm-3",) if second >= 2 else ()):
            lag = {0.01: 2.0 * second, 0.05: 3.0 * second, math.inf: 3.0 * second}
            samples.append(
                NodeSample(node, start + second, 5.0 * second, 4.0 * second, lag, 0.0, 0.0, 1, 0)
            )
    return SwarmRun(
        config={
            "nodes": 2,
            "users": 1,
            "seconds": 4.0,
            "scenario": "steady",
            "rate": 10.0,
            "burst": 20,
            "kafka": "127.0.0.1:9092",
            "topic": "swarm.x",
            "partitions": 12,
            "scale_out_at": 1.5,
            "node_args": [],
        },
        started=start,
        ended=start + 4,
        nodes=["swarm-1", "swarm-2", "swarm-3"],
        samples=samples,
        scale_out=("swarm-3", start + 1.5, start + 2.0),
    )


def test_report_files_and_figures(tmp_path: Path) -> None:
    run = _synthetic_run(tmp_path)

    numbers = write_report(tmp_path, run)

    assert numbers["requests"] == 80
    assert numbers["accuracy"] == 1.0  # the records are the ideal's own answers
    assert numbers["errors"] == 0
    assert numbers["scale_out"]["node"] == "swarm-3"
    assert numbers["scale_out"]["joined_at_s"] == 2.0
    assert numbers["scale_out"]["accuracy_after"] == 1.0
    assert numbers["scale_out"]["requests_to_new_node"] > 0
    assert numbers["sync_lag_ms"]["p99"] is not None
    assert numbers["sync_lag_ms"]["p99"] <= 50.0
    assert [n["node"] for n in numbers["per_node"]] == ["swarm-1", "swarm-2", "swarm-3"]
    summary = (tmp_path / "summary.md").read_text()
    assert "**cluster accuracy**" in summary
    assert "## Scale-out" in summary
    for name in ("admitted.png", "sync_lag.png", "accuracy.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name})" in summary
    assert orjson.loads((tmp_path / "summary.json").read_bytes())["requests"] == 80
    again = load_run(tmp_path)
    assert again.samples == run.samples
    assert again.scale_out == run.scale_out
