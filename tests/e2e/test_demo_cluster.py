"""`ratelimiter demo --cluster`: the same 20 and 10 across 3 node processes, all agreeing."""

from __future__ import annotations

import pytest

from service.cli import main
from tests.service_helpers import clean_env

pytestmark = pytest.mark.e2e


def test_cluster_demo_admits_the_burst_and_every_node_agrees(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env(monkeypatch)

    assert main(["demo", "--cluster", "--kafka", kafka_bootstrap]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[out.index("alice:") + 1] == "✓" * 20 + "✗" * 10
    assert "  node  " + "123" * 10 in out
    views = [line for line in out if line.startswith("    node-")]
    assert len(views) == 3
    for line in views:
        assert "consumed 20" in line
        assert "node-1: 7, node-2: 7, node-3: 6" in line
    assert out[-1] == "Total: 30 requests, 20 admitted, 10 denied"
