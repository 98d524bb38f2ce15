"""nginx's consistent-hash ring: points as ngx_http_upstream_hash_module makes them, lookup,
the order of retries, and the owners of partitions placed on it (--placement ring)."""

from __future__ import annotations

import bisect
import zlib
from collections import Counter

import pytest

from service.membership.ketama import POINTS_PER_WEIGHT, Ring, ring_owners


def test_points_chain_crc32_of_host_nul_port_and_the_previous_point() -> None:
    ring = Ring(["10.0.0.1:8000"])
    base = b"10.0.0.1\x008000"
    first = zlib.crc32(base + (0).to_bytes(4, "little"))
    second = zlib.crc32(base + first.to_bytes(4, "little"))
    assert first in ring.hashes
    assert second in ring.hashes
    assert len(ring.hashes) == POINTS_PER_WEIGHT
    assert len(Ring(["a:1"], weight=2).hashes) == 2 * POINTS_PER_WEIGHT


def test_a_key_goes_to_the_first_point_at_or_after_its_crc32_wrapping() -> None:
    ring = Ring(["a:80", "b:80", "c:80"])
    for key in ("alice", "bob", "x" * 40, ""):
        h = zlib.crc32(key.encode())
        after = [i for i, p in enumerate(ring.hashes) if p >= h]
        expected = ring.servers[after[0]] if after else ring.servers[0]
        assert ring.pick(key) == expected


def test_keys_spread_over_servers_and_stay_put_when_another_leaves() -> None:
    servers = [f"node-{i}:8000" for i in range(5)]
    ring = Ring(servers)
    keys = [f"user-{i}" for i in range(5000)]
    picks = {k: ring.pick(k) for k in keys}
    counts = Counter(picks.values())
    assert set(counts) == set(servers)
    assert max(counts.values()) < 2 * min(counts.values())
    smaller = Ring(servers[:-1])
    moved = [k for k in keys if picks[k] != servers[-1] and smaller.pick(k) != picks[k]]
    assert moved == []


def test_an_empty_ring_picks_nothing() -> None:
    with pytest.raises(ValueError, match="no servers"):
        Ring([]).pick("alice")


def test_walk_meets_distinct_servers_clockwise_from_the_key() -> None:
    ring = Ring(["a:80", "b:80", "c:80"])
    for key in ("alice", "7", ""):
        start = bisect.bisect_left(ring.hashes, zlib.crc32(key.encode()))
        order = [ring.servers[(start + i) % len(ring.hashes)] for i in range(len(ring.hashes))]
        distinct = list(dict.fromkeys(order))
        assert ring.walk(key, 1) == [ring.pick(key)] == distinct[:1]
        assert ring.walk(key, 2) == distinct[:2]
        assert ring.walk(key, 5) == distinct  # no more servers than the ring has
        # Without its first server, the ring's pick is the walk's second.
        assert (
            Ring(s for s in ("a:80", "b:80", "c:80") if s != distinct[0]).pick(key) == distinct[1]
        )


def test_ring_owners_are_the_servers_nginx_picks_and_tries_next() -> None:
    live = {n: f"{n}:8000" for n in ("a", "b", "c", "d")}
    ring = Ring(f"{n}:8000" for n in live)
    got = ring_owners(48, live, 2)
    assert got == [[s.split(":")[0] for s in ring.walk(str(p), 2)] for p in range(48)]
    assert all(held[0] == ring.pick(str(p)).split(":")[0] for p, held in enumerate(got))
    assert {n for held in got for n in held} == set(live)
    # a leaves: nginx passes its points over, to the server it tries next (a's partitions'
    # second owner, which holds their state); partitions a did not own stay where they are.
    without_a = ring_owners(48, {n: m for n, m in live.items() if n != "a"}, 2)
    for p, held in enumerate(got):
        if held[0] == "a":
            assert without_a[p][0] == held[1]
        elif "a" not in held:
            assert without_a[p] == held
    # Two members on one address (a restart under a new id): the first id holds it.
    twice = {**live, "a2": "a:8000"}
    assert ring_owners(48, twice, 2) == got
    assert ring_owners(3, {}, 2) == [[], [], []]
