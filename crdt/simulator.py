"""A deterministic cluster simulator: N replicas (in R regions), delayed, duplicated,
reordered and partitioned delta delivery, and traffic shapes; compares admissions with
the ideal single bucket and the theoretical over-admission bound (crdt.bounds)."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Literal

from crdt.bounds import admission_bound, interval_excess_bound
from crdt.delta import Delta
from crdt.errors import InvalidParameter
from crdt.policy import BucketPolicy, SyncTiming, positive_int, positive_rate
from crdt.reference import ReferenceBucket, max_interval_excess
from crdt.store import BucketStore

Traffic = Literal["steady", "poisson", "bursty", "adversarial"]
TRAFFIC: tuple[Traffic, ...] = ("steady", "poisson", "bursty", "adversarial")


@dataclass(frozen=True, slots=True)
class Partition:
    """From `start` to `end` (seconds after the run starts), `group` is cut off from the
    other nodes; deltas sent across the cut are held and delivered after it heals."""

    start: float
    end: float
    group: frozenset[int]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulated run: `nodes` writers in each of `regions` regions.

    A delta reaches a peer of the same region after `delay` (+ up to `jitter`) once
    flushed, and a peer of another region after `region_delay` more (the mirror).
    """

    nodes: int = 3
    rate: float = 10.0
    burst: int = 20
    rps: float = 100.0
    seconds: float = 10.0
    users: int = 1
    delay: float = 0.02
    jitter: float = 0.0
    flush: float = 0.02
    duplicate: float = 0.0
    partitions: tuple[Partition, ...] = ()
    traffic: Traffic = "steady"
    seed: int = 0
    timing: SyncTiming = field(default_factory=SyncTiming)
    start: float = 1000.0
    regions: int = 1
    region_delay: float = 0.0

    def __post_init__(self) -> None:
        positive_int("nodes", self.nodes)
        positive_int("regions", self.regions)
        positive_int("users", self.users)
        BucketPolicy(self.rate, self.burst)
        positive_rate("rps", self.rps)
        positive_rate("seconds", self.seconds)
        positive_rate("flush", self.flush)
        for name in ("delay", "jitter", "region_delay"):
            value = getattr(self, name)
            if not value >= 0:
                raise InvalidParameter(f"{name} must be >= 0, got {value!r}")
        if not 0 <= self.duplicate <= 1:
            raise InvalidParameter(f"duplicate must be a probability, got {self.duplicate!r}")
        if self.traffic not in TRAFFIC:
            raise InvalidParameter(f"traffic must be one of {TRAFFIC}, got {self.traffic!r}")

    @property
    def writers(self) -> int:
        """Every deciding node of every region."""
        return self.nodes * self.regions

    @property
    def sync_delay(self) -> float:
        """Worst time from an admission to its delta being merged by a same-region peer."""
        return self.flush + self.delay + self.jitter

    @property
    def region_sync_delay(self) -> float:
        """Worst time from an admission to its delta being merged by every peer."""
        return self.sync_delay + (self.region_delay if self.regions > 1 else 0.0)

    def region_of(self, node: int) -> int:
        """The region of writer `node` (regions hold consecutive writers)."""
        return node // self.nodes

    def interval_bound(self) -> float:
        """The most A(s,t] - r(t-s) may reach for one user (crdt.bounds)."""
        return interval_excess_bound(
            self.burst, self.rate, self.nodes, self.sync_delay, self.regions, self.region_delay
        )

    def bound(self) -> float:
        """Over-admission bound per user over the whole run (DESIGN.md section 3)."""
        return admission_bound(
            self.burst,
            self.rate,
            self.seconds,
            self.nodes,
            self.sync_delay,
            self.regions,
            self.region_delay,
        )


@dataclass(slots=True)
class SimResult:
    """What a run admitted, next to what a single ideal bucket would have."""

    config: SimConfig
    requests: int
    admitted: int
    ideal: int
    per_node: list[int]
    admissions: dict[str, list[tuple[float, int]]]
    max_excess: float
    converged: bool
    stores: list[BucketStore]

    @property
    def accuracy(self) -> float:
        """admitted / ideal (1.0 is a perfect single bucket)."""
        return self.admitted / self.ideal if self.ideal else 1.0

    @property
    def per_region(self) -> list[int]:
        """Admissions of each region's writers."""
        out = [0] * self.config.regions
        for node, admitted in enumerate(self.per_node):
            out[self.config.region_of(node)] += admitted
        return out

    @property
    def bound_total(self) -> float:
        """The bound summed over users."""
        return self.config.bound() * self.config.users


def _arrivals(cfg: SimConfig, rng: random.Random) -> list[tuple[float, int, int]]:
    """(time offset, node, user) for every request of the run."""
    out: list[tuple[float, int, int]] = []
    writers = cfg.writers
    if cfg.traffic == "steady":
        count = int(cfg.rps * cfg.seconds)
        for k in range(count):
            out.append((k / cfg.rps, k % writers, k % cfg.users))
    elif cfg.traffic == "poisson":
        t = rng.expovariate(cfg.rps)
        while t < cfg.seconds:
            out.append((t, rng.randrange(writers), rng.randrange(cfg.users)))
            t += rng.expovariate(cfg.rps)
    elif cfg.traffic == "bursty":  # 0.5 s at 4x the rate, then 1.5 s of silence
        k = 0
        t = 0.0
        while t < cfg.seconds:
            if t % 2.0 < 0.5:
                out.append((t, k % writers, rng.randrange(cfg.users)))
                k += 1
            t += 1.0 / (4 * cfg.rps) if t % 2.0 < 0.5 else 1.5
    else:
        out = _adversarial(cfg)
    return out


def _adversarial(cfg: SimConfig) -> list[tuple[float, int, int]]:
    """The load that comes closest to the bound (crdt.bounds); the same for every user,
    and it ignores rps.

    For D = region_delay (0 with one region): one node per region admits at exactly r,
    which keeps every view full while no region sees another's; then at D every node
    bursts for the local sync delay d: C requests at once, then one every 1/(8r). With
    several nodes per region the stream stops d before the bursts, else its last d would
    reach the region's other nodes during their bursts and take their refill. Over
    (0, D + d] that admits the bound less R*r*min(d, D) with N >= 2 (less nothing with
    N = 1), less the simulator's discreteness (under a token and r*flush per node).
    """
    d = cfg.sync_delay
    burst_at = cfg.region_delay if cfg.regions > 1 else 0.0
    stream_end = burst_at if cfg.nodes == 1 else max(0.0, burst_at - d)
    times: list[tuple[float, int]] = []
    k = 0
    while k / cfg.rate < stream_end:
        times.extend((k / cfg.rate, region * cfg.nodes) for region in range(cfg.regions))
        k += 1
    step = 1 / (8 * cfg.rate)
    for node in range(cfg.writers):
        times.extend((burst_at, node) for _ in range(cfg.burst))
        k = 1
        while k * step <= d:
            times.append((burst_at + k * step, node))
            k += 1
    times.sort()
    return [(t, node, user) for t, node in times if t < cfg.seconds for user in range(cfg.users)]


def _cut(cfg: SimConfig, a: int, b: int, t: float) -> float | None:
    """End of the partition separating a and b at offset t, if any."""
    for p in cfg.partitions:
        if p.start <= t < p.end and ((a in p.group) != (b in p.group)):
            return p.end
    return None


class _Run:
    """The event loop of one simulated run."""

    REQUEST, FLUSH, DELIVER = 0, 1, 2

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.events: list[tuple[float, int, int, int, object]] = []
        self.seq = 0
        # Kafka keeps one writer's records for a key in order (one partition), so each
        # sender -> receiver channel is FIFO; only duplicates (re-reads) come out of order.
        self.channel_clock: dict[tuple[int, int], float] = {}

    def push(self, t: float, kind: int, node: int, payload: object = None) -> None:
        heapq.heappush(self.events, (t, self.seq, kind, node, payload))
        self.seq += 1

    def send(self, node: int, delta: Delta, t: float) -> None:
        cfg, rng = self.cfg, self.rng
        for peer in range(cfg.writers):
            if peer == node:
                continue
            healed = _cut(cfg, node, peer, t - cfg.start)
            sent = cfg.start + healed if healed is not None else t
            if cfg.region_of(peer) != cfg.region_of(node):
                sent += cfg.region_delay
            at = sent + cfg.delay + rng.uniform(0, cfg.jitter)
            at = max(at, self.channel_clock.get((node, peer), at))
            self.channel_clock[(node, peer)] = at
            self.push(at, self.DELIVER, peer, delta)
            if cfg.duplicate and rng.random() < cfg.duplicate:
                again = at + rng.uniform(0, cfg.jitter + cfg.delay + cfg.flush)
                self.push(again, self.DELIVER, peer, delta)


def simulate(cfg: SimConfig) -> SimResult:
    """Run the cluster; deterministic for a given config (seed included)."""
    run = _Run(cfg)
    policy = BucketPolicy(cfg.rate, cfg.burst)
    stores = [BucketStore(policy, f"n{i}/sim", cfg.timing) for i in range(cfg.writers)]
    ideal = [ReferenceBucket(policy, cfg.start) for _ in range(cfg.users)]
    arrivals = _arrivals(cfg, run.rng)
    for t, node, user in arrivals:
        run.push(cfg.start + t, run.REQUEST, node, user)
    for i in range(cfg.writers):
        run.push(cfg.start + cfg.flush * (i + 1) / cfg.writers, run.FLUSH, i)
    end = cfg.start + cfg.seconds
    last_heal = max((p.end for p in cfg.partitions), default=0.0)
    per_node = [0] * cfg.writers
    admissions: dict[str, list[tuple[float, int]]] = {f"u{u}": [] for u in range(cfg.users)}
    ideal_admitted = 0
    while run.events:
        t, _, kind, node, payload = heapq.heappop(run.events)
        if kind == run.REQUEST:
            assert isinstance(payload, int)
            key = f"u{payload}"
            if stores[node].acquire(key, 1, t) >= 0:
                per_node[node] += 1
                admissions[key].append((t, 1))
            ideal_admitted += ideal[payload].acquire(1, t)
        elif kind == run.FLUSH:
            for delta in stores[node].flush(t):
                run.send(node, delta, t)
            if t < max(end, cfg.start + last_heal) + cfg.timing.seal_after:
                run.push(t + cfg.flush, run.FLUSH, node)
            stores[node].sweep(t, budget=1000)
        else:
            assert isinstance(payload, Delta)
            stores[node].apply(payload, t)
    final = max(end, cfg.start + last_heal) + cfg.timing.seal_after + cfg.region_sync_delay
    # A TAT at or before `final` means a full bucket, however it is represented
    # (a deleted idle key reads as -inf).
    tats = {
        key: [max(s.view(key, final).tat, final) for s in stores]
        for key in admissions
        if admissions[key]
    }
    converged = all(max(v) - min(v) <= 1e-6 for v in tats.values())
    excess = max((max_interval_excess(a, cfg.rate) for a in admissions.values() if a), default=0.0)
    return SimResult(
        cfg,
        len(arrivals),
        sum(per_node),
        ideal_admitted,
        per_node,
        admissions,
        excess,
        converged,
        stores,
    )
