"""G-counter and PN-counter: one monotone cell per replica, merged by pointwise max."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from crdt.errors import InvalidParameter


def _check_amount(amount: object) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise InvalidParameter(f"counter amounts are integers >= 0, got {amount!r}")
    return amount


class GCounter:
    """Grow-only counter; replicas ship absolute cell values, so replays are harmless."""

    __slots__ = ("_cells",)

    def __init__(self, cells: Mapping[str, int] | None = None) -> None:
        self._cells: dict[str, int] = {}
        if cells:
            for replica, value in cells.items():
                if _check_amount(value):
                    self._cells[replica] = value

    def increment(self, replica: str, amount: int = 1) -> None:
        """Add `amount` to this replica's own cell."""
        if _check_amount(amount):
            self._cells[replica] = self._cells.get(replica, 0) + amount

    @property
    def value(self) -> int:
        """The counter's value: the sum of all cells."""
        return sum(self._cells.values())

    def cell(self, replica: str) -> int:
        """One replica's cell (0 when absent)."""
        return self._cells.get(replica, 0)

    def cells(self) -> dict[str, int]:
        """A copy of all cells."""
        return dict(self._cells)

    def apply(self, cells: Mapping[str, int]) -> None:
        """Merge absolute cell values in place (pointwise max)."""
        own = self._cells
        for replica, value in cells.items():
            if _check_amount(value) > own.get(replica, 0):
                own[replica] = value

    def merge(self, other: GCounter) -> GCounter:
        """The join of two counters, as a new counter."""
        joined = GCounter(self._cells)
        joined.apply(other._cells)
        return joined

    def delta_since(self, seen: Mapping[str, int]) -> dict[str, int]:
        """Absolute values of the cells that grew since `seen` (one value per dirty cell)."""
        return {r: v for r, v in self._cells.items() if v > seen.get(r, 0)}

    def __iter__(self) -> Iterator[str]:
        return iter(self._cells)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GCounter) and self._cells == other._cells

    def __le__(self, other: GCounter) -> bool:
        """Lattice order: every cell of self is <= the same cell of other."""
        return all(v <= other._cells.get(r, 0) for r, v in self._cells.items())

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"GCounter({self._cells!r})"


class PNCounter:
    """Counter with increments and decrements (refunds): the difference of two G-counters."""

    __slots__ = ("n", "p")

    def __init__(self, p: GCounter | None = None, n: GCounter | None = None) -> None:
        self.p = p if p is not None else GCounter()
        self.n = n if n is not None else GCounter()

    def increment(self, replica: str, amount: int = 1) -> None:
        """Add to this replica's positive cell."""
        self.p.increment(replica, amount)

    def decrement(self, replica: str, amount: int = 1) -> None:
        """Add to this replica's negative cell (a refund)."""
        self.n.increment(replica, amount)

    @property
    def value(self) -> int:
        """Increments minus decrements."""
        return self.p.value - self.n.value

    def merge(self, other: PNCounter) -> PNCounter:
        """The join of two counters, as a new counter."""
        return PNCounter(self.p.merge(other.p), self.n.merge(other.n))

    def apply(self, p: Mapping[str, int], n: Mapping[str, int]) -> None:
        """Merge absolute positive and negative cells in place."""
        self.p.apply(p)
        self.n.apply(n)

    def contributions(self) -> dict[str, int]:
        """Net value per replica."""
        replicas = set(self.p) | set(self.n)
        return {r: self.p.cell(r) - self.n.cell(r) for r in sorted(replicas)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PNCounter) and self.p == other.p and self.n == other.n

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"PNCounter(p={self.p!r}, n={self.n!r})"
