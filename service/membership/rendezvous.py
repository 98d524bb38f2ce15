"""Owners of a partition: the top R live members by rendezvous (highest random weight) hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(member: str, partition: int) -> int:
    """The member's weight for the partition: a stable 64-bit hash, equal on every node."""
    digest = hashlib.blake2b(f"{member}\x1f{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owners(partition: int, members: Iterable[str], replicas: int) -> list[str]:
    """The `replicas` members of highest weight for `partition`, highest first.

    A pure function of its arguments: every node that sees the same members computes the
    same owners, and a member joining or leaving moves only the partitions it wins or held.
    """
    ranked = sorted(members, key=lambda m: (weight(m, partition), m), reverse=True)
    return ranked[:replicas]


def assignment(partitions: int, members: Iterable[str], replicas: int) -> dict[int, list[str]]:
    """The owners of every partition."""
    held = sorted(set(members))
    return {p: owners(p, held, replicas) for p in range(partitions)}
