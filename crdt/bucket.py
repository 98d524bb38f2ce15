"""The per-key consumption CRDT of a token bucket: epoch floors plus per-replica cells.

Lattice: for every epoch e, a floor F_e (max-register) and one cell per replica of the
cost it admitted (P, G-counter) and refunded (N). With interval T = 1/rate, the bucket's
theoretical arrival time is the max-plus fold over epochs in order:

    floor'(first) = F_first;  floor'(next) = max(F_next, floor'(prev) + T * U_prev)
    TAT = floor'(last) + T * U_last          (U = P - N summed over replicas)

tokens(now) = C - max(0, TAT - now) / T. A local admission at `now` with TAT < now is a
refill to full and raises F of the newest epoch to now - T * U. Merging is pointwise max,
so it is commutative, associative and idempotent; the state stores the cascaded floors
(floor'), which merge by max as well. Epochs older than the seal point are dropped once
their effect lives in the next epoch's cascaded floor.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NoReturn

NEG_INF = float("-inf")


class _Empty(Mapping[str, Any]):
    """The one read-only empty mapping (copies are itself): it has no item to set."""

    __slots__ = ()

    def __getitem__(self, key: str) -> NoReturn:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __copy__(self) -> _Empty:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Empty:
        return self

    def __reduce__(self) -> str:
        return "EMPTY"


EMPTY = _Empty()
# Shared, read-only empties: most keys with an Extra (a peer's cells) never hold an older
# epoch, a sealed total or a late mark, and three empty containers per key were 230 bytes
# and three more objects for the cyclic GC to scan. Writers take their own first
# (`Extra.older_()` and the like); a write that does not fails on these, and mypy (they
# are typed Sequence and Mapping) flags it first.
_NO_EPOCHS: tuple[Epoch, ...] = ()


class Epoch:
    """An open epoch older than the newest one."""

    __slots__ = ("cells", "e", "floor", "refunds", "used")

    def __init__(
        self,
        e: int,
        floor: float,
        cells: dict[str, int],
        refunds: dict[str, int] | None,
        used: int,
    ) -> None:
        self.e = e
        self.floor = floor
        self.cells = cells
        self.refunds = refunds
        self.used = used


class Extra:
    """The rarely needed part of a key: remote cells, refunds, older epochs, folded totals."""

    __slots__ = ("base", "late", "older", "own_n", "remote", "remote_n", "sealed")

    def __init__(self) -> None:
        self.remote: dict[str, int] | None = None
        self.own_n = 0
        self.remote_n: dict[str, int] | None = None
        self.older: Sequence[Epoch] = _NO_EPOCHS  # written through older_()
        self.sealed: Mapping[str, int] = EMPTY  # written through sealed_()
        # Cascaded TAT at the end of the folded history: where an epoch that is still
        # open but was not held yet (its first cells arrive after an earlier epoch was
        # sealed) starts its fold. Without it, a peer's concurrent consumption in that
        # epoch would not stack on ours.
        self.base = NEG_INF
        # replica -> (epoch, net cell) of its newest cell already folded away: makes
        # entries arriving after their epoch was sealed idempotent (absolute values).
        self.late: Mapping[str, tuple[int, int]] = EMPTY  # written through late_()

    def older_(self) -> list[Epoch]:
        """The older epochs, to change."""
        older = self.older
        if type(older) is not list:
            older = self.older = list(older)
        return older

    def sealed_(self) -> dict[str, int]:
        """The sealed totals, to change."""
        sealed = self.sealed
        if type(sealed) is not dict:
            sealed = self.sealed = dict(sealed)
        return sealed

    def late_(self) -> dict[str, tuple[int, int]]:
        """The late marks, to change."""
        late = self.late
        if type(late) is not dict:
            late = self.late = dict(late)
        return late

    def fold(self, e: int, cells: dict[str, int], refunds: dict[str, int] | None) -> None:
        """Remember a sealed epoch's cells in the totals and the late marks."""
        fold_totals(self.sealed_(), cells, refunds)
        late = self.late_()
        for r in cells.keys() | (refunds.keys() if refunds else set()):
            mark = late.get(r)
            if mark is None or mark[0] < e:
                net = cells.get(r, 0) - (refunds.get(r, 0) if refunds else 0)
                late[r] = (e, net)


class KeyState:
    """One key: the newest epoch inline (the hot path), everything else in `x`.

    The newest epoch's cell of one peer lives inline too (`peer`, `peer_p`): the common
    synced key holds one other writer's cell and nothing else, and an `Extra` with a dict
    for it was about 270 bytes and two more objects for the cyclic GC to scan. Further
    peers' cells go to `x.remote`, which holds some only while `peer` is set.
    """

    __slots__ = ("e", "floor", "own", "peer", "peer_p", "used", "x")

    def __init__(self, e: int) -> None:
        self.e = e
        self.floor = NEG_INF
        self.used = 0
        self.own = 0
        self.peer: str | None = None
        self.peer_p = 0
        self.x: Extra | None = None

    def tat(self, interval: float) -> float:
        """Theoretical arrival time: the bucket is full at and after it."""
        return self.floor + self.used * interval

    def extra(self) -> Extra:
        """The extra part, created on first need."""
        x = self.x
        if x is None:
            x = self.x = Extra()
        return x

    def remote_cells(self) -> dict[str, int]:
        """Peers' positive cells of the newest epoch (a new dict)."""
        cells = {self.peer: self.peer_p} if self.peer is not None else {}
        x = self.x
        if x is not None and x.remote:
            cells.update(x.remote)
        return cells

    def put_remote(self, replica: str, p: int) -> None:
        """Set a peer's positive cell of the newest epoch (used is the caller's)."""
        if self.peer is None or self.peer == replica:
            self.peer, self.peer_p = replica, p
            return
        x = self.extra()
        if x.remote is None:
            x.remote = {}
        x.remote[replica] = p

    def newest_cells(self, me: str) -> tuple[dict[str, int], dict[str, int]]:
        """Positive and negative cells of the newest epoch, own cell included."""
        cells = self.remote_cells()
        if self.own:
            cells[me] = self.own
        refunds: dict[str, int] = {}
        x = self.x
        if x is not None:
            if x.own_n:
                refunds[me] = x.own_n
            if x.remote_n:
                refunds.update(x.remote_n)
        return cells, refunds

    def roll(self, e_new: int, interval: float, seal: int, me: str) -> None:
        """Open epoch `e_new` (> self.e); the previous newest becomes older or is folded."""
        carried = self.floor + self.used * interval
        cells, refunds = self.newest_cells(me)
        x = self.x
        if cells or refunds:
            if self.e > seal:
                x = self.extra()
                x.older_().append(Epoch(self.e, self.floor, cells, refunds or None, self.used))
            else:
                x = self.extra()
                # Older epochs are sealed too (they precede this one): fold them first,
                # or a later merge into one of them would cascade past this epoch's
                # consumption, which then lives only in the totals.
                self.seal(seal, interval)
                x.fold(self.e, cells, refunds)
                x.base = max(x.base, carried)
        elif x is not None and not x.older:
            # An empty newest epoch only carried the history forward: keep its carry.
            x.base = max(x.base, carried)
        if x is not None:
            x.remote = None
            x.own_n = 0
            x.remote_n = None
        self.peer = None
        self.peer_p = 0
        self.e = e_new
        self.floor = carried
        self.used = 0
        self.own = 0

    def merge(
        self,
        replica: str,
        epoch: int,
        floor: float,
        p: int,
        n: int,
        *,
        interval: float,
        seal: int,
        me: str,
    ) -> int:
        """Merge one remote entry; returns the late cost applied as debt (0 if on time)."""
        if epoch == self.e:
            self._merge_newest(replica, floor, p, n)
            return 0
        if epoch > self.e:
            self.roll(epoch, interval, seal, me)
            self._merge_newest(replica, floor, p, n)
            return 0
        x = self.extra()
        older = x.older
        index = bisect_left([o.e for o in older], epoch)
        if index < len(older) and older[index].e == epoch:
            target = older[index]
        elif epoch > seal:
            before = older[index - 1] if index else None
            start = before.floor + before.used * interval if before is not None else x.base
            target = Epoch(epoch, start, {}, None, 0)
            x.older_().insert(index, target)
        else:
            return self._merge_late(replica, epoch, floor, p - n, interval)
        changed = False
        if floor > target.floor:
            target.floor = floor
            changed = True
        if p > target.cells.get(replica, 0):
            target.used += p - target.cells.get(replica, 0)
            target.cells[replica] = p
            changed = True
        if n:
            refunds = target.refunds if target.refunds is not None else {}
            if n > refunds.get(replica, 0):
                target.used -= n - refunds.get(replica, 0)
                refunds[replica] = n
                target.refunds = refunds
                changed = True
        if changed:
            self.cascade(index, interval)
        return 0

    def _merge_newest(self, replica: str, floor: float, p: int, n: int) -> None:
        if floor > self.floor:
            self.floor = floor
        if p > 0:
            peer = self.peer
            if peer == replica:
                old = self.peer_p
                if p > old:
                    self.peer_p = p
                    self.used += p - old
            elif peer is None:  # x.remote is empty while no peer is inline
                self.peer, self.peer_p = replica, p
                self.used += p
            else:
                x = self.extra()
                if x.remote is None:
                    x.remote = {}
                self.used += raise_cell(x.remote, replica, p)
        if n:
            x = self.extra()
            if x.remote_n is None:
                x.remote_n = {}
            self.used -= raise_cell(x.remote_n, replica, n)

    def _merge_late(self, replica: str, epoch: int, floor: float, net: int, interval: float) -> int:
        # The epoch was sealed before this entry arrived (a delivery delay beyond
        # `seal_after`: a broker outage or a partition). Its effect can no longer be
        # placed exactly, so the new part of the cell is applied as debt to every open
        # epoch: consumption is never under-counted (the bound holds), at the price of
        # counting it as if it happened after the sealed history.
        x = self.extra()
        mark = x.late.get(replica)
        if mark is not None and mark[0] > epoch:
            return 0  # older than a cell of this writer already folded: seen before
        new = net - mark[1] if mark is not None and mark[0] == epoch else net
        if mark is None or mark[0] < epoch or net > mark[1]:
            x.late_()[replica] = (epoch, net)
        if new <= 0:
            return 0
        debt = new * interval
        x.base += debt
        for o in x.older:
            o.floor += debt
        self.floor = max(self.floor, floor) + debt
        sealed = x.sealed_()
        sealed[replica] = sealed.get(replica, 0) + new
        return new

    def cascade(self, index: int, interval: float) -> None:
        """Propagate older[index]'s effect forward to later epochs' cascaded floors."""
        x = self.x
        assert x is not None
        older = x.older
        prev = older[index]
        for nxt in older[index + 1 :]:
            carried = prev.floor + prev.used * interval
            if carried > nxt.floor:
                nxt.floor = carried
            prev = nxt
        carried = prev.floor + prev.used * interval
        if carried > self.floor:
            self.floor = carried

    def seal(self, seal: int, interval: float) -> int:
        """Drop older epochs at or before the seal point; returns how many were dropped."""
        x = self.x
        if x is None or not x.older or x.older[0].e > seal:
            return 0
        older = x.older_()
        count = 0
        while count < len(older) and older[count].e <= seal:
            o = older[count]
            x.fold(o.e, o.cells, o.refunds)
            count += 1
        last = older[count - 1]
        x.base = max(x.base, last.floor + last.used * interval)
        if count == len(older):
            x.older = _NO_EPOCHS  # the usual case: give the empty list back
        else:
            del older[:count]
        return count

    def open_epochs(self) -> int:
        """Number of epochs held (newest included)."""
        return 1 + (len(self.x.older) if self.x is not None else 0)

    def contributions(self, me: str) -> dict[str, int]:
        """Net cost admitted per replica since this key was tracked."""
        totals: dict[str, int] = {}
        x = self.x
        if x is not None:
            totals.update(x.sealed)
            for o in x.older:
                fold_totals(totals, o.cells, o.refunds)
        cells, refunds = self.newest_cells(me)
        fold_totals(totals, cells, refunds)
        return {r: v for r, v in sorted(totals.items()) if v}

    def own_entries(self, me: str, since_epoch: int) -> list[tuple[int, float, int, int]]:
        """(epoch, floor, own P, own N) for epochs >= since_epoch that hold own cells."""
        out: list[tuple[int, float, int, int]] = []
        x = self.x
        if x is not None:
            for o in x.older:
                if o.e >= since_epoch:
                    p = o.cells.get(me, 0)
                    n = o.refunds.get(me, 0) if o.refunds else 0
                    if p or n:
                        out.append((o.e, o.floor, p, n))
        own_n = x.own_n if x is not None else 0
        if self.own or own_n:
            out.append((self.e, self.floor, self.own, own_n))
        return out


def raise_cell(cells: dict[str, int], replica: str, value: int) -> int:
    """Max-merge `value` into a replica's cell; returns how much the cell grew."""
    old = cells.get(replica, 0)
    if value > old:
        cells[replica] = value
        return value - old
    return 0


def fold_totals(
    totals: dict[str, int], cells: dict[str, int], refunds: dict[str, int] | None
) -> None:
    """Add cells minus refunds into per-replica totals."""
    for r, v in cells.items():
        totals[r] = totals.get(r, 0) + v
    if refunds:
        for r, v in refunds.items():
            totals[r] = totals.get(r, 0) - v
