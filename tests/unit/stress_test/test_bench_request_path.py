"""The request-path benchmark runs every variant through the served stack and prints figures."""

from __future__ import annotations

import json

import pytest

from stress_test.bench_request_path import PATHS, main


def test_it_prints_a_figure_per_variant_and_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "50", "--repeats", "1", "--json"]) == 0

    figures = json.loads(capsys.readouterr().out)["us_per_request"]
    assert set(figures) == {"off", "on", "on-unsampled"}
    for by_path in figures.values():
        assert set(by_path) == set(PATHS)
        assert all(value > 0 for value in by_path.values())
