"""Fixed-window, sliding-window and calendar counters over the same per-replica cells as the bucket.

Each window index w (`periods.index(now)`: now // window, or a UTC calendar period such
as the month, see crdt.periods) holds one G-counter cell per replica (with refunds as a
second cell), shipped as absolute values in the same Delta/Entry shape as the bucket
(`floor` is unused and sent as 0.0). Only the current and previous windows matter for a
decision, so older windows are dropped; cells that arrive for them change nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from crdt.delta import Delta, Entry
from crdt.errors import InvalidParameter
from crdt.periods import FixedPeriods, Periods
from crdt.policy import WindowPolicy, finite_time, positive_int
from crdt.store import KeyBudget, KeyView, StoreStats, held_states, take_marks


class WindowState:
    """Cells of the previous and current window of one key."""

    __slots__ = ("cur", "cur_cells", "cur_used", "prev_cells", "prev_used")

    def __init__(self, w: int) -> None:
        self.cur = w
        self.cur_cells: dict[str, tuple[int, int]] = {}
        self.cur_used = 0
        self.prev_cells: dict[str, tuple[int, int]] = {}
        self.prev_used = 0

    def advance(self, w: int) -> None:
        """Make `w` (> cur) the current window."""
        if w == self.cur + 1:
            self.prev_cells, self.prev_used = self.cur_cells, self.cur_used
        else:
            self.prev_cells, self.prev_used = {}, 0
        self.cur = w
        self.cur_cells = {}
        self.cur_used = 0

    def merge(self, replica: str, w: int, p: int, n: int) -> None:
        """Max-merge one replica's absolute cells for window w."""
        if w > self.cur:
            self.advance(w)
        if w == self.cur:
            cells, used = self.cur_cells, self.cur_used
        elif w == self.cur - 1:
            cells, used = self.prev_cells, self.prev_used
        else:
            return  # a window too old to matter
        old_p, old_n = cells.get(replica, (0, 0))
        new_p, new_n = max(old_p, p), max(old_n, n)
        if (new_p, new_n) != (old_p, old_n):
            cells[replica] = (new_p, new_n)
            used += (new_p - old_p) - (new_n - old_n)
            if w == self.cur:
                self.cur_used = used
            else:
                self.prev_used = used


class WindowStore:
    """Fixed or sliding window limits for many keys, owned by one replica.

    Windows are `policy.window` seconds wide unless `periods` numbers them otherwise
    (calendar periods of variable length); `policy.limit` applies to each.
    """

    def __init__(
        self,
        policy: WindowPolicy,
        replica: str,
        *,
        sliding: bool,
        max_keys: int = 1_000_000,
        budget: KeyBudget | None = None,
        periods: Periods | None = None,
    ) -> None:
        if not replica:
            raise InvalidParameter("replica id must be a non-empty string")
        self.policy = policy
        self.periods = periods if periods is not None else FixedPeriods(policy.window)
        self._index = self.periods.index
        # Fixed widths inline their arithmetic: this runs twice per decision.
        self._width = self.periods.width if isinstance(self.periods, FixedPeriods) else 0.0
        self.replica = replica
        self.sliding = sliding
        self.max_keys = positive_int("max_keys", max_keys)
        self.budget = budget if budget is not None else KeyBudget(self.max_keys)  # as BucketStore
        self.budget.members.append(self)
        self.stats = StoreStats()
        self.bootstrapping = False
        self._keys: dict[str, WindowState] = {}
        self._dirty: set[str] = set()
        self._pending: list[Delta] = []
        self._evicted_own: dict[str, tuple[int, int, int]] = {}
        self._sweep_keys: list[str] = []
        self._sweep_pos = 0
        self.deleted: list[str] | None = None  # as BucketStore.deleted

    def _window(self, now: float) -> int:
        now = finite_time("now", now)
        return int(now // self._width) if self._width else self._index(now)

    def _count(self, st: WindowState, now: float) -> float:
        # Read-only: the state may still hold an older window as current.
        w = self._window(now)
        if st.cur > w:
            # A peer's clock is ahead (or ours stepped back): the state already holds a
            # later window, where an admission now would be recorded. Count everything
            # held, so our own window is not read as empty.
            return float(st.cur_used + (st.prev_used if st.cur == w + 1 else 0))
        if st.cur == w:
            cur, prev = st.cur_used, st.prev_used
        elif st.cur == w - 1:
            cur, prev = 0, st.cur_used
        else:
            cur, prev = 0, 0
        if not self.sliding:
            return float(cur)
        start = self.periods.start(w)
        weight = 1.0 - (now - start) / (self.periods.end(w) - start)
        return cur + prev * max(weight, 0.0)

    def _state(self, key: str, now: float) -> WindowState | None:
        st = self._keys.get(key)
        w = self._window(now)
        if st is not None and st.cur < w:
            st.advance(w)
        return st

    def acquire(self, key: str, cost: int, now: float) -> float:
        """Admit `cost` if the window has room: remaining (>= 0) or minus the shortfall."""
        cost = positive_int("cost", cost)
        limit = self.policy.limit
        st = self._state(key, now)
        count = 0.0 if st is None else self._count(st, now)
        left = limit - count - cost
        if left < -1e-9:
            return left
        if st is None:
            self._make_room()
            st = self._new_state(key, self._window(now))
        own_p, own_n = st.cur_cells.get(self.replica, (0, 0))
        st.cur_cells[self.replica] = (own_p + cost, own_n)
        st.cur_used += cost
        self._dirty.add(key)
        return max(left, 0.0)

    def refund(self, key: str, cost: int, now: float) -> int:
        """Give back up to `cost` admitted by this replica in the current window (never
        more than its own cell); returns what was given back."""
        cost = positive_int("cost", cost)
        st = self._state(key, now)
        if st is None or st.cur != self._window(now):
            return 0
        own_p, own_n = st.cur_cells.get(self.replica, (0, 0))
        give = min(cost, own_p - own_n)
        if give <= 0:
            return 0
        st.cur_cells[self.replica] = (own_p, own_n + give)
        st.cur_used -= give
        self._dirty.add(key)
        return give

    def _own_entries(self, st: WindowState) -> tuple[Entry, ...]:
        out = []
        prev = st.prev_cells.get(self.replica)
        if prev is not None:
            out.append(Entry(st.cur - 1, 0.0, prev[0], prev[1]))
        cur = st.cur_cells.get(self.replica)
        if cur is not None:
            out.append(Entry(st.cur, 0.0, cur[0], cur[1]))
        return tuple(out)

    def flush(self, now: float, *, deltas: bool = True, limit: int | None = None) -> list[Delta]:
        """One Delta per key this replica changed since the last flush, or for `limit` of
        them (the rest stay marked for the next call); `deltas=False` clears the marks
        without building any (a replica with no peers)."""
        out, self._pending = self._pending, []
        taken, self._dirty = take_marks(self._dirty, limit)
        if not deltas:
            return []
        for key in taken:
            st = self._keys.get(key)
            if st is not None:
                entries = self._own_entries(st)
                if entries:
                    out.append(Delta(key, self.replica, entries))
        return out

    def delta_for(self, key: str, since_epoch: int) -> Delta | None:
        """This replica's cells of `key` in the windows that still matter."""
        st = self._keys.get(key)
        if st is None:
            return None
        entries = self._own_entries(st)
        return Delta(key, self.replica, entries) if entries else None

    @property
    def current_epoch(self) -> int:
        """Windows are their own epochs; callers pass it back to delta_for, which ignores it."""
        return 0

    def dirty_count(self) -> int:
        """Keys changed since the last flush."""
        return len(self._dirty) + len(self._pending)

    def apply(self, delta: Delta, now: float) -> None:
        """Merge a peer's Delta, each entry bounded by `now` and the limit first: a window
        more than one ahead of ours, a refund beyond its cell and a net cell beyond the
        limit are clamped to those bounds (counted by kind in `stats.entry_problems`)."""
        if delta.replica == self.replica or not delta.entries:
            return
        w_now = self._window(now)
        limit = self.policy.limit
        count = self.stats.count_problem
        entries = []
        for entry in delta.entries:
            w, _, p, n = entry
            if w > w_now + 1:
                count("epoch_ahead")  # counted in the furthest window a timely writer reaches
                w = w_now + 1
            if n > p:
                count("refund_over_cell")
                n = p
            if p - n > limit:
                count("cell_over_rule")
                p = n + limit
            entries.append((w, p, n))
        if not entries:
            return
        st = self._keys.get(delta.key)
        if st is None:
            newest = max(w for w, _, _ in entries)
            if newest < w_now - 1:
                return  # only windows that can no longer matter
            self._make_room()
            st = self._new_state(delta.key, newest)
        for w, p, n in entries:
            st.merge(delta.replica, w, p, n)

    def view(self, key: str, now: float) -> KeyView:
        """Merged state of `key`: tokens is the room left in the window."""
        st = self._keys.get(key)
        if st is None:
            return KeyView(key, float(self.policy.limit), -math.inf, 0, {}, 0)
        totals: dict[str, int] = {}
        for cells in (st.prev_cells, st.cur_cells):
            for r, (p, n) in cells.items():
                totals[r] = totals.get(r, 0) + p - n
        contributions = {r: v for r, v in sorted(totals.items()) if v}
        end = self.periods.end(self._window(now))
        return KeyView(
            key,
            self.policy.limit - self._count(st, now),
            end,
            sum(contributions.values()),
            contributions,
            2 if st.prev_cells else 1,
        )

    def sweep(self, now: float, budget: int = 10_000) -> int:
        """Delete keys whose windows are all too old to matter, visiting at most `budget`
        keys; successive calls continue where the last one stopped.

        Windows are compared by index, never by width: a key whose month is still running
        (or just ended) is kept, whatever the month's length.
        """
        w = self._window(now)
        if self._evicted_own:
            self._evicted_own = {k: v for k, v in self._evicted_own.items() if v[0] >= w}
        keys = self._keys
        deleted = 0
        for _ in range(min(budget, len(keys))):
            if self._sweep_pos >= len(self._sweep_keys):
                self._sweep_keys = list(keys)
                self._sweep_pos = 0
            key = self._sweep_keys[self._sweep_pos]
            self._sweep_pos += 1
            st = keys.get(key)
            if st is not None and self._idle(key, st.cur, w):
                del keys[key]
                deleted += 1
                if self.deleted is not None:
                    self.deleted.append(key)
        self.stats.deleted_idle += deleted
        self.budget.used -= deleted
        return deleted

    def _idle(self, key: str, cur: int, w: int) -> bool:
        # Every window of the key is older than the previous one, and nothing of ours
        # is waiting to be flushed.
        return cur < w - 1 and key not in self._dirty

    def idle(self, key: str, now: float) -> bool:
        """True when forgetting `key` now changes no decision (a key not held is idle):
        the sweep may delete it, and a snapshot of it is not needed."""
        st = self._keys.get(key)
        return st is None or self._idle(key, st.cur, self._window(now))

    def settled(self, key: str, before: float, now: float) -> bool:
        """True when records of `key` written before `before` can no longer matter: their
        windows are older than the previous one."""
        return key not in self._keys or self._window(before) < self._window(now) - 1

    def _make_room(self) -> None:
        if len(self._keys) >= self.max_keys:
            self.make_room()
        elif self.budget.used >= self.budget.limit:
            self.budget.make_room_for(self)

    def make_room(self) -> None:
        """Evict own keys until the budget (and max_keys) has room."""
        budget = self.budget
        while self._keys and (budget.used >= budget.limit or len(self._keys) >= self.max_keys):
            self._evict_one()

    def _evict_one(self) -> None:
        key = next(iter(self._keys))
        st = self._keys.pop(key)
        self.budget.used -= 1
        if key in self._dirty:
            self._dirty.discard(key)
            entries = self._own_entries(st)
            if entries:
                self._pending.append(Delta(key, self.replica, entries))
        own = st.cur_cells.get(self.replica)
        if own is not None:
            # Re-admitted in the same window, our cell must continue from what was
            # shipped, or peers' max-merge would drop the new admissions.
            if len(self._evicted_own) < self.max_keys:
                self._evicted_own[key] = (st.cur, own[0], own[1])
            else:
                self.stats.evicted_cells_forgotten += 1  # bounded memory wins; counted
        self.stats.evicted_active += 1

    def _new_state(self, key: str, w: int) -> WindowState:
        st = self._keys[key] = WindowState(w)
        self.budget.used += 1
        kept = self._evicted_own.pop(key, None) if self._evicted_own else None
        if kept is not None and kept[0] == w:
            st.cur_cells[self.replica] = (kept[1], kept[2])
            st.cur_used = kept[1] - kept[2]
        return st

    def export_keys(self, keys: Iterable[str] | None = None) -> list[tuple[Any, ...]]:
        """Every key's windows (or those of `keys` still held) as plain tuples and dicts
        (see BucketStore.export_keys)."""
        return [
            (key, st.cur, st.cur_cells, st.cur_used, st.prev_cells, st.prev_used)
            for key, st in held_states(self._keys, keys)
        ]

    def import_keys(self, rows: list[tuple[Any, ...]], writer: str) -> int:
        """Load `export_keys` rows of an earlier replica (cells are keyed by replica, so
        its cells are a peer's); keys held already are left as they are."""
        keys = self._keys
        loaded = 0
        for key, cur, cur_cells, cur_used, prev_cells, prev_used in rows:
            if key in keys:
                continue
            st = WindowState(cur)  # the rows' dicts are taken over, as BucketStore's
            st.cur_cells, st.cur_used = cur_cells, cur_used
            st.prev_cells, st.prev_used = prev_cells, prev_used
            keys[key] = st
            loaded += 1
        self.budget.used += loaded
        return loaded

    def finish_bootstrap(self, now: float) -> None:
        """Windows have no sealing, so bootstrap needs no special handling."""
        self.bootstrapping = False

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def keys(self) -> list[str]:
        """A snapshot of the tracked keys."""
        return list(self._keys)
