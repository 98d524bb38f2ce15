"""The token-bucket key store of one replica: local decisions, deltas out, deltas in, GC."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from crdt.bucket import NEG_INF, Epoch, KeyState
from crdt.delta import Delta, Entry
from crdt.errors import InvalidParameter
from crdt.policy import EPS_TIME, BucketPolicy, SyncTiming, finite_time, positive_int

S = TypeVar("S")  # a store's per-key state


def take_marks(dirty: set[str], limit: int | None) -> tuple[Iterable[str], set[str]]:
    """(keys taken, keys left marked) of a flush: every marked key, or `limit` of them
    when more are marked (the rest stay for the next call)."""
    if limit is None or len(dirty) <= limit:
        return dirty, set()
    return [dirty.pop() for _ in range(limit)], dirty


def held_states(held: Mapping[str, S], keys: Iterable[str] | None) -> Iterable[tuple[str, S]]:
    """(key, state) of every held key, or of those of `keys` still held."""
    return held.items() if keys is None else ((k, held[k]) for k in keys if k in held)


def own_entries(st: KeyState, replica: str, since_epoch: int) -> tuple[Entry, ...]:
    """The Entries of a key's own cells in epochs >= since_epoch (`KeyState.own_entries`)."""
    return tuple(map(Entry._make, st.own_entries(replica, since_epoch)))


class EpochInterner(dict[int, int]):
    """epoch -> the one int object kept for it; forgets all past MAX_EPOCHS_KEPT (a
    writer's clock far off adds epochs that would otherwise stay)."""

    MAX_EPOCHS_KEPT = 4096

    def __missing__(self, epoch: int) -> int:
        if len(self) >= self.MAX_EPOCHS_KEPT:
            self.clear()
        self[epoch] = epoch
        return epoch


class KeyView(NamedTuple):
    """A key's merged state at one instant."""

    key: str
    tokens: float
    tat: float
    consumed: int
    contributions: dict[str, int]
    open_epochs: int


@dataclass(slots=True)
class StoreStats:
    """Counters a node exports as metrics."""

    deleted_idle: int = 0
    evicted_active: int = 0
    sealed_epochs: int = 0
    late_entries: int = 0
    late_cost: int = 0
    evicted_cells_forgotten: int = 0
    # Entries skipped or clamped by the receiver's bounds, by kind (see `count_problem`).
    entry_problems: dict[str, int] = field(default_factory=dict)

    def count_problem(self, kind: str) -> None:
        """Count one entry out of bounds and clamped: `epoch_ahead`, `floor_ahead`,
        `cell_over_rule` or `refund_over_cell`."""
        self.entry_problems[kind] = self.entry_problems.get(kind, 0) + 1


class BudgetMember(Protocol):
    """A store whose keys count against a KeyBudget."""

    def __len__(self) -> int: ...

    def make_room(self) -> None:
        """Evict own keys (idle ones first) until the budget has room."""
        ...


class KeyBudget:
    """One bound on the keys held by several stores together (a node's rules).

    A store that must insert while the budget is spent makes room among its own keys
    when it holds at least its share, else in the store holding the most: one rule's
    flood cannot push every other rule's active keys out.
    """

    __slots__ = ("limit", "members", "used")

    def __init__(self, limit: int) -> None:
        self.limit = positive_int("max_keys", limit)
        self.used = 0
        self.members: list[BudgetMember] = []

    def make_room_for(self, member: BudgetMember) -> None:
        """Free one key's room for `member` to insert into."""
        owner = member
        if len(member) * len(self.members) < self.used:
            owner = max(self.members, key=len)
        owner.make_room()


class BucketStore:
    """Token buckets for many keys, owned by one replica (one process incarnation).

    `acquire` decides locally and records the admitted cost in this replica's cells;
    `flush` returns one Delta per key changed since the last flush; `apply` merges a
    peer's Delta; `sweep` seals old epochs and deletes keys whose deletion cannot change
    a decision; beyond `max_keys`, the oldest keys are evicted (counted).
    Times are seconds on a clock shared by the cluster; the store never reads a clock.
    """

    def __init__(
        self,
        policy: BucketPolicy,
        replica: str,
        timing: SyncTiming | None = None,
        max_keys: int = 1_000_000,
        budget: KeyBudget | None = None,
    ) -> None:
        if not replica:
            raise InvalidParameter("replica id must be a non-empty string")
        self.policy = policy
        self.replica = replica
        self.timing = timing if timing is not None else SyncTiming()
        self.max_keys = positive_int("max_keys", max_keys)
        # Keys held here count against `budget` (shared across a node's rules), else
        # against max_keys alone.
        self.budget = budget if budget is not None else KeyBudget(self.max_keys)
        self.budget.members.append(self)
        self.stats = StoreStats()
        self.bootstrapping = False
        self._keys: dict[str, KeyState] = {}
        self._dirty: set[str] = set()
        self._pending: list[Delta] = []
        # key -> (epoch, own P, own N) of keys evicted while active in the current epoch
        self._evicted_own: dict[str, tuple[int, int, int]] = {}
        self._interval = policy.interval
        self._rate = policy.rate
        self._capacity = policy.capacity
        self._cap_time = policy.capacity * policy.interval
        self._cap_limit = self._cap_time + EPS_TIME
        self._epoch_width = self.timing.epoch
        self._seal_after = self.timing.seal_after
        # Receiver bounds on a peer's entry (see `apply`): epochs at most this many ahead
        # of ours, at most this much net cost per writer and epoch.
        self._epochs_ahead = math.ceil(self._seal_after / self._epoch_width) + 1
        self._net_max = math.ceil(
            policy.capacity + policy.rate * (self._epoch_width + self._seal_after)
        )
        self._horizon = self._cap_time + self._seal_after + self._epoch_width
        self._e_now = 0
        self._epoch_start = math.inf  # forces _advance on first use
        self._epoch_end = -math.inf
        self._seal = -(2**62)
        self._sweep_keys: list[str] = []
        self._sweep_pos = 0
        self._flushed_epoch = -(2**62)
        # One int object per epoch index for every key's newest epoch: merged entries each
        # decode their own, and a million keys held a million equal ints (32 bytes each).
        self._epochs = EpochInterner()
        # Set to a list to be told which keys were deleted as idle (the replicator
        # tombstones their snapshot records); None keeps nothing.
        self.deleted: list[str] | None = None

    # -- clock ---------------------------------------------------------------

    def _advance(self, now: float) -> None:
        finite_time("now", now)
        width = self._epoch_width
        e = int(now // width)
        seal = int((now - self._seal_after) // width) - 1
        if seal > self._seal:  # never moves back when the clock steps back
            self._seal = seal
        # A clock stepped back behind the seal point writes into the first open epoch:
        # this replica may already have shipped a cell for the sealed epoch and deleted
        # the key, and a fresh cell there would ship a smaller absolute value.
        self._e_now = e if e > self._seal else self._seal + 1
        if self._evicted_own:
            current = self._e_now
            self._evicted_own = {k: v for k, v in self._evicted_own.items() if v[0] >= current}
        self._epoch_start = e * width
        self._epoch_end = (e + 1) * width

    @property
    def seal_point(self) -> int:
        """Epochs at or before this index are sealed."""
        return self._seal

    # -- decisions -------------------------------------------------------------

    def acquire(self, key: str, cost: int, now: float) -> float:
        """Admit `cost` for `key` at `now` if the bucket holds it.

        Returns the tokens left after admission (>= 0) when admitted, else minus the
        shortfall (< 0): the bucket holds `result + cost` tokens and lacks `-result`.
        """
        if type(cost) is not int or cost < 1:
            cost = positive_int("cost", cost)
        if not (self._epoch_start <= now < self._epoch_end):
            self._advance(now)
        st = self._keys.get(key)
        if st is None:
            if cost > self._capacity:
                return float(self._capacity - cost)
            st = self._insert(key, self._e_now)
        elif st.e < self._e_now:
            st.roll(self._e_now, self._interval, self._seal, self.replica)
        interval = self._interval
        tat = st.floor + st.used * interval
        # The backlog (time until full) is computed as a difference of close values and
        # never as `now + x - now`, which loses x's low bits when `now` is large.
        after = (tat - now if tat > now else 0.0) + cost * interval
        # The cost test matters when EPS_TIME * rate >= 1 token (rates >= 1e7/s).
        if after <= self._cap_limit and cost <= self._capacity:
            if tat < now:
                st.floor = now - st.used * interval
            st.used += cost
            st.own += cost
            self._dirty.add(key)
            left = (self._cap_time - after) * self._rate
            return left if left > 0.0 else 0.0
        return (self._cap_time - after) * self._rate

    def refund(self, key: str, cost: int, now: float) -> int:
        """Give back up to `cost` tokens this replica admitted in the current epoch (a
        PN-counter decrement); returns what was given back.

        A refund never exceeds this replica's own cell: a larger one would lower the
        epoch's consumption below zero, and the next admission would ship a floor in the
        future that every peer would take as debt.
        """
        cost = positive_int("cost", cost)
        if not (self._epoch_start <= now < self._epoch_end):
            self._advance(now)
        st = self._keys.get(key)
        if st is None:
            return 0  # a full bucket stays full
        if st.e < self._e_now:
            st.roll(self._e_now, self._interval, self._seal, self.replica)
        own_n = st.x.own_n if st.x is not None else 0
        give = min(cost, st.own - own_n)
        if give <= 0:
            return 0
        st.extra().own_n += give
        st.used -= give
        self._dirty.add(key)
        return give

    # -- replication -------------------------------------------------------------

    def flush(self, now: float, *, deltas: bool = True, limit: int | None = None) -> list[Delta]:
        """One Delta per key this replica changed since the last flush, or for `limit` of
        them (the rest stay marked for the next call); `deltas=False` clears the marks
        without building any (a replica with no peers)."""
        self._advance(now)
        out = self._pending
        self._pending = []
        # Own writes of marked keys went to epochs >= _flushed_epoch: once every mark is
        # taken it moves to the current epoch, so this ships each epoch's final own cell
        # exactly once more after the epoch ends, and never again (receivers may seal it
        # later). While keys stay marked it stays put: their writes may be that old.
        since = min(self._flushed_epoch, self._e_now)
        taken, self._dirty = take_marks(self._dirty, limit)
        self._flushed_epoch = since if self._dirty else self._e_now
        if not deltas:
            return []
        keys, replica = self._keys, self.replica
        for key in taken:
            st = keys.get(key)
            if st is not None:
                entries = own_entries(st, replica, since)
                if entries:
                    out.append(Delta(key, replica, entries))
        return out

    def delta_for(self, key: str, since_epoch: int) -> Delta | None:
        """This replica's cells of `key` in epochs >= since_epoch (older ones live in the
        first entry's cascaded floor), or None when it does not hold the key.

        With no own cell left in those epochs (all sealed since), one entry carries the
        newest epoch's cascaded floor alone (p = n = 0): what it consumed still counts."""
        st = self._keys.get(key)
        if st is None:
            return None
        entries = own_entries(st, self.replica, since_epoch)
        if not entries:
            if not math.isfinite(st.floor):
                return None
            entries = (Entry(st.e, st.floor, 0, 0),)
        return Delta(key, self.replica, entries)

    @property
    def current_epoch(self) -> int:
        """The epoch of the last time this store saw."""
        return self._e_now

    def dirty_count(self) -> int:
        """Keys changed since the last flush."""
        return len(self._dirty) + len(self._pending)

    def apply(self, delta: Delta, now: float) -> None:
        """Merge a peer's Delta (our own deltas echoed back by the topic are ignored).

        Each entry is checked against `now` and the policy first, so a hostile entry or a
        writer's clock far ahead can neither lock a user out nor hold a key: an epoch
        more than the seal horizon ahead, a floor that with the writer's own cell puts the
        bucket's TAT beyond now + C/r + the seal horizon, a net cell beyond what the rule
        admits in an epoch (C + r * (epoch + seal_after)) and a refund beyond its cell are
        clamped to those bounds, counted by kind.
        """
        if delta.replica == self.replica:
            return
        if not (self._epoch_start <= now < self._epoch_end):
            self._advance(now)
        entries = self._bounded(delta.entries, now)
        if not entries:
            return
        epochs = self._epochs
        st = self._keys.get(delta.key)
        if st is None:
            st = self._insert(delta.key, epochs[entries[0].epoch])
        seal = -(2**62) if self.bootstrapping else self._seal
        interval = self._interval
        me = self.replica
        late = 0
        for epoch, floor, p, n in entries:
            epoch = epochs[epoch]
            late_cost = st.merge(
                delta.replica, epoch, floor, p, n, interval=interval, seal=seal, me=me
            )
            if late_cost:
                late += late_cost
                self.stats.late_entries += 1
        self.stats.late_cost += late

    def _bounded(self, entries: tuple[Entry, ...], now: float) -> tuple[Entry, ...]:
        e_max = self._e_now + self._epochs_ahead
        # The furthest a writer's own entry can put the bucket's TAT: a full bucket's worth
        # ahead of now, plus the seal horizon for its clock and delivery.
        tat_max = now + self._horizon
        interval = self._interval
        net_max = self._net_max
        for epoch, floor, p, n in entries:  # plain unpacking: this runs for every merge
            net = p - n
            if epoch > e_max or net < 0 or net > net_max or floor + net * interval > tat_max:
                break
        else:
            return entries  # the common case: every entry within bounds, nothing copied
        out = []
        count = self.stats.count_problem
        for epoch, floor, p, n in entries:
            if epoch > e_max:
                # A writer's clock ahead (or a hostile entry): its consumption counts, in
                # the furthest epoch a timely writer could have reached.
                count("epoch_ahead")
                epoch = e_max
            if n > p:
                count("refund_over_cell")
                n = p
            if p - n > net_max:
                count("cell_over_rule")
                p = n + net_max
            if floor + (p - n) * interval > tat_max:
                count("floor_ahead")
                floor = tat_max - (p - n) * interval
            out.append(Entry(epoch, floor, p, n))
        return tuple(out)

    # -- reading -----------------------------------------------------------------

    def view(self, key: str, now: float) -> KeyView:
        """The merged state of `key` (a full bucket when untracked)."""
        st = self._keys.get(key)
        if st is None:
            return KeyView(key, float(self._capacity), -math.inf, 0, {}, 0)
        tat = st.tat(self._interval)
        backlog = tat - now if tat > now else 0.0
        tokens = self._capacity - backlog * self._rate
        contributions = st.contributions(self.replica)
        return KeyView(
            key, tokens, tat, sum(contributions.values()), contributions, st.open_epochs()
        )

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def keys(self) -> list[str]:
        """A snapshot of the tracked keys."""
        return list(self._keys)

    # -- memory ------------------------------------------------------------------

    def _insert(self, key: str, epoch: int) -> KeyState:
        budget = self.budget
        if len(self._keys) >= self.max_keys:
            self.make_room()
        elif budget.used >= budget.limit:
            budget.make_room_for(self)
        st = self._keys[key] = KeyState(epoch)
        budget.used += 1
        if self._evicted_own:
            kept = self._evicted_own.pop(key, None)
            if kept is not None and kept[0] >= epoch:
                # Re-admitted in the epoch it was evicted in: continue our own cell from
                # what was shipped, or peers' max-merge would drop the new admissions.
                st.e, st.own, st.used = kept[0], kept[1], kept[1] - kept[2]
                if kept[2]:
                    st.extra().own_n = kept[2]
        return st

    def _remember_own_cell(self, key: str, st: KeyState) -> None:
        # Only the current epoch's cell can be written again after an eviction.
        own_n = st.x.own_n if st.x is not None else 0
        if st.e < self._e_now or not (st.own or own_n):
            return
        if len(self._evicted_own) >= self.max_keys:
            self.stats.evicted_cells_forgotten += 1  # bounded memory wins; counted
            return
        self._evicted_own[key] = (st.e, st.own, own_n)

    def _idle(self, key: str, st: KeyState, now: float) -> bool:
        # Deleting changes no decision when every epoch is sealed (no peer can still
        # send cells for it within the sync bound), nothing of ours is waiting to be
        # flushed, and the bucket was full by the start of the first open epoch: a
        # peer's cells still in flight belong to open epochs, whose floors are at or
        # after their start, so the forgotten history could not have stacked under them.
        tat = st.floor + st.used * self._interval
        return (
            st.e <= self._seal
            and (st.x is None or not st.x.older)
            and tat <= now
            and tat <= (self._seal + 1) * self._epoch_width
            and key not in self._dirty
        )

    def idle(self, key: str, now: float) -> bool:
        """True when forgetting `key` now changes no decision (a key not held is idle):
        the sweep may delete it, and a snapshot of it is not needed."""
        st = self._keys.get(key)
        if st is None:
            return True
        self._advance(now)
        return self._idle(key, st, now)

    def settled(self, key: str, before: float, now: float) -> bool:
        """True when every record of `key` written before `before` can be forgotten
        without changing a decision: their epochs are sealed, and the merged bucket is full
        now. A full bucket forgets: the next admission sets the floor from `now` and the
        epoch's own consumption, whatever the sealed history held."""
        st = self._keys.get(key)
        if st is None:
            return True
        self._advance(now)
        return int(before // self._epoch_width) <= self._seal and st.tat(self._interval) <= now

    def _next_sweep_key(self) -> str | None:
        if self._sweep_pos >= len(self._sweep_keys):
            self._sweep_keys = list(self._keys)
            self._sweep_pos = 0
            if not self._sweep_keys:
                return None
        key = self._sweep_keys[self._sweep_pos]
        self._sweep_pos += 1
        return key

    def sweep(self, now: float, budget: int = 10_000) -> int:
        """Seal old epochs and delete idle keys, visiting at most `budget` keys.

        Returns the number of keys deleted. Call it periodically; a full pass over all
        keys takes len(self) / budget calls.
        """
        self._advance(now)
        if self.bootstrapping:
            return 0
        deleted = 0
        keys = self._keys
        for _ in range(min(budget, len(keys))):
            key = self._next_sweep_key()
            if key is None:
                break
            st = keys.get(key)
            if st is None:
                continue
            self.stats.sealed_epochs += st.seal(self._seal, self._interval)
            if self._idle(key, st, now):
                del keys[key]
                deleted += 1
                if self.deleted is not None:
                    self.deleted.append(key)
        self.stats.deleted_idle += deleted
        self.budget.used -= deleted
        return deleted

    def make_room(self) -> None:
        """Evict own keys, idle ones first, until the budget (and max_keys) has room."""
        keys = self._keys
        # Prefer keys whose deletion cannot change a decision; look at a bounded
        # number of candidates so an insert stays O(1) amortised under a key flood.
        now = self._epoch_start
        for _ in range(min(64, len(keys))):
            key = self._next_sweep_key()
            if key is None:
                break
            st = keys.get(key)
            if st is not None:
                st.seal(self._seal, self._interval)
                if self._idle(key, st, now):
                    del keys[key]
                    self.budget.used -= 1
                    self.stats.deleted_idle += 1
                    if self.deleted is not None:
                        self.deleted.append(key)
                    return
        budget = self.budget
        while keys and (budget.used >= budget.limit or len(keys) >= self.max_keys):
            key = self._next_sweep_key()
            if key is None:
                return
            st = keys.pop(key, None)
            if st is None:
                continue
            budget.used -= 1
            if key in self._dirty:
                # Ship what we admitted before forgetting the key: nothing admitted is lost.
                self._dirty.discard(key)
                entries = own_entries(st, self.replica, self._flushed_epoch)
                if entries:
                    self._pending.append(Delta(key, self.replica, entries))
            self._remember_own_cell(key, st)
            self.stats.evicted_active += 1

    def export_keys(self, keys: Iterable[str] | None = None) -> list[tuple[Any, ...]]:
        """Every key's whole state (or that of those of `keys` still held) as plain tuples,
        dicts, floats and ints (marshal-able): what a restarted or new node loads with
        `import_keys` instead of re-reading the topic."""
        rows: list[tuple[Any, ...]] = []
        for key, st in held_states(self._keys, keys):
            x = st.x
            if x is None:
                if st.peer is None:
                    rows.append((key, st.e, st.floor, st.used, st.own))
                else:  # the common synced key: one peer's cell, a short row
                    rows.append((key, st.e, st.floor, st.used, st.own, {st.peer: st.peer_p}))
                continue
            remote = st.remote_cells() or None
            if not (x.older or x.sealed or x.late or x.own_n or x.remote_n) and x.base == NEG_INF:
                # Peers' cells in the newest epoch only: a short row.
                rows.append((key, st.e, st.floor, st.used, st.own, remote))
                continue
            older = [(o.e, o.floor, o.cells, o.refunds, o.used) for o in x.older]
            # Plain dicts: the shared empties (read-only mappings) are not marshal-able.
            extra = (remote, x.own_n, x.remote_n, older, dict(x.sealed), x.base, dict(x.late))
            rows.append((key, st.e, st.floor, st.used, st.own, *extra))
        return rows

    def import_keys(self, rows: list[tuple[Any, ...]], writer: str) -> int:
        """Load `export_keys` rows of an earlier replica `writer` (a previous incarnation):
        its own cells become a peer's cells, so this replica starts its own from zero.
        Keys held already are left as they are; the rows' dicts are taken over (pass a
        fresh copy, as marshal.loads gives); returns the keys loaded."""
        keys = self._keys
        epochs = self._epochs
        loaded = 0
        for row in rows:  # rows are the caller's (fresh from marshal): their dicts are kept
            key, e, floor, used, own = row[:5]
            if key in keys:
                continue
            st = KeyState(epochs[e])
            st.floor, st.used = floor, used
            own_n = 0
            size = len(row)
            if size > 5 and row[5]:
                for replica, p in row[5].items():
                    st.put_remote(replica, p)
            if size > 6:
                own_n, remote_n, older, sealed, base, late = row[6:]
                x = st.extra()
                x.remote_n = remote_n or None
                if older:
                    x.older = [Epoch(*o) for o in older]
                if sealed:
                    x.sealed = sealed
                if late:
                    x.late = late
                x.base = base
            if own:
                st.put_remote(writer, own)
            if own_n:
                x = st.extra()
                x.remote_n = {**(x.remote_n or {}), writer: own_n}
            keys[key] = st
            loaded += 1
        self.budget.used += loaded
        return loaded

    def finish_bootstrap(self, now: float) -> None:
        """Leave bootstrap mode: from now on, entries of sealed epochs count as late."""
        self.bootstrapping = False
        self._advance(now)
