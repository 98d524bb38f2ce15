"""The over-admission bound of one key, for one region or several (DESIGN.md section 3).

Every writer decides from its own view: all of its own admissions, and its peers'
admissions once they have been merged. A peer in the writer's region is merged within
the local sync delay `d` (flush + delivery); a peer in another region within `d + D`,
where `D` is what the mirror between the regions adds. With C the capacity and r the
rate, for every interval (s, t]:

    A(s,t] <= C + r(t-s) + (R*N - 1)(C + r*d) + (R - 1) * r * D

with R regions of N writers each. R = 1 is the single-region bound; D = 0 is one region
of R*N writers. `interval_excess_bound` is the part beyond r(t-s); an adversarial load
(crdt.simulator's `adversarial` traffic) reaches it with one region, one node per region
or D = 0, and comes within R*r*min(d, D) of it otherwise. The README's "Regions: the
bound" section derives it.
"""

from __future__ import annotations

from collections.abc import Sequence

from crdt.errors import InvalidParameter


def _check(nodes: int, regions: int, delay: float, region_delay: float) -> None:
    if nodes < 1 or regions < 1:
        raise InvalidParameter(f"nodes and regions must be >= 1, got {nodes}, {regions}")
    if not delay >= 0 or not region_delay >= 0:
        raise InvalidParameter(f"delays must be >= 0, got {delay!r}, {region_delay!r}")


def interval_excess_bound(
    capacity: float,
    rate: float,
    nodes: int,
    delay: float,
    regions: int = 1,
    region_delay: float = 0.0,
) -> float:
    """The most A(s,t] - r(t-s) can reach for one key, over every interval (s, t].

    C + (R*N - 1)(C + r*d) + (R - 1) r D: each other writer adds at most one bucket and
    what it admits while unseen locally (d), and each other region as a whole admits at
    most r*D more while it is unseen across the mirror (its own writers see each other
    after d, so together they keep to about one bucket during D).
    """
    _check(nodes, regions, delay, region_delay)
    return regions_excess_bound(capacity, rate, [nodes] * regions, delay, region_delay)


def regions_excess_bound(
    capacity: float, rate: float, sizes: Sequence[int], delay: float, region_delay: float
) -> float:
    """interval_excess_bound for regions of unequal sizes: C + (W-1)(C + r d) + (R-1) r D
    with W the writers of every region and R = len(sizes) (the derivation is the same)."""
    if not sizes or min(sizes) < 1:
        raise InvalidParameter(f"every region needs a node, got sizes {list(sizes)}")
    _check(1, 1, delay, region_delay)
    writers, regions = sum(sizes), len(sizes)
    return (
        capacity + (writers - 1) * (capacity + rate * delay) + (regions - 1) * rate * region_delay
    )


def admission_bound(
    capacity: float,
    rate: float,
    seconds: float,
    nodes: int,
    delay: float,
    regions: int = 1,
    region_delay: float = 0.0,
) -> float:
    """The most one key can be admitted over `seconds`: r * seconds + the interval excess."""
    return rate * seconds + interval_excess_bound(
        capacity, rate, nodes, delay, regions, region_delay
    )
