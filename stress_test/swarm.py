"""The swarm runner: a broker and N nodes, a headless Locust swarm, metrics scraped, a report.

`run_swarm(config)` starts what is missing (the local KRaft broker, N `ratelimiter serve`
processes on a fresh topic), runs Locust as a subprocess against every node, scrapes each
node's /metrics once a second, optionally adds a node mid-swarm, stops what it started and
writes the report folder (stress_test.swarm_report).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from service.errors import RateLimiterError
from service.local.broker import DEFAULT_PORT, LocalBroker, default_data_dir
from service.local.nodes import NodeProcess
from service.local.process import free_port, tail
from stress_test.swarm_data import NodeSample, SwarmRun
from stress_test.swarm_report import write_report

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
# scenario name -> Locust user class in the locustfile
SCENARIOS: dict[str, str] = {
    "steady": "SteadyUser",
    "bursty": "BurstyUser",
    "many_users": "ManyUsersUser",
    "hot_key": "HotKeyUser",
    "mixed": "MixedUser",
}


class SwarmFailed(RateLimiterError):
    """Locust or a node did not run as expected."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    """What to run: cluster size, load shape, limits, and where the report goes."""

    nodes: int = 3
    users: int = 30
    seconds: float = 20.0
    scenario: str = "steady"
    out: Path | None = None
    kafka: str | None = None
    kafka_port: int = DEFAULT_PORT
    scale_out_at: float | None = None
    rate: float = 10.0
    burst: int = 20
    spawn_rate: float | None = None
    scrape_s: float = 1.0
    partitions: int = 12
    node_args: tuple[str, ...] = ()


@dataclass
class Scraper:
    """Reads every node's /metrics every `interval_s` in a background thread."""

    interval_s: float
    nodes: list[NodeProcess] = field(default_factory=list)
    samples: list[NodeSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def add(self, node: NodeProcess) -> None:
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


def scrape(node: NodeProcess) -> NodeSample | None:
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


def default_out_dir() -> Path:
    """`reports/swarm-<date>-<time>` in the working directory (git-ignored)."""
    return Path("reports") / time.strftime("swarm-%Y%m%d-%H%M%S")


def locust_command(config: SwarmConfig, out: Path) -> list[str]:
    """The headless Locust run: CSV stats in `out`, only the final summary on stdout."""
    if config.scenario not in SCENARIOS:
        raise SwarmFailed(f"unknown scenario {config.scenario!r}; choose one of {list(SCENARIOS)}")
    spawn_rate = config.spawn_rate or max(1.0, float(config.users))
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(config.users), "-r", f"{spawn_rate:g}", "-t", f"{config.seconds:g}s",
        "--csv", str(out / "locust"), "--only-summary", "--stop-timeout", "2",
        "--exit-code-on-error", "0", "--loglevel", "WARNING",
        SCENARIOS[config.scenario],
    ]  # fmt: skip


class Cluster:
    """The swarm's node processes on one topic, and the hosts file Locust balances over."""

    def __init__(self, kafka: str, node_args: list[str], out: Path, scraper: Scraper) -> None:
        self.kafka = kafka
        self.node_args = node_args
        self.out = out
        self.scraper = scraper
        self.hosts_file = out / "hosts.txt"
        self.hosts_file.write_text("")
        self.nodes: list[NodeProcess] = []

    def add(self, count: int) -> list[NodeProcess]:
        """Start `count` more nodes; once all are ready, scrape them and send them traffic."""
        new = [
            NodeProcess(
                f"swarm-{len(self.nodes) + i + 1}",
                free_port(),
                self.kafka,
                self.node_args,
                self.out / "logs",
            )
            for i in range(count)
        ]
        self.nodes.extend(new)
        for node in new:
            node.start()
        for node in new:
            node.wait_ready(120)
        with self.hosts_file.open("a") as hosts:
            hosts.writelines(f"{node.url}\n" for node in new)
        for node in new:
            self.scraper.add(node)
        return new

    def stop(self) -> None:
        """SIGTERM every node (each flushes what it admitted)."""
        for node in self.nodes:
            node.stop()


def run_swarm(config: SwarmConfig, progress: bool = True) -> Path:
    """Run the swarm end to end and write the report; returns the report folder."""
    say = _printer(progress)
    out = (config.out or default_out_dir()).resolve()
    (out / "records").mkdir(parents=True, exist_ok=True)
    command = locust_command(config, out)
    broker: LocalBroker | None = None
    started_broker = False
    if config.kafka is None:
        broker = LocalBroker(port=config.kafka_port, data_dir=default_data_dir())
        started_broker = not broker.status().running
        say("starting the local Kafka broker ..." if started_broker else "reusing the broker")
        kafka = broker.up()
    else:
        kafka = config.kafka
    topic = f"swarm.{uuid.uuid4().hex[:12]}"
    node_args = [
        "--topic", topic, "--partitions", str(config.partitions),
        "--rate", f"{config.rate:g}", "--burst", str(config.burst),
        "--log-level", "warning", *config.node_args,
    ]  # fmt: skip
    scraper = Scraper(config.scrape_s)
    cluster = Cluster(kafka, node_args, out, scraper)
    scale_out: tuple[str, float, float] | None = None
    try:
        say(f"starting {config.nodes} nodes on {kafka}, topic {topic} ...")
        cluster.add(config.nodes)
        scraper.start()
        env = {
            **os.environ,
            "SWARM_HOSTS_FILE": str(cluster.hosts_file),
            "SWARM_RECORD_DIR": str(out / "records"),
            "SWARM_RATE": f"{config.rate:g}",
            "SWARM_BURST": str(config.burst),
        }
        say(f"swarm: {config.users} users, scenario {config.scenario}, {config.seconds:g}s ...")
        started = time.time()
        with (out / "locust.log").open("wb") as log:
            locust = subprocess.Popen(
                command, cwd=out, stdout=log, stderr=subprocess.STDOUT, env=env
            )
            try:
                scale_out = _wait_for_locust(locust, config, started, cluster, say)
            finally:
                if locust.poll() is None:
                    locust.kill()
                    locust.wait(timeout=10)
        ended = time.time()
        if locust.returncode != 0:
            raise SwarmFailed(
                f"locust exited with {locust.returncode}:\n"
                + "\n".join(tail(out / "locust.log", 30))
            )
    finally:
        scraper.stop()
        cluster.stop()
        if broker is not None and started_broker:
            broker.down()
    run = SwarmRun(
        config=config_dict(config, kafka, topic),
        started=started,
        ended=ended,
        nodes=[n.node_id for n in cluster.nodes],
        samples=scraper.samples,
        scale_out=scale_out,
    )
    write_report(out, run)
    say(f"report: {out / 'summary.md'}")
    return out


def _printer(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            print(message, flush=True)

    return say


def _wait_for_locust(
    locust: subprocess.Popen[bytes],
    config: SwarmConfig,
    started: float,
    cluster: Cluster,
    say: Callable[[str], None],
) -> tuple[str, float, float] | None:
    """Wait for Locust to finish, scaling out on time; (node id, asked at, joined at)."""
    deadline = started + config.seconds + 120
    scale_out: tuple[str, float, float] | None = None
    while locust.poll() is None:
        now = time.time()
        if now > deadline:
            raise SwarmFailed(f"locust still running {config.seconds + 120:g}s after its start")
        due = config.scale_out_at is not None and now - started >= config.scale_out_at
        if due and scale_out is None:
            say("scale-out: starting one more node ...")
            [node] = cluster.add(1)
            joined = time.time()
            scale_out = (node.node_id, now, joined)
            say(f"scale-out: {node.node_id} ready after {joined - now:.1f}s, now taking traffic")
        time.sleep(0.1)
    return scale_out


def config_dict(config: SwarmConfig, kafka: str, topic: str) -> dict[str, object]:
    """The run's parameters as the report prints them."""
    return {
        "nodes": config.nodes,
        "users": config.users,
        "seconds": config.seconds,
        "scenario": config.scenario,
        "rate": config.rate,
        "burst": config.burst,
        "kafka": kafka,
        "topic": topic,
        "partitions": config.partitions,
        "scale_out_at": config.scale_out_at,
        "node_args": list(config.node_args),
    }
