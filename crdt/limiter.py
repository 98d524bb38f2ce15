"""The Limiter port every algorithm implements, and a factory choosing one by name."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, Protocol

from crdt.delta import Delta
from crdt.errors import InvalidParameter
from crdt.periods import PERIOD_SECONDS, CalendarPeriods
from crdt.policy import BucketPolicy, SyncTiming, WindowPolicy
from crdt.store import BucketStore, KeyBudget, KeyView, StoreStats
from crdt.windows import WindowStore

Algorithm = Literal["token_bucket", "sliding_window", "fixed_window"]
ALGORITHMS: tuple[Algorithm, ...] = ("token_bucket", "sliding_window", "fixed_window")
# Calendar quotas (a limit per UTC minute, hour, day, week or month) are rule algorithms
# but not a node's default: they need a period besides the limit.
RuleAlgorithm = Literal[Algorithm, "calendar"]
RULE_ALGORITHMS: tuple[RuleAlgorithm, ...] = (*ALGORITHMS, "calendar")


class Limiter(Protocol):
    """A replicated limit for many keys, owned by one replica."""

    replica: str
    stats: StoreStats
    bootstrapping: bool
    deleted: list[str] | None  # keys deleted as idle, when asked for (a list)

    def acquire(self, key: str, cost: int, now: float) -> float:
        """Remaining allowance if admitted (>= 0), else minus the shortfall (< 0)."""
        ...

    def refund(self, key: str, cost: int, now: float) -> int:
        """Give back at most `cost` this replica admitted lately; returns what was."""
        ...

    def flush(self, now: float, *, deltas: bool = True, limit: int | None = None) -> list[Delta]:
        """Deltas for keys changed since the last flush (for at most `limit` of them:
        the rest stay marked); with `deltas=False` only the marks are cleared (a replica
        with no peers: nothing to ship)."""
        ...

    def dirty_count(self) -> int:
        """Keys waiting to be flushed."""
        ...

    def delta_for(self, key: str, since_epoch: int) -> Delta | None:
        """This replica's state of one key, for snapshots and republishing."""
        ...

    @property
    def current_epoch(self) -> int:
        """The epoch of the latest time seen."""
        ...

    def apply(self, delta: Delta, now: float) -> None:
        """Merge a peer's delta."""
        ...

    def view(self, key: str, now: float) -> KeyView:
        """Merged state of a key."""
        ...

    def sweep(self, now: float, budget: int = 10_000) -> int:
        """Seal and delete what can no longer change a decision."""
        ...

    def finish_bootstrap(self, now: float) -> None:
        """Leave bootstrap mode."""
        ...

    def export_keys(self, keys: Iterable[str] | None = None) -> list[tuple[Any, ...]]:
        """Every key's state (or that of those of `keys` still held) as marshal-able rows."""
        ...

    def import_keys(self, rows: list[tuple[Any, ...]], writer: str) -> int:
        """Load rows exported by an earlier replica `writer`; returns keys loaded."""
        ...

    def keys(self) -> list[str]:
        """Tracked keys."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    def idle(self, key: str, now: float) -> bool:
        """True when forgetting `key` now changes no decision (a key not held is idle):
        the sweep may delete it, and a snapshot of it is not needed."""
        ...

    def settled(self, key: str, before: float, now: float) -> bool:
        """True when records of `key` written before `before` can be forgotten."""
        ...


def timing(limiter: Limiter, key: str, result: float, cost: int, now: float) -> tuple[float, float]:
    """(retry_after, reset_after) in seconds for a decision `result` of `acquire`.

    retry_after is 0 when admitted and inf when the cost can never fit; reset_after is
    the time until the key's full allowance is back.
    """
    if isinstance(limiter, BucketStore):
        interval = limiter.policy.interval
        capacity = limiter.policy.capacity
        if result >= 0:
            return 0.0, max(capacity - result, 0.0) * interval
        tokens = result + cost
        retry = math.inf if cost > capacity else -result * interval
        return retry, max(capacity - tokens, 0.0) * interval
    assert isinstance(limiter, WindowStore)
    window = limiter.policy.window
    limit = limiter.policy.limit
    periods = limiter.periods
    reset = periods.end(periods.index(now)) - now
    if result >= 0:
        return 0.0, reset
    if cost > limit:
        return math.inf, reset
    if not limiter.sliding:
        return reset, reset
    return _sliding_retry(limiter, key, cost, now), reset + window


def _sliding_retry(store: WindowStore, key: str, cost: int, now: float) -> float:
    # Step forward until the weighted count leaves room; a closed form exists but the
    # step keeps it obviously right and it only runs on denials.
    window = store.policy.window
    step = window / 64
    t = now
    for _ in range(64 * 3):
        t += step
        if store.view(key, t).tokens >= cost:
            return t - now
    return 2 * window


def make_limiter(
    algorithm: str,
    replica: str,
    *,
    rate: float,
    burst: int,
    window: float = 1.0,
    timing_: SyncTiming | None = None,
    max_keys: int = 1_000_000,
    budget: KeyBudget | None = None,
    period: str | None = None,
    origin: float | None = None,
) -> Limiter:
    """A limiter by algorithm name: a bucket of `burst` refilled at `rate`/s, a window of
    `window` seconds admitting `burst` cost, or (`calendar`) `burst` cost per UTC calendar
    `period` on a clock counting seconds from the Unix time `origin`."""
    if algorithm == "token_bucket":
        return BucketStore(BucketPolicy(rate, burst), replica, timing_, max_keys, budget)
    if algorithm in ("sliding_window", "fixed_window"):
        return WindowStore(
            WindowPolicy(burst, window),
            replica,
            sliding=algorithm == "sliding_window",
            max_keys=max_keys,
            budget=budget,
        )
    if algorithm == "calendar":
        if period is None or origin is None:
            raise InvalidParameter("a calendar limiter needs a period and the clock's origin")
        periods = CalendarPeriods(period, origin)
        return WindowStore(
            WindowPolicy(burst, PERIOD_SECONDS[period]),
            replica,
            sliding=False,
            max_keys=max_keys,
            budget=budget,
            periods=periods,
        )
    raise InvalidParameter(f"unknown algorithm {algorithm!r}; choose one of {RULE_ALGORITHMS}")
