"""`python -m stress_test.bench_core --quick --json` prints one JSON object with every
figure (sizes are tiny: this checks the script, it measures nothing)."""

from __future__ import annotations

import json

import pytest

from stress_test.bench_core import main

FIGURES = [
    "decisions_per_s",
    "decisions_per_s_with_flush",
    "decisions_per_s_1m_keys",
    "decisions_per_s_mostly_denied",
    "flush_deltas_per_s",
    "bytes_per_key",
    "bytes_per_key_state",
    "bytes_per_key_state_busy_every_epoch",
    "merge_records_per_s",
    "limits_moving_window_per_s",
    "limits_fixed_window_per_s",
    "limits_moving_window_mostly_denied_per_s",
    "naive_dict_bucket_per_s",
    "decisions_vs_limits_moving",
    "decisions_vs_limits_fixed",
    "decisions_vs_naive",
]


def test_quick_json_run_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--json"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0  # exactly one JSON object on one line
    report = json.loads(out)
    for name in FIGURES:
        assert isinstance(report[name], int | float), name
        assert report[name] > 0, name
    assert report["bytes_per_key"] > report["bytes_per_key_state"]
    assert 0 < report["admitted_fraction"] <= 1
    assert 0 < report["admitted_fraction_mostly_denied"] < report["admitted_fraction"]
    assert report["params"]["repeat"] == 1
    assert report["params"]["limits_version"] == "5.8.0"
    machine = report["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["python"].startswith("3.")
    assert report["date"].startswith("20")


def test_table_output_names_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "decisions_per_s" in out
    assert "machine" in out
