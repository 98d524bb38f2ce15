"""The flush benchmark runs both modes over real decisions and prints per-key figures."""

from __future__ import annotations

import json

import pytest

from stress_test.bench_flush import MODES, main


def test_it_prints_per_key_figures_for_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--keys-per-flush", "20", "--flushes", "5", "--repeats", "1", "--json"]) == 0

    figures = json.loads(capsys.readouterr().out)["figures"]
    for mode in MODES:
        assert figures[mode]["us_per_key"] > 0
        assert 0 <= figures[mode]["us_per_key_in_flush"] <= figures[mode]["us_per_key"]
    assert "us_per_key" in figures["replication"]
