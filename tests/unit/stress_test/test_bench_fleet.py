"""The fleet benchmark's pure parts: the simulated writers' records (decoded by the node's
codec and merged by a real store), the fit and the half-core fleet size, the options
(no broker, no node)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from crdt.limiter import make_limiter
from service.clock import to_unix_ms
from service.replication import codec
from service.rules.model import DEFAULT_RULE
from stress_test.bench_fleet import (
    DEFAULT_WRITERS,
    FLUSH_S,
    PARTITIONS,
    FreshUsers,
    Record,
    Shape,
    SimWriter,
    extend_table,
    fit_points,
    half_core,
    linear_fit,
    new_table,
    parse_args,
    render_table,
    results_of,
    user_id,
    writer_ids,
)

NOW = 33_000_000.0  # cluster seconds (mid-2026)


def _users() -> FreshUsers:
    table = new_table()
    extend_table(table, 2_000)
    return FreshUsers(table)


def _flushes(
    writer: SimWriter, shape: Shape, users: FreshUsers, count: int
) -> list[tuple[float, list[Record]]]:
    rng = random.Random(7)
    times = [NOW + k * FLUSH_S for k in range(1, count + 1)]
    return [(at, writer.flush(at, shape, users, rng)) for at in times]


def test_partition_table_matches_the_codec() -> None:
    table = new_table()
    extend_table(table, 500)
    assert len(table) == 500
    assert all(table[i] == codec.partition_for_user(user_id(i), PARTITIONS) for i in range(500))
    users = FreshUsers(table[:3])
    taken = [users.take() for _ in range(5)]  # grows past the table
    assert [u for u, _ in taken] == [user_id(i) for i in range(5)]
    assert all(p == codec.partition_for_user(u, PARTITIONS) for u, p in taken)


def test_records_decode_into_deltas_of_their_writer_and_partition() -> None:
    shape = Shape(rate=2000.0, repeat_share=0.3)
    writer = SimWriter("fleet-writer-00/abc123", NOW)
    users = _users()
    since = NOW
    seen_repeat = False
    total = 0
    for flushed_at, records in _flushes(writer, shape, users, 10):
        assert records
        for record in records:
            assert record.key == codec.batch_record_key(writer.replica, record.partition)
            decoded = codec.decode(record.value)
            assert decoded.since_ms == to_unix_ms(since)
            assert decoded.ts_ms == to_unix_ms(flushed_at)
            assert len(decoded.items) == record.deltas
            for rule, delta in decoded.items:
                assert rule == DEFAULT_RULE
                assert delta.replica == writer.replica
                assert codec.partition_for_user(delta.key, PARTITIONS) == record.partition
                (entry,) = delta.entries
                assert entry.n == 0
                assert entry.p >= 1
                seen_repeat |= entry.p > 1
                assert since - 1 <= entry.floor <= flushed_at
                assert entry.epoch == int(entry.floor) or entry.p > 1
            total += record.deltas
        since = flushed_at
    # 2000/s over 10 flushes of 20 ms: 400 admissions, some of them repeats (coalesced).
    assert 300 <= total <= 400
    assert seen_repeat
    assert writer.dropped == 0


def test_records_merge_in_a_real_store_as_the_writers_consumption() -> None:
    shape = Shape(rate=1000.0, repeat_share=0.2)
    writers = [SimWriter(r, NOW) for r in writer_ids(3)]
    users = _users()
    observer = make_limiter("token_bucket", "observer", rate=10, burst=20)
    admitted: dict[str, int] = {}
    now = NOW
    for k in range(1, 6):
        now = NOW + k * FLUSH_S
        for writer in writers:
            for record in writer.flush(now, shape, users, random.Random(k)):
                for _rule, delta in codec.decode(record.value).items:
                    observer.apply(delta, now)
                    admitted[delta.key] = delta.entries[0].p
    assert len(admitted) > 50
    for key, p in admitted.items():
        view = observer.view(key, now)
        assert view.consumed == p
        assert 20 - p - 1e-6 <= view.tokens <= 20  # the writer's admissions, refilling


def test_a_late_flush_covers_at_most_the_gap_and_counts_the_rest_dropped() -> None:
    shape = Shape(rate=1000.0, repeat_share=0.0, max_gap_s=0.1)
    writer = SimWriter("w/1", NOW)
    records = writer.flush(NOW + 1.0, shape, _users(), random.Random(1))
    assert sum(r.deltas for r in records) == 100
    assert writer.dropped == pytest.approx(900)
    assert {len(codec.decode(r.value).items) for r in records} <= set(range(1, 501))


def test_fresh_users_are_never_repeated_across_writers() -> None:
    shape = Shape(rate=2000.0, repeat_share=0.0)
    users = _users()
    keys: list[str] = []
    for writer in (SimWriter(r, NOW) for r in writer_ids(2)):
        for record in writer.flush(NOW + 0.1, shape, users, random.Random(1)):
            keys += [d.key for _, d in codec.decode(record.value).items]
    assert len(keys) == len(set(keys)) == 400


def test_linear_fit_recovers_a_line_and_needs_two_distinct_points() -> None:
    xs = [6_000.0, 12_000.0, 24_000.0, 50_000.0]
    fit = linear_fit(xs, [0.02 + 5e-6 * x for x in xs])
    assert fit is not None
    assert fit.a == pytest.approx(0.02)
    assert fit.b == pytest.approx(5e-6)
    assert fit.r2 == pytest.approx(1.0)
    assert linear_fit([1.0], [2.0]) is None
    assert linear_fit([3.0, 3.0], [1.0, 2.0]) is None


def test_half_core_extrapolates_beyond_the_measured_fleet_and_says_so() -> None:
    fit = linear_fit([6_000.0, 12_000.0], [0.05, 0.08])  # 5 us per delta, 0.02 idle
    half = half_core(fit, 2000.0, [3, 6])
    assert half["deltas_per_s"] == 96_000
    assert half["writers"] == 48.0
    assert half["extrapolated"] is True
    assert "beyond" in half["note"]
    inside = half_core(fit, 2000.0, [3, 50])
    assert inside["extrapolated"] is False
    flat = half_core(linear_fit([1.0, 2.0], [0.1, 0.1]), 2000.0, [3, 6])
    assert flat["writers"] is None
    busy = half_core(linear_fit([1.0, 2.0], [0.6, 0.7]), 2000.0, [3, 6])
    assert busy["writers"] == 0.0
    assert half_core(None, 2000.0, [3])["writers"] is None


def _point(writers: int, merged: float, cores: float, kept_up: bool = True) -> dict[str, Any]:
    return {
        "writers": writers,
        "target_deltas_per_s": writers * 2000,
        "offered_deltas_per_s": writers * 2000,
        "merged_deltas_per_s": merged,
        "records_per_s": writers * 600,
        "node_cores": cores,
        "node_cpu_us_per_delta": cores / merged * 1e6,
        "kept_up": kept_up,
        "sync_lag_p50_ms_bound": 30.0,
        "sync_lag_p99_ms_bound": 75.0,
    }


def test_the_fit_skips_points_where_the_node_fell_behind() -> None:
    points = [
        _point(3, 6_000, 0.05),
        _point(6, 12_000, 0.08),
        _point(12, 24_000, 0.14),
        _point(50, 60_000, 1.0, kept_up=False),  # saturated: not on the line
    ]
    fit, used = fit_points(points)
    assert fit is not None
    assert fit.points == 3
    assert fit.b == pytest.approx(5e-6)
    assert "3,6,12" in used
    fit_all, used_all = fit_points([points[0], points[3]])
    assert fit_all is not None
    assert fit_all.points == 2
    assert "fewer than 2" in used_all


def test_report_renders_points_fit_and_half_core() -> None:
    results = results_of([_point(3, 6_000, 0.05), _point(6, 12_000, 0.08)], 2000.0)
    assert results["half_core"]["writers"] == 48.0
    report = {
        "command": "python -m stress_test.bench_fleet --quick",
        "date": "2026-01-01T00:00:00+00:00",
        "git": {"commit": "abc1234", "dirty": False},
        "elapsed_s": 30.0,
        "machine": {"nproc": 2},
        "results": results,
        "skipped": {"writers_12": "node failed"},
    }
    text = render_table(report)
    assert "half a core at 48.0 writers" in text
    assert "extrapolated" in text
    assert "skipped writers_12" in text


def test_options_defaults_quick_and_errors() -> None:
    args = parse_args([])
    assert args.writers == list(DEFAULT_WRITERS)
    assert (args.secs, args.warmup, args.deltas_per_writer_s) == (15.0, 5.0, 2000.0)
    quick = parse_args(["--quick", "--json"])
    assert (quick.writers, quick.secs, quick.warmup, quick.json) == ([3, 6], 4.0, 2.0, True)
    given = parse_args(
        ["--writers", "12, 3,3", "--deltas-per-writer-s", "500", "--secs", "7", "--kafka", "h:1"]
    )
    assert (given.writers, given.deltas_per_writer_s, given.secs) == ([3, 12], 500.0, 7.0)
    assert given.kafka == "h:1"
    for bad in (["--writers", "0,3"], ["--writers", "a"], ["--secs", "0.5"],
                ["--deltas-per-writer-s", "0"], ["--repeat-share", "1"]):  # fmt: skip
        with pytest.raises(SystemExit):
            parse_args(bad)
