"""`ratelimiter demo` on one node: a line of marks per user and the totals."""

from __future__ import annotations

import pytest

from service.cli import main
from tests.service_helpers import clean_env


def test_single_node_demo_admits_the_burst_and_denies_the_rest(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env(monkeypatch)

    assert main(["demo"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[out.index("alice:") + 1] == "✓" * 20 + "✗" * 10
    assert "  Result: 20 allowed, 10 denied" in out
    assert out[-1] == "Total: 30 requests, 20 admitted, 10 denied"


def test_demo_users_and_counts_are_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env(monkeypatch)

    assert main(["demo", "--users", "alice,bob", "--requests", "8", "--burst", "5"]) == 0

    out = capsys.readouterr().out.splitlines()
    for user in ("alice", "bob"):
        assert out[out.index(f"{user}:") + 1] == "✓" * 5 + "✗" * 3
    assert out[-1] == "Total: 16 requests, 10 admitted, 6 denied"
