"""`ratelimiter swarm` across regions, against real node processes on ONE broker.

There is no MirrorMaker here: both "regions" share one topic, so a delta reaches the other
region as fast as its own (D about 0). What this proves is the regional swarm itself:
users alternate regions, the lag probe measures same-region and cross-region lags, and the
report holds accuracy against the ideal bucket and the regional bound, with per-region
figures and plots. With mirrored regions (`ratelimiter up --regions 2`) the same command
takes the regions' node URLs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from service.cli import main
from tests.e2e.conftest import Spawn

pytestmark = pytest.mark.e2e

PNG = b"\x89PNG\r\n\x1a\n"


def _check_regional_report(out: Path, regions: dict[str, list[str]]) -> dict[str, Any]:
    figures = orjson.loads((out / "summary.json").read_bytes())
    assert figures["errors"] == 0
    assert figures["denied"] > 0  # hot_key users are over the limit
    regional = figures["regions"]
    assert [r["region"] for r in regional["per_region"]] == list(regions)
    assert [r["nodes"] for r in regional["per_region"]] == list(regions.values())
    # Each user's requests alternate between the regions.
    counts = [r["requests"] for r in regional["per_region"]]
    assert min(counts) > 0.4 * sum(counts)
    assert regional["cross_lag_ms"]["samples"] > 0
    assert regional["within_bound"] is True
    assert 0 < regional["admitted_over_bound"] <= 1
    # One topic syncs within tens of ms: close to one token bucket.
    assert 0.9 <= regional["accuracy_vs_ideal"] <= 1.15
    # The clients' admissions are what the nodes counted, less the probe's own.
    assert abs(figures["nodes_admitted"] - figures["admitted"]) <= 5
    summary = (out / "summary.md").read_text()
    assert "## Regions" in summary
    assert (out / "regions.png").read_bytes()[:8] == PNG
    return dict(regional)  # the summary's "regions" object


def test_the_swarm_drives_running_nodes_grouped_by_region(
    kafka_bootstrap: str, topic: str, spawn: Spawn, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    args = ("--topic", topic, "--rate", "10", "--burst", "20")
    nodes = {name: [spawn(f"{name}-{i}", kafka_bootstrap, *args) for i in (1, 2)]
             for name in ("east", "west")}  # fmt: skip
    specs = [f"{name}={','.join(n.url for n in members)}" for name, members in nodes.items()]
    flags = [f for spec in specs for f in ("--region-nodes", spec)]

    # The swarm checks the nodes' limit before it starts (a wrong --burst says so).
    assert main(["swarm", *flags, "--burst", "5", "--out", str(tmp_path / "no")]) == 1
    assert "limits to a burst of 20" in capsys.readouterr().err

    out = tmp_path / "report"
    code = main(
        ["swarm", *flags, "--users", "6", "--seconds", "10", "--scenario", "hot_key",
         "--out", str(out)]
    )  # fmt: skip

    assert code == 0
    regional = _check_regional_report(
        out, {"east": ["east-1", "east-2"], "west": ["west-1", "west-2"]}
    )
    assert regional["mode"] == "running regional nodes (--region-nodes)"
    assert regional["local_lag_ms"]["samples"] > 0


def test_the_swarm_rehearses_regions_as_node_groups_on_one_topic(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    code = main(
        ["swarm", "--kafka", kafka_bootstrap, "--regions", "2", "--nodes", "1",
         "--users", "4", "--seconds", "8", "--scenario", "hot_key", "--out", str(out),
         "--partitions", "6"]
    )  # fmt: skip

    assert code == 0
    regional = _check_regional_report(out, {"a": ["a-1"], "b": ["b-1"]})
    # One node per region: only d + D is observable, and the bound uses it whole.
    assert regional["D_s"] == 0.0
    assert regional["d_s"] > 0
