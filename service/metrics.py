"""Prometheus metrics of one node, in a registry of its own (several nodes per process in tests)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("ratelimiter.metrics")

_DECISION_BUCKETS = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
)
_LOOP_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
)
LOOP_PROBE_S = 0.02  # how often the event-loop lag probe schedules its timer
_LAG_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every metric a node exports; `render()` is the /metrics body."""

    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decision_seconds = Histogram(
            "ratelimiter_decision_seconds",
            "Time to decide one request, sampled (1 in `sample` requests)",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
        self.sync_lag = Histogram(
            "ratelimiter_sync_lag_seconds",
            "From admission on a peer (its previous flush) to merged here",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.region_delivery = Histogram(
            "ratelimiter_region_delivery_seconds",
            "From a remote region's broker stamping a record to merged here (its mirror's "
            "delay and both clocks' offset), per fetch's newest record",
            ["region"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "ratelimiter_event_loop_lag_seconds",
            "How late a timer fires on the event loop: the wait of work that became ready",
            buckets=_LOOP_BUCKETS,
            registry=r,
        )
        self.records_produced = Counter(
            "ratelimiter_records_produced",
            "Records published to the state topic",
            ["kind"],
            registry=r,
        )
        self.records_consumed = Counter(
            "ratelimiter_records_consumed", "Records read from the state topic", registry=r
        )
        self.deltas_applied = Counter(
            "ratelimiter_deltas_applied", "Peer key deltas merged", registry=r
        )
        self.poison = Counter(
            "ratelimiter_poison_records",
            "Records skipped as unusable, by kind",
            ["kind"],
            registry=r,
        )
        self.publish_failures = Counter(
            "ratelimiter_publish_failures", "Flushes the broker did not acknowledge", registry=r
        )
        self.outbox_compactions = Counter(
            "ratelimiter_outbox_compactions",
            "Times unacknowledged batch records were re-encoded from the merged pending keys",
            registry=r,
        )
        self.buffered = Gauge(
            "ratelimiter_buffered_deltas",
            "Keys admitted here and not yet acknowledged by Kafka",
            registry=r,
        )
        self.buffer_limit = Gauge(
            "ratelimiter_buffered_deltas_limit", "Most keys buffered before folding", registry=r
        )
        self.bootstrap_seconds = Gauge(
            "ratelimiter_bootstrap_seconds",
            "Time to read the state topic to its end at start",
            registry=r,
        )
        self.bootstrap_records = Gauge(
            "ratelimiter_bootstrap_records", "Records read during bootstrap", registry=r
        )
        self.bootstrap_keys_loaded = Gauge(
            "ratelimiter_bootstrap_keys_loaded",
            "Keys loaded at start from the snapshot file (--state-dir) or a peer "
            "(--bootstrap-from) before reading the topic from the offsets they cover",
            ["source"],
            registry=r,
        )
        self.handoffs = Counter(
            "ratelimiter_bootstrap_handoffs",
            "Peers asked for their state at start (--bootstrap-from), by outcome: loaded, "
            "refused (nothing loaded: the next peer is asked), cut (keys loaded, then the "
            "stream failed: the whole topic is read)",
            ["outcome"],
            registry=r,
        )
        self.ready = Gauge("ratelimiter_ready", "1 while /readyz answers 200", registry=r)
        self.clock_offset = Gauge(
            "ratelimiter_clock_offset_seconds",
            "Broker time minus this node's own clock, from publish round trips (NaN before one)",
            registry=r,
        )
        self.clock_correction = Gauge(
            "ratelimiter_clock_correction_seconds",
            "Added to this node's own clock to keep it on the broker's (--clock-mode correct)",
            registry=r,
        )
        self.clock_uncertainty = Gauge(
            "ratelimiter_clock_uncertainty_seconds",
            "How far the offset measured can be off (half the tightest recent round trip)",
            registry=r,
        )
        self.broker_up = Gauge(
            "ratelimiter_broker_up", "1 while the last publish or fetch succeeded", registry=r
        )
        self.info = Gauge(
            "ratelimiter_node_info", "Node identity", ["node_id", "replica"], registry=r
        )
        self._node_id = node_id
        self._logged_poison: set[str] = set()

    def watch(
        self,
        name: str,
        read: Callable[[], Mapping[tuple[str, ...], float]],
        help_text: str,
        labels: tuple[str, ...] = ("kind",),
    ) -> None:
        """Export values computed at scrape time (decisions, tracked keys, evictions, ...).

        Hot-path counts are plain integers read here: cheaper than a locked Counter.inc().
        """
        self.registry.register(_Callback(name, read, help_text, labels))

    def poison_record(self, kind: str, message: str) -> None:
        """Count a skipped record; log the first of each kind."""
        self.poison.labels(kind).inc()
        if kind not in self._logged_poison:
            self._logged_poison.add(kind)
            log.warning(
                "skipping poison record (%s): %s; further ones are only counted", kind, message
            )

    async def probe_loop_lag(self, interval_s: float = LOOP_PROBE_S) -> None:
        """Observe forever how late a timer of `interval_s` fires (run it as a task).

        A request that arrives while the loop runs other work waits as long; uvloop's
        timers have a resolution of 1 ms, so lags below it are rounding.
        """
        while True:
            expected = time.perf_counter() + interval_s
            await asyncio.sleep(interval_s)
            self.loop_lag.observe(max(0.0, time.perf_counter() - expected))

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class _Callback(Collector):
    def __init__(
        self,
        name: str,
        read: Callable[[], Mapping[tuple[str, ...], float]],
        help_text: str,
        labels: tuple[str, ...],
    ) -> None:
        self._name = name
        self._read = read
        self._help = help_text
        self._labels = list(labels)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        family: CounterMetricFamily | GaugeMetricFamily
        if self._name.endswith("_total"):
            family = CounterMetricFamily(
                self._name[: -len("_total")], self._help, labels=self._labels
            )
        else:
            family = GaugeMetricFamily(self._name, self._help, labels=self._labels)
        for label_values, value in self._read().items():
            family.add_metric(list(label_values), value)
        yield family


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of cumulative buckets (upper bound `le` -> count); None when empty.

    Linear inside the bucket holding the rank; the highest finite bound for the +Inf one.
    """
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    rank = q * items[-1][1]
    lower, below = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower
