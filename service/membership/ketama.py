"""nginx's consistent hash (`hash KEY consistent`, ngx_http_upstream_hash_module): where a
load balancer configured so sends a key, and where it tries next when that server fails
(the owners of a partition under `--placement ring`)."""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable, Mapping, Sequence

POINTS_PER_WEIGHT = 160


class Ring:
    """The ring nginx builds over its `server` lines (ketama, compatible with
    Cache::Memcached::Fast): per server, 160 points per weight, point j the crc32 of
    `host \\0 port` followed by point j-1 as 4 little-endian bytes (0 for the first)."""

    def __init__(self, servers: Iterable[str], weight: int = 1) -> None:
        points: dict[int, str] = {}
        for server in servers:
            base = zlib.crc32(_host_nul_port(server))
            prev = 0
            for _ in range(POINTS_PER_WEIGHT * weight):
                point = zlib.crc32(prev.to_bytes(4, "little"), base)
                points.setdefault(point, server)  # nginx keeps one point per hash value
                prev = point
        self.hashes: Sequence[int] = sorted(points)
        self.servers: Sequence[str] = [points[h] for h in self.hashes]
        self.size = len(set(self.servers))

    def pick(self, key: str) -> str:
        """The server for `key`: the first point at or after crc32(key), wrapping."""
        if not self.hashes:
            raise ValueError("a ring of no servers")
        return self.walk(key, 1)[0]

    def walk(self, key: str, count: int) -> list[str]:
        """The first `count` distinct servers met clockwise from `key`'s point: the order
        in which nginx tries them (a failed or tried server's points are passed over)."""
        count = min(count, self.size)
        start = bisect.bisect_left(self.hashes, zlib.crc32(key.encode()))
        met: list[str] = []
        i = start
        while len(met) < count:
            server = self.servers[i % len(self.hashes)]
            if server not in met:
                met.append(server)
            i += 1
        return met


def ring_owners(partitions: int, addresses: Mapping[str, str], replicas: int) -> list[list[str]]:
    """The owners of every partition (`--placement ring`), given each member's address: as
    nginx with `hash $rl_partition consistent` over one `server ADDRESS;` line per member
    sends and retries requests (deploy/partition.js sets $rl_partition to the user's
    partition number), partition p's owners are the first `replicas` distinct members met
    clockwise on nginx's ring from the point of the string `p`. A member's points depend
    on its address alone, so the ring over the live members is nginx's ring with the
    failed servers' points passed over, as nginx passes them."""
    by_address: dict[str, str] = {}
    for node in sorted(addresses):  # two members on one address: the first id holds it
        by_address.setdefault(addresses[node], node)
    if not by_address:
        return [[] for _ in range(partitions)]
    ring = Ring(by_address)
    return [[by_address[a] for a in ring.walk(str(p), replicas)] for p in range(partitions)]


def _host_nul_port(server: str) -> bytes:
    """`host:port` as nginx splits it (a port is the digits after the last colon)."""
    host, sep, port = server.rpartition(":")
    if not sep or not (port.isdigit() or port == ""):
        host, port = server, ""
    return host.encode() + b"\0" + port.encode()
