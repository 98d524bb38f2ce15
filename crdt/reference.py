"""A classic single-node token bucket: the yardstick the CRDT is measured against."""

from __future__ import annotations

from crdt.policy import EPS_TIME, BucketPolicy


class ReferenceBucket:
    """tokens = min(C, tokens + r * elapsed); admit when tokens >= cost."""

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, policy: BucketPolicy, now: float) -> None:
        self.capacity = float(policy.capacity)
        self.rate = policy.rate
        self.tokens = self.capacity
        self.last = now

    def acquire(self, cost: int, now: float) -> bool:
        """Admit and take `cost` tokens if the bucket holds them."""
        if now > self.last:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens + EPS_TIME * self.rate >= cost:
            self.tokens -= cost
            return True
        return False


def max_interval_excess(admissions: list[tuple[float, int]], rate: float) -> float:
    """max over intervals (s, t] of A(s, t] - rate * (t - s), for time-sorted admissions.

    A token bucket of capacity C guarantees this is at most C.
    """
    best = float("-inf")
    best_start = float("-inf")  # max over j <= k of rate * t_j - P_{j-1}
    prefix = 0
    for t, cost in admissions:
        best_start = max(best_start, rate * t - prefix)
        prefix += cost
        best = max(best, prefix - rate * t + best_start)
    return best if admissions else 0.0
