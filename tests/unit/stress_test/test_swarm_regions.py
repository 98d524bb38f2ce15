"""The regional swarm's pieces: region specs, the probed d and D, accuracy against the ideal
bucket and the regional bound, per-region figures and plots, from a recorded run."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from crdt.bounds import regions_excess_bound
from service.cli import main
from service.local.process import free_port
from stress_test.swarm import SwarmConfig, SwarmFailed, SwarmUsage, check_config, run_swarm
from stress_test.swarm_data import LagSample, Request
from stress_test.swarm_regions import (
    delays,
    parse_region_nodes,
    per_region_per_second,
    regional_figures,
)
from stress_test.swarm_report import ideal_admissions, load_run, write_report

RECORDED = Path(__file__).parents[2] / "fixtures" / "swarm_regions"
PNG = b"\x89PNG\r\n\x1a\n"
REGIONS = {"a": ["a-1", "a-2"], "b": ["b-1", "b-2"]}


def test_region_specs_parse_in_order_and_bad_ones_say_why() -> None:
    parsed = parse_region_nodes(
        ["east=http://127.0.0.1:8001, http://127.0.0.1:8002/", "west=http://127.0.0.1:9001"]
    )
    assert parsed == {
        "east": ["http://127.0.0.1:8001", "http://127.0.0.1:8002"],
        "west": ["http://127.0.0.1:9001"],
    }
    bad = {
        "no-equals": "expected NAME=URL",
        "=http://x": "expected NAME=URL",
        "a=": "has no node URL",
        "a=ftp://x": r"is not an http\(s\) URL",
    }
    for spec, reason in bad.items():
        with pytest.raises(ValueError, match=reason):
            parse_region_nodes([spec, "z=http://127.0.0.1:1"])
    with pytest.raises(ValueError, match="given twice"):
        parse_region_nodes(["a=http://h:1", "a=http://h:2"])
    with pytest.raises(ValueError, match="listed twice"):
        parse_region_nodes(["a=http://h:1", "b=http://h:1"])
    with pytest.raises(ValueError, match="at least two regions"):
        parse_region_nodes(["a=http://h:1"])


def test_the_cli_refuses_bad_region_flags_with_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["swarm", "--region-nodes", "a=http://127.0.0.1:1"]) == 2
    assert "at least two regions" in capsys.readouterr().err
    assert main(["swarm", "--regions", "2", "--scale-out-at", "3"]) == 2
    assert "--scale-out-at is not supported with regions" in capsys.readouterr().err
    with pytest.raises(SwarmUsage, match="--regions 3 but --region-nodes names 2"):
        check_config(
            SwarmConfig(regions=3, region_nodes=(("a", ("http://h:1",)), ("b", ("http://h:2",))))
        )


def test_a_region_node_that_does_not_answer_stops_the_swarm(tmp_path: Path) -> None:
    silent = f"http://127.0.0.1:{free_port()}"
    config = SwarmConfig(
        region_nodes=(("a", (silent,)), ("b", (f"http://127.0.0.1:{free_port()}",))),
        out=tmp_path,
    )
    with pytest.raises(SwarmFailed, match=f"region a: {silent} does not answer"):
        run_swarm(config, progress=False)


def _probe(source: str, target: str, lag: float) -> LagSample:
    return LagSample(1000.0, source, target, lag)


def test_d_and_d_plus_big_d_are_the_largest_probed_lags() -> None:
    probes = [
        _probe("a-1", "a-2", 0.030),
        _probe("b-1", "b-2", 0.050),
        _probe("a-1", "b-1", 0.400),
        _probe("b-2", "a-1", 0.250),
    ]
    lags = delays(REGIONS, probes)
    assert lags["d_s"] == pytest.approx(0.050)
    assert lags["D_s"] == pytest.approx(0.350)
    assert lags["local_lag_ms"] == {"samples": 2, "p50": 50.0, "max": 50.0}
    assert lags["cross_lag_ms"]["max"] == 400.0
    # Given values win; one node per region: only d + D is seen, taken as d.
    given = delays(REGIONS, probes, sync_delay_ms=20, region_delay_ms=1000)
    assert (given["d_s"], given["D_s"], given["D_from"]) == (0.02, 1.0, "given")
    single = delays({"a": ["a-1"], "b": ["b-1"]}, [_probe("a-1", "b-1", 0.4)])
    assert (single["d_s"], single["D_s"]) == (0.4, 0.0)
    # No probe at all: zero delays (the report then shows zero samples).
    assert delays(REGIONS, [])["d_s"] == 0.0


def _requests(*rows: tuple[float, int, int]) -> list[Request]:
    return [Request(t, "k", 1, outcome, node) for t, outcome, node in rows]


def test_a_key_beyond_the_regional_bound_is_named() -> None:
    """Four nodes each admitting a full burst of 20 at once with d = 0 exceed
    C + 3C = 80 only if they admit more than that: 25 each does."""
    config = {"regions": REGIONS, "rate": 10.0, "burst": 20, "sync_delay_ms": 0.0}
    burst = [(1000.0 + i / 1000, 1, node) for node in range(4) for i in range(25)]
    requests = _requests(*burst)
    ideal = ideal_admissions(requests, 10.0, 20)

    figures = regional_figures(config, ["a-1", "a-2", "b-1", "b-2"], requests, ideal, [])

    assert figures["interval_bound"] == regions_excess_bound(20, 10.0, [2, 2], 0.0, 0.0) == 80
    assert figures["admitted_cost"] == 100
    assert figures["within_bound"] is False
    assert figures["keys_over_bound"] == ["k"]
    assert figures["accuracy_vs_ideal"] == pytest.approx(100 / 20)
    assert [r["admitted_cost"] for r in figures["per_region"]] == [50, 50]
    # Within the bound when the nodes only took one bucket between them.
    within = _requests(*[(1000.0 + i / 100, 1, i % 4) for i in range(20)])
    ok = regional_figures(config, ["a-1", "a-2", "b-1", "b-2"], within, [True] * 20, [])
    assert ok["within_bound"] is True
    assert ok["admitted_over_bound"] == pytest.approx(20 / (10 * 0.19 + 80), abs=1e-3)


def test_admissions_per_region_per_second() -> None:
    requests = _requests((1000.2, 1, 0), (1000.4, 1, 2), (1001.5, 1, 3), (1001.6, 0, 1))
    series = per_region_per_second(requests, ["a", "a", "b", "b"], 1000.0)
    assert series == {"a": [(1.0, 1.0)], "b": [(1.0, 1.0), (2.0, 1.0)]}


def test_the_recorded_rehearsal_run_draws_its_regional_report(tmp_path: Path) -> None:
    """A 6 s run recorded on 2 groups of 2 nodes sharing one topic (hot_key, 4 users)."""
    shutil.copytree(RECORDED, tmp_path, dirs_exist_ok=True)
    run = load_run(tmp_path)
    with (tmp_path / "records" / "requests-1.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))

    numbers = write_report(tmp_path, run)

    regional = numbers["regions"]
    assert regional["regions"] == 2
    assert regional["writers"] == 4
    assert [r["region"] for r in regional["per_region"]] == ["a", "b"]
    assert sum(r["requests"] for r in regional["per_region"]) == len(rows) == 228
    # Users alternate regions: each region got half of the requests, give or take a user's.
    assert abs(regional["per_region"][0]["requests"] - 114) <= 4
    assert regional["admitted_cost"] == numbers["admitted_cost"] == 75
    assert regional["local_lag_ms"]["samples"] == 7
    assert regional["cross_lag_ms"]["samples"] == 14
    assert regional["d_s"] == pytest.approx(0.0578, abs=1e-4)
    assert regional["within_bound"] is True
    assert 0 < regional["admitted_over_bound"] < 1
    assert numbers["probe_admissions"] == 7
    summary = (tmp_path / "summary.md").read_text()
    assert "## Regions" in summary
    assert "**admitted / regional bound**" in summary
    assert "![regions.png](regions.png)" in summary
    assert (tmp_path / "regions.png").read_bytes()[:8] == PNG
    again = load_run(tmp_path)
    assert again.probes == run.probes
    assert again.config["regions"] == REGIONS


LOCUSTFILE_PICKS = """
import sys
import orjson
sys.path.insert(0, "stress_test")
import locustfile
text = "a http://h:1\\nb http://h:2/\\n\\na http://h:3\\nb http://h:4\\nb http://h:5\\n"
urls, groups = locustfile.parse_hosts(text)
plain = locustfile.parse_hosts("http://h:1\\nhttp://h:2\\n")
picks = [locustfile.pick_node(turn, len(urls), groups) for turn in range(12)]
print(orjson.dumps({"urls": urls, "groups": groups, "plain": plain, "picks": picks}).decode())
"""


def test_the_locustfile_alternates_regions_and_round_robins_inside_them() -> None:
    # In a child process: importing Locust patches the standard library with gevent.
    result = subprocess.run(
        [sys.executable, "-c", LOCUSTFILE_PICKS],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).parents[3],
    )
    out = orjson.loads(result.stdout.splitlines()[-1])
    assert out["urls"] == [f"http://h:{i}" for i in range(1, 6)]
    assert out["groups"] == [[0, 2], [1, 3, 4]]
    assert out["plain"] == [["http://h:1", "http://h:2"], []]
    # turn 0: a, 1: b, 2: a, 3: b ...; inside a region: its nodes in turn.
    regions = ["a" if i in (0, 2) else "b" for i in out["picks"]]
    assert regions == ["a", "b"] * 6
    assert out["picks"][0::2] == [0, 2, 0, 2, 0, 2]
    assert out["picks"][1::2] == [1, 3, 4, 1, 3, 4]
