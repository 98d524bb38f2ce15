"""`ratelimiter swarm`: a short real swarm (3 nodes, Locust, one node added) and its report."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from service.cli import main

pytestmark = pytest.mark.e2e

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_short_swarm_with_scale_out_writes_the_report(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    code = main(
        [
            "swarm", "--kafka", kafka_bootstrap, "--nodes", "3", "--users", "10",
            "--seconds", "10", "--scenario", "steady", "--scale-out-at", "4",
            "--out", str(out), "--partitions", "6",
        ]
    )  # fmt: skip

    assert code == 0
    figures = orjson.loads((out / "summary.json").read_bytes())
    assert figures["errors"] == 0
    assert figures["requests"] > 500  # 10 users at 20/s for most of 10 s
    assert figures["denied"] > 0  # steady users are over the limit
    # Round-robin over nodes that sync within tens of ms: close to one token bucket.
    assert 0.95 <= figures["accuracy"] <= 1.15
    # What the clients saw is what the nodes counted (the last scrape follows the swarm).
    assert abs(figures["nodes_admitted"] - figures["admitted"]) <= 5
    assert figures["sync_lag_ms"]["samples"] > 0
    assert figures["sync_lag_ms"]["p99"] is not None
    assert figures["latency_ms"]["p99"] is not None
    scale_out = figures["scale_out"]
    assert scale_out["node"] == "swarm-4"
    assert scale_out["requests_to_new_node"] > 0
    assert 0.95 <= scale_out["accuracy_after"] <= 1.15
    assert [n["node"] for n in figures["per_node"]] == [f"swarm-{i}" for i in range(1, 5)]
    assert all(n["requests"] > 0 for n in figures["per_node"])
    summary = (out / "summary.md").read_text()
    assert "cluster accuracy" in summary
    assert "## Scale-out" in summary
    for name in ("admitted.png", "sync_lag.png", "accuracy.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert (out / "locust_stats.csv").exists()
    assert summary.splitlines()[0] in capsys.readouterr().out
