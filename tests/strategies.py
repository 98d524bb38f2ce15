"""Shared Hypothesis strategies for the crdt tests, an exact reference bucket and a
deterministic cluster that plays generated traffic over a generated network."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from hypothesis import settings
from hypothesis import strategies as st

from crdt.delta import Delta, Entry
from crdt.policy import BucketPolicy, SyncTiming
from crdt.store import BucketStore

# Simulated runs start here (integer milliseconds); float seconds stay precise.
BASE_MS = 1_000_000
KEYS = ("a", "b", "c")
REPLICAS = ("r0", "r1", "r2", "r3", "r4")


def seconds(t_ms: int) -> float:
    """Float seconds of a run offset in milliseconds (what the store sees)."""
    return (BASE_MS + t_ms) / 1000


def exact_seconds(t_ms: int) -> Fraction:
    """The same instant as an exact rational (what the reference sees)."""
    return Fraction(BASE_MS + t_ms, 1000)


# -- limit parameters ------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """A bucket policy with its exact rate: rate = num/den tokens per second."""

    num: int
    den: int
    capacity: int

    @property
    def rate(self) -> Fraction:
        """Exact tokens per second."""
        return Fraction(self.num, self.den)

    @property
    def policy(self) -> BucketPolicy:
        """The float policy the store uses."""
        return BucketPolicy(self.num / self.den, self.capacity)


# Rates p/q with p <= 50 keep every exact slack of `max(TAT, now) + c/r - now - C/r` on
# a grid of 1/(1000 p) s >= 2e-5 s when times are whole milliseconds: a boundary case is
# exactly 0, never within float noise or EPS_TIME of 0 without being 0.
limits = st.builds(
    Limit,
    num=st.integers(1, 50),
    den=st.integers(1, 10),
    capacity=st.integers(1, 30),
)

timings = st.sampled_from(
    [
        SyncTiming(),
        SyncTiming(epoch=0.5, seal_after=1.25),
        SyncTiming(epoch=0.25, seal_after=1.0),
        SyncTiming(epoch=2.0, seal_after=3.0),
    ]
)

bad_numbers = st.one_of(
    st.just(float("nan")),
    st.just(float("inf")),
    st.just(float("-inf")),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.floats(max_value=0.0, allow_nan=False),
    st.integers(max_value=0),
)
non_integers = st.one_of(
    st.floats(allow_nan=True).filter(lambda f: not f.is_integer()),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
    st.integers(max_value=0),
)


# -- the exact yardstick ------------------------------------------------------------


class ExactBucket:
    """GCRA in rationals: admit cost c at t iff max(TAT, t) + c/r - t <= C/r."""

    def __init__(self, rate: Fraction, capacity: int) -> None:
        self.interval = 1 / rate
        self.capacity = capacity
        self.tat: Fraction | None = None

    def acquire(self, cost: int, now: Fraction) -> Fraction:
        """Tokens left when admitted (>= 0), else minus the shortfall."""
        tat = self.tat if self.tat is not None and self.tat > now else now
        after = tat + cost * self.interval - now
        left = (self.capacity * self.interval - after) / self.interval
        if left >= 0 and cost <= self.capacity:
            self.tat = tat + cost * self.interval
        return left

    def refund(self, cost: int) -> None:
        """Give back `cost` tokens."""
        if self.tat is not None:
            self.tat -= cost * self.interval

    def tokens(self, now: Fraction) -> Fraction:
        """Tokens held at `now` (negative in debt)."""
        if self.tat is None or self.tat <= now:
            return Fraction(self.capacity)
        return self.capacity - (self.tat - now) / self.interval


# -- traffic -----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Op:
    """One request: at t_ms (run offset), on node, for key, of cost (refund if < 0)."""

    t_ms: int
    node: int
    key: str
    cost: int


@st.composite
def traffic(
    draw: st.DrawFn,
    *,
    nodes: int,
    max_cost: int,
    max_ops: int = 40,
    max_gap_ms: int = 600,
    long_gaps: bool = True,
    refunds: bool = False,
) -> list[Op]:
    """Time-ordered requests on `nodes` nodes over KEYS; some gaps let keys go idle."""
    gap = st.integers(0, max_gap_ms)
    if long_gaps:
        # Gaps of a few epochs are where sealing meets in-flight deltas.
        around_seconds = st.integers(1, 5).flatmap(
            lambda k: st.integers(k * 1000 - 300, k * 1000 + 300)
        )
        gap = st.one_of(gap, gap, around_seconds, st.integers(2_000, 6_000))
    costs = st.one_of(st.integers(1, max_cost), st.just(max_cost))
    if refunds:
        costs = st.one_of(costs, costs, costs, st.integers(-3, -1))
    keys = st.sampled_from(KEYS[: draw(st.integers(1, len(KEYS)))])
    steps = draw(
        st.lists(
            st.tuples(gap, st.integers(0, nodes - 1), keys, costs),
            min_size=1,
            max_size=max_ops,
        )
    )
    ops = []
    t = 0
    for step_gap, node, key, cost in steps:
        t += step_gap
        ops.append(Op(t, node, key, cost))
    return ops


# -- the network ----------------------------------------------------------------------


@dataclass(frozen=True)
class Net:
    """How deltas travel: flush period, random delay, duplicates, FIFO or not, cuts.

    A partition (start_ms, end_ms, node) cuts `node` off from everyone else; deltas
    crossing the cut while it lasts are delivered after it heals.
    """

    flush_ms: int = 20
    max_delay_ms: int = 0
    min_delay_ms: int = 0
    duplicate: float = 0.0
    fifo: bool = True
    seed: int = 0
    partitions: tuple[tuple[int, int, int], ...] = ()

    def sync_ms(self) -> int:
        """Worst time from an admission to every peer having merged it."""
        return self.flush_ms + self.max_delay_ms


def timely_nets(timing: SyncTiming, *, fifo: bool | None = None) -> st.SearchStrategy[Net]:
    """Networks whose worst sync delay stays below `seal_after` (the exactness regime).

    Delays reach up to 90% of the bound, and are sometimes all close to it on purpose:
    that is where sealing races live.
    """
    seal_ms = int(timing.seal_after * 1000)

    @st.composite
    def nets(draw: st.DrawFn) -> Net:
        flush_ms = draw(st.sampled_from([20, 100, 250]))
        max_delay = draw(st.integers(0, max(0, seal_ms * 9 // 10 - flush_ms)))
        return Net(
            flush_ms=flush_ms,
            max_delay_ms=max_delay,
            min_delay_ms=draw(st.sampled_from([0, max_delay * 2 // 3, max_delay])),
            duplicate=draw(st.sampled_from([0.0, 0.3])),
            fifo=draw(st.booleans()) if fifo is None else fifo,
            seed=draw(st.integers(0, 2**32)),
        )

    return nets()


@dataclass
class Decision:
    """What a node answered to one Op."""

    op: Op
    result: float


_DELIVER, _REQUEST, _FLUSH = 0, 1, 2


@dataclass
class Cluster:
    """N BucketStores wired by a simulated network; every run is deterministic."""

    limit: Limit
    timing: SyncTiming
    nodes: int
    sweep: bool = True
    sweep_budget: int = 10_000
    max_keys: int = 1_000_000
    replicas: Sequence[str] = REPLICAS
    stores: list[BucketStore] = field(init=False)
    sent: list[tuple[int, Delta]] = field(init=False, default_factory=list)
    decisions: list[Decision] = field(init=False, default_factory=list)
    end_ms: int = field(init=False, default=0)
    _events: list[tuple[int, int, int, int, Op | Delta | None]] = field(
        init=False, default_factory=list
    )
    _seq: int = field(init=False, default=0)
    _channel: dict[tuple[int, int], int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.stores = [
            BucketStore(self.limit.policy, self.replicas[i], self.timing, self.max_keys)
            for i in range(self.nodes)
        ]

    def _push(self, t: int, kind: int, node: int, payload: Op | Delta | None) -> None:
        heapq.heappush(self._events, (t, kind, self._seq, node, payload))
        self._seq += 1

    def run(self, ops: Sequence[Op], net: Net, *, tail_ms: int | None = None) -> None:
        """Play `ops` (refunds have cost < 0), then keep flushing and delivering for
        `tail_ms` more (default: long enough for every delta to arrive and seal)."""
        rng = random.Random(net.seed)
        last_op = ops[-1].t_ms if ops else 0
        if tail_ms is None:
            tail_ms = net.sync_ms() + 2 * net.flush_ms + int(self.timing.seal_after * 1000)
        heal = max((end for _, end, _ in net.partitions), default=0)
        self.end_ms = max(last_op, heal) + tail_ms
        for op in ops:
            self._push(op.t_ms, _REQUEST, op.node, op)
        for i in range(self.nodes):
            self._push(i * net.flush_ms // self.nodes, _FLUSH, i, None)
        while self._events:
            t, kind, _, node, payload = heapq.heappop(self._events)
            store = self.stores[node]
            now = seconds(t)
            if kind == _REQUEST:
                assert isinstance(payload, Op)
                if payload.cost > 0:
                    result = store.acquire(payload.key, payload.cost, now)
                else:
                    # A refund's result is what was given back (at most the own cell).
                    result = float(store.refund(payload.key, -payload.cost, now))
                self.decisions.append(Decision(payload, result))
            elif kind == _DELIVER:
                assert isinstance(payload, Delta)
                store.apply(payload, now)
            else:
                for delta in sorted(store.flush(now), key=lambda d: d.key):
                    self.sent.append((t, delta))
                    self._send(t, node, delta, net, rng)
                if self.sweep:
                    store.sweep(now, self.sweep_budget)
                if t + net.flush_ms <= self.end_ms:
                    self._push(t + net.flush_ms, _FLUSH, node, None)

    def _send(self, t: int, node: int, delta: Delta, net: Net, rng: random.Random) -> None:
        for peer in range(self.nodes):
            if peer == node:
                continue
            sent = t
            for start, end, cut in net.partitions:
                if start <= t < end and cut in (node, peer):
                    sent = max(sent, end)
            at = sent + rng.randint(net.min_delay_ms, net.max_delay_ms)
            if net.fifo:
                at = max(at, self._channel.get((node, peer), at))
                self._channel[(node, peer)] = at
            self._push(at, _DELIVER, peer, delta)
            if net.duplicate and rng.random() < net.duplicate:
                # Within the same delay bound. On a FIFO channel (a Kafka partition) a
                # duplicate is a re-read: it comes after the original, so never before
                # an older record of the same writer.
                first = at if net.fifo else sent + net.min_delay_ms
                again = rng.randint(first, max(first, sent + net.max_delay_ms))
                self._push(again, _DELIVER, peer, delta)

    def final_seconds(self) -> float:
        """The instant the run ended."""
        return seconds(self.end_ms)


@dataclass(frozen=True)
class Scenario:
    """A generated cluster run: limits, timing, nodes, network and traffic."""

    limit: Limit
    timing: SyncTiming
    nodes: int
    net: Net
    ops: tuple[Op, ...]

    def play(self, *, sweep: bool = True, max_keys: int = 1_000_000) -> Cluster:
        """Run it on a fresh cluster."""
        cluster = Cluster(self.limit, self.timing, self.nodes, sweep=sweep, max_keys=max_keys)
        cluster.run(self.ops, self.net)
        return cluster


@st.composite
def scenarios(
    draw: st.DrawFn,
    *,
    min_nodes: int = 2,
    max_nodes: int = 4,
    fifo: bool | None = None,
    refunds: bool = False,
    max_ops: int = 40,
) -> Scenario:
    """Runs within the sync bound (every delta can arrive before its epoch is sealed)."""
    limit = draw(limits)
    timing = draw(timings)
    nodes = draw(st.integers(min_nodes, max_nodes))
    net = draw(timely_nets(timing, fifo=fifo))
    with_refunds = refunds and draw(st.booleans())
    ops = draw(traffic(nodes=nodes, max_cost=limit.capacity, refunds=with_refunds, max_ops=max_ops))
    return Scenario(limit, timing, nodes, net, tuple(ops))


def entries_max(deltas: Sequence[Delta]) -> list[Delta]:
    """The full state of every writer: per (key, replica), each epoch's largest entry."""
    best: dict[tuple[str, str], dict[int, Entry]] = {}
    for delta in deltas:
        per_epoch = best.setdefault((delta.key, delta.replica), {})
        for entry in delta.entries:
            old = per_epoch.get(entry.epoch)
            if old is None:
                per_epoch[entry.epoch] = entry
            else:
                per_epoch[entry.epoch] = Entry(
                    entry.epoch,
                    max(old.floor, entry.floor),
                    max(old.p, entry.p),
                    max(old.n, entry.n),
                )
    return [
        Delta(key, replica, tuple(per_epoch[e] for e in sorted(per_epoch)))
        for (key, replica), per_epoch in sorted(best.items())
    ]


def scaled(factor: float) -> settings:
    """The active profile with `factor` times its max_examples (for costly properties)."""
    active = settings.default
    assert active is not None
    return settings(max_examples=max(10, int(active.max_examples * factor)))


def fold_tat(deltas: Sequence[Delta], interval: float) -> float:
    """The lattice's TAT computed from scratch: per epoch F = max floor, U = sum over
    replicas of (max P - max N); floor'(next) = max(F, floor'(prev) + T U(prev))."""
    floors: dict[int, float] = {}
    cells: dict[int, dict[str, tuple[int, int]]] = {}
    for delta in deltas:
        for e in delta.entries:
            floors[e.epoch] = max(floors.get(e.epoch, -math.inf), e.floor)
            p, n = cells.setdefault(e.epoch, {}).get(delta.replica, (0, 0))
            cells[e.epoch][delta.replica] = (max(p, e.p), max(n, e.n))
    tat = -math.inf
    for epoch in sorted(floors):
        used = sum(p - n for p, n in cells[epoch].values())
        tat = max(floors[epoch], tat) + used * interval
    return tat
