"""The scale-out benchmark's pure parts: who owns what among the simulated members, the
users each writer admits, the curves (no broker, no node)."""

from __future__ import annotations

import random

import pytest

from service.membership.rendezvous import owners
from service.replication import codec
from stress_test.bench_fleet import NODE_ID, new_table
from stress_test.bench_scaleout import OwnedUsers, PartitionPools, curves, ownership, parse_args


def test_ownership_is_what_the_node_computes_over_the_same_members() -> None:
    ids, owned = ownership(6, 64, 2)
    members = [NODE_ID, *ids]
    assert set(owned) == set(members)
    for p in range(64):
        assert sorted(m for m, ps in owned.items() if p in ps) == sorted(owners(p, members, 2))
    assert sum(len(ps) for ps in owned.values()) == 2 * 64


def test_a_writer_admits_fresh_users_of_its_own_partitions_only() -> None:
    pools = PartitionPools(new_table(), 32)
    mine, theirs = (
        OwnedUsers(pools, [3, 7], random.Random(1)),
        OwnedUsers(pools, [7], random.Random(2)),
    )
    taken = [mine.take() for _ in range(300)] + [theirs.take() for _ in range(100)]
    users = [u for u, _ in taken]
    assert len(set(users)) == len(users)  # each user once, whoever takes it
    assert {p for _, p in taken[:300]} == {3, 7}
    assert {p for _, p in taken[300:]} == {7}
    assert all(codec.partition_for_user(u, 32) == p for u, p in taken)
    with pytest.raises(ValueError, match="owns no partition"):
        OwnedUsers(pools, [], random.Random(0))


def test_curves_compare_each_setting_with_all_and_with_six_writers() -> None:
    def point(replicas: str, writers: int, cores: float) -> dict[str, object]:
        return {"replicas": replicas, "writers": writers, "merge_cores": cores,
                "merge_cores_at_expected_share": cores}  # fmt: skip

    points = [point("all", w, 0.01 * w) for w in (3, 6, 12, 50)]
    points += [point("2", w, c) for w, c in ((3, 0.02), (6, 0.05), (12, 0.055), (50, 0.04))]
    out = curves(points)
    assert out["modes"]["all"]["fit_r2"] == 1.0
    assert out["modes"]["2"]["most_above_6_writers"] == pytest.approx(0.1)
    assert out["modes"]["2"]["never_20pct_above"] is True
    assert out["modes"]["all"]["never_20pct_above"] is False
    assert out["ratio_to_all"]["2"][50] == pytest.approx(0.08)


def test_options() -> None:
    args = parse_args(["--quick"])
    assert args.modes == ["all", "2"]
    assert args.writers == [6, 25]
    with pytest.raises(SystemExit):
        parse_args(["--replicas", "two"])
