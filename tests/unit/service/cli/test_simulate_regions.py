"""`ratelimiter simulate --regions R --region-delay-ms D`: per-region admissions, the bound."""

from __future__ import annotations

import orjson
import pytest

from crdt.bounds import interval_excess_bound
from service.cli import main


def _rows(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    assert main(["simulate", *argv, "--json"]) == 0
    return [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_regions_print_one_row_per_mirror_delay_with_the_regional_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = _rows(
        capsys, "--regions", "2", "--nodes", "2", "--region-delay-ms", "0", "500",
        "--seconds", "5", "--users", "2",
    )  # fmt: skip

    assert [(r["regions"], r["region_delay_ms"]) for r in rows] == [(2, 0.0), (2, 500.0)]
    for row in rows:
        per_region = row["per_region"]
        assert isinstance(per_region, list)
        assert sum(per_region) == row["admitted"]
        assert all(a > 0 for a in per_region)  # each user's requests reach both regions
        assert row["within_bound"] is True
        d = (20 + 20) / 1000  # default flush + delay, no jitter
        assert row["interval_bound"] == pytest.approx(
            interval_excess_bound(20, 10.0, 2, d, 2, float(row["region_delay_ms"]) / 1000),  # type: ignore[arg-type]
            abs=0.01,
        )
    assert float(rows[1]["bound"]) > float(rows[0]["bound"])  # type: ignore[arg-type]


def test_the_adversarial_load_is_printed_close_to_its_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    [row] = _rows(
        capsys, "--regions", "2", "--nodes", "3", "--region-delay-ms", "1000",
        "--traffic", "adversarial", "--rate", "50", "--flush-ms", "5", "--seconds", "10",
    )  # fmt: skip

    excess, bound = float(row["max_interval_excess"]), float(row["interval_bound"])  # type: ignore[arg-type]
    # Within discreteness (a token and r*flush per writer) and R*r*d (see crdt.simulator).
    assert bound - 6 * (1 + 50 * 0.005) - 2 * 50 * 0.025 <= excess <= bound


def test_the_table_names_the_regional_formula(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--regions", "2", "--nodes", "1", "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    assert "per region" in out.splitlines()[0]
    assert "(R*N-1)(C + r*d) + (R-1)*r*D" in out
