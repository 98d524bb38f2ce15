"""The swarm's metrics scraper: every node's /metrics once a second, parsed to NodeSamples."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from stress_test.region_probe import Target
from stress_test.swarm_data import NodeSample


@dataclass
class Scraper:
    """Reads every node's /metrics every `interval_s` in a background thread."""

    interval_s: float
    nodes: list[Target] = field(default_factory=list)
    samples: list[NodeSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def add(self, node: Target) -> None:
        """Scrape `node` from the next round on."""
        with self._lock:
            self.nodes.append(node)

    def start(self) -> None:
        """Scrape once now, then every interval until stop()."""
        self._thread = threading.Thread(target=self._loop, name="scraper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then take one last round."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.scrape_all()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.scrape_all()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def scrape_all(self) -> None:
        """One round over every node (a node that does not answer is skipped)."""
        with self._lock:
            nodes = list(self.nodes)
        for node in nodes:
            sample = scrape(node)
            if sample is not None:
                with self._lock:
                    self.samples.append(sample)


def scrape(node: Target) -> NodeSample | None:
    """One node's decisions, sync-lag histogram, tracked keys and poison records, now."""
    try:
        with urllib.request.urlopen(f"{node.url}/metrics", timeout=2) as response:  # noqa: S310
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    return parse_metrics(node.node_id, time.time(), text)


def parse_metrics(node_id: str, at: float, text: str) -> NodeSample:
    """The figures the report needs from one Prometheus exposition."""
    admitted = denied = tracked = poison = 0.0
    lag_buckets: dict[float, float] = {}
    lag_sum = lag_count = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "ratelimiter_decisions_total":
                if s.labels.get("outcome") == "admitted":
                    admitted += s.value
                elif s.labels.get("outcome") == "denied":
                    denied += s.value
            elif s.name == "ratelimiter_sync_lag_seconds_bucket":
                le = float(s.labels["le"])
                lag_buckets[le] = lag_buckets.get(le, 0.0) + s.value
            elif s.name == "ratelimiter_sync_lag_seconds_sum":
                lag_sum = s.value
            elif s.name == "ratelimiter_sync_lag_seconds_count":
                lag_count = s.value
            elif s.name == "ratelimiter_tracked_keys":
                tracked += s.value
            elif s.name == "ratelimiter_poison_records_total":
                poison += s.value
    return NodeSample(
        node_id, at, admitted, denied, lag_buckets, lag_sum, lag_count, tracked, poison
    )
