"""`ratelimiter simulate --replicas R`: the bound with N replaced by R, forward fractions."""

from __future__ import annotations

import pytest

from service.cli.simulate import forward_fraction, least_forward_fraction
from service.errors import ConfigError
from service.settings import load_settings


def test_forward_fractions_by_policy() -> None:
    assert forward_fraction(6, 2, "round-robin") == pytest.approx(4 / 6)
    assert forward_fraction(6, 2, "owner-aware") == 0.0
    assert forward_fraction(6, 2, "consistent-hash") == pytest.approx(4 / 6, abs=0.05)
    assert forward_fraction(3, 5, "round-robin") == 0.0  # R >= N: every node owns all


def test_replicas_settings() -> None:
    assert load_settings().replica_count is None
    settings = load_settings(replicas="2", kafka="127.0.0.1:9092", port=8123)
    assert settings.replica_count == 2
    assert settings.advertised_address == "127.0.0.1:8123"
    with pytest.raises(ConfigError, match="replicas"):
        load_settings(replicas="0")
    with pytest.raises(ConfigError, match="member_expiry_s"):
        load_settings(replicas="2", heartbeat_s=2, member_expiry_s=1)


def test_consistent_hash_on_the_user_or_the_partition_forwards_n_minus_r_over_n() -> None:
    # The ring hashes what the balancer is keyed on; the owners are per partition: a user
    # lands on an owner only about R/N of the time either way.
    for lb in ("consistent-hash", "consistent-hash-partition"):
        assert forward_fraction(12, 2, lb, partitions=256) == pytest.approx(10 / 12, abs=0.05)


def test_no_placement_by_partition_agrees_with_a_balancer_keyed_on_the_user() -> None:
    least = least_forward_fraction(6, 2, users=20_000)
    assert least == pytest.approx(4 / 6, abs=0.06)
    assert least <= forward_fraction(6, 2, "consistent-hash", users=20_000)


def test_nginx_hashing_the_partition_onto_the_ring_the_nodes_place_by_forwards_nothing() -> None:
    for nodes in (2, 4, 6, 12, 50):
        assert forward_fraction(nodes, 2, "partition-ring", partitions=1000) == 0.0
    settings = load_settings(replicas="2", placement="ring", kafka="127.0.0.1:9092")
    assert settings.placement == "ring"
    assert load_settings().placement == "rendezvous"
    with pytest.raises(ConfigError, match="placement"):
        load_settings(placement="nearest")
