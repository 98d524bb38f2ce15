"""The owner-aware balancer benchmark's pure parts: the owners it expects, its options and
its report (no broker, no node, no nginx)."""

from __future__ import annotations

import pytest

from service.membership.ketama import Ring
from stress_test.bench_owner_lb import PARTITIONS, held, parse_args, render_table


def test_ring_owners_start_at_nginx_pick_and_rendezvous_owners_often_do_not() -> None:
    servers = {f"n{i}": f"127.0.0.1:{9100 + i}" for i in range(4)}
    ring = Ring(servers.values())
    node_at = {a: n for n, a in servers.items()}
    picked = [node_at[ring.pick(str(p))] for p in range(PARTITIONS)]
    by_ring, by_rendezvous = held("ring", servers), held("rendezvous", servers)
    assert [o[0] for o in by_ring] == picked
    missed = sum(picked[p] not in by_rendezvous[p] for p in range(PARTITIONS))
    assert 0.2 * PARTITIONS < missed < 0.8 * PARTITIONS  # about (N - R) / N of them


def test_options_and_report() -> None:
    assert parse_args([]).nodes == 4
    with pytest.raises(SystemExit):
        parse_args(["--nodes", "2"])
    report = {
        "command": "python -m stress_test.bench_owner_lb",
        "date": "2026-11-30T07:00:00+00:00",
        "git": {"commit": "abc", "dirty": False},
        "machine": {"nproc": 2},
        "elapsed_s": 1.0,
        "nodes": 4,
        "users": 100,
        "skipped": "",
    }
    placement = {
        "share": 0.5, "predicted_share": 0.5, "p50_ms": 1.0, "p99_ms": 2.0, "not_200": 0,
    }  # fmt: skip
    text = render_table(
        {
            **report,
            "results": {
                "rendezvous": placement,
                "ring": {**placement, "share": 0.0, "predicted_share": 0.0},
                "n_minus_r_over_n": 0.5,
                "share_ratio": 0.0,
                "p50_ratio": 1.0,
                "met": True,
            },
        }
    )
    assert "rendezvous     50.00%" in text
    assert "target < 5% forwarded: met" in text
    assert "skipped: no nginx" in render_table({**report, "results": {}, "skipped": "no nginx"})
