"""The swarm runner: a broker and N nodes, a headless Locust swarm, metrics scraped, a report.

`run_swarm(config)` starts what is missing (the local KRaft broker, N `ratelimiter serve`
processes on a fresh topic), runs Locust as a subprocess against every node, scrapes each
node's /metrics once a second, optionally adds a node mid-swarm, stops what it started and
writes the report folder (stress_test.swarm_report).

Regions: with `region_nodes` the swarm drives nodes that already run in their regions
(each region's nodes on its own Kafka cluster, mirrored), starting nothing; with
`regions` > 1 and no URLs it starts R groups of N nodes on ONE broker and ONE topic, a
rehearsal of the regional swarm where the mirror adds nothing (D about 0). Either way a
lag probe measures d and D for the regional bound (stress_test.region_probe).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.errors import RateLimiterError
from service.local.broker import DEFAULT_PORT, LocalBroker, default_data_dir
from service.local.nodes import NodeProcess
from service.local.process import free_port, tail
from stress_test.region_probe import LagProbe, Target, node_identity
from stress_test.swarm_data import SwarmRun
from stress_test.swarm_regions import region_names
from stress_test.swarm_report import write_report
from stress_test.swarm_scrape import Scraper

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


class SwarmUsage(SwarmFailed):
    """Flags that do not go together, or a malformed region spec."""

    exit_code = 2


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
    # Regions: running nodes per region (name, base URLs), or R groups started on one topic.
    region_nodes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    regions: int = 1
    sync_delay_ms: float | None = None  # the bound's d; default: the lag probe's
    region_delay_ms: float | None = None  # the bound's D; default: the lag probe's
    probe_s: float = 1.0

    @property
    def regional(self) -> bool:
        """Whether the swarm spreads users over regions."""
        return bool(self.region_nodes) or self.regions > 1


@dataclass(frozen=True, slots=True)
class ExternalNode:
    """A node the swarm did not start: its id (from GET /v1/keys) and base URL."""

    node_id: str
    url: str


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

    def add(self, count: int, region: str | None = None) -> list[NodeProcess]:
        """Start `count` more nodes (in `region`: ids `<region>-<k>`); once all are ready,
        scrape them and send them traffic."""
        first = 1 + (
            sum(1 for n in self.nodes if n.node_id.startswith(f"{region}-"))
            if region
            else len(self.nodes)
        )
        new = [
            NodeProcess(
                f"{region or 'swarm'}-{first + i}",
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
        prefix = f"{region} " if region else ""
        with self.hosts_file.open("a") as hosts:
            hosts.writelines(f"{prefix}{node.url}\n" for node in new)
        for node in new:
            self.scraper.add(node)
        return new

    def stop(self) -> None:
        """SIGTERM every node (each flushes what it admitted)."""
        for node in self.nodes:
            node.stop()


REHEARSAL = "one broker, one topic (a rehearsal: no mirror, D about 0)"
MIRRORED = "running regional nodes (--region-nodes)"


def check_config(config: SwarmConfig) -> None:
    """SwarmUsage for combinations the runner does not support."""
    if config.regional and config.scale_out_at is not None:
        raise SwarmUsage("--scale-out-at is not supported with regions")
    if config.region_nodes and config.regions > 1 and config.regions != len(config.region_nodes):
        raise SwarmUsage(
            f"--regions {config.regions} but --region-nodes names {len(config.region_nodes)}"
        )
    if config.regions > 1:
        try:
            region_names(config.regions)
        except ValueError as exc:
            raise SwarmUsage(str(exc)) from exc


def run_swarm(config: SwarmConfig, progress: bool = True) -> Path:
    """Run the swarm end to end and write the report; returns the report folder."""
    say = _printer(progress)
    check_config(config)
    out = (config.out or default_out_dir()).resolve()
    (out / "records").mkdir(parents=True, exist_ok=True)
    command = locust_command(config, out)
    if config.region_nodes:
        return _run_on_running_regions(config, out, command, say)
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
    regions: dict[str, list[str]] | None = None
    try:
        if config.regions > 1:
            say(
                f"starting {config.regions} groups of {config.nodes} nodes on {kafka}, "
                f"all on topic {topic} (a rehearsal of regions: no mirror) ..."
            )
            regions = {
                name: [n.node_id for n in cluster.add(config.nodes, region=name)]
                for name in region_names(config.regions)
            }
        else:
            say(f"starting {config.nodes} nodes on {kafka}, topic {topic} ...")
            cluster.add(config.nodes)
        scraper.start()
        probed: list[Target] = list(cluster.nodes) if regions else []
        started, ended, scale_out, probe = _swarm(
            config, out, command, cluster.hosts_file, cluster, probed, say
        )
    finally:
        scraper.stop()
        cluster.stop()
        if broker is not None and started_broker:
            broker.down()
    run = SwarmRun(
        config=config_dict(config, kafka, topic, regions, REHEARSAL if regions else None),
        started=started,
        ended=ended,
        nodes=[n.node_id for n in cluster.nodes],
        samples=scraper.samples,
        scale_out=scale_out,
        probes=probe.samples if probe else [],
        probe_admissions=probe.admissions if probe else 0,
    )
    write_report(out, run)
    say(f"report: {out / 'summary.md'}")
    return out


def resolve_region_nodes(config: SwarmConfig) -> tuple[list[ExternalNode], dict[str, list[str]]]:
    """Every listed node's id (GET /v1/keys), checked against --burst; SwarmFailed if a node
    does not answer, is listed twice, or runs another capacity."""
    targets: list[ExternalNode] = []
    regions: dict[str, list[str]] = {}
    for name, urls in config.region_nodes:
        for url in urls:
            identity = node_identity(url)
            if identity is None:
                raise SwarmFailed(f"region {name}: {url} does not answer GET /v1/keys")
            node_id, capacity = identity
            if capacity != config.burst:
                raise SwarmFailed(
                    f"region {name}: {node_id} at {url} limits to a burst of {capacity}, "
                    f"the swarm was told --burst {config.burst} (pass the nodes' --rate/--burst)"
                )
            if any(t.node_id == node_id for t in targets):
                raise SwarmFailed(f"node {node_id} is listed twice (at {url})")
            targets.append(ExternalNode(node_id, url))
            regions.setdefault(name, []).append(node_id)
    return targets, regions


def _run_on_running_regions(
    config: SwarmConfig, out: Path, command: list[str], say: Callable[[str], None]
) -> Path:
    """The swarm against nodes already running in their regions; starts no node."""
    targets, regions = resolve_region_nodes(config)
    hosts_file = out / "hosts.txt"
    urls = {t.node_id: t.url for t in targets}
    hosts_file.write_text(
        "".join(f"{name} {urls[node]}\n" for name, nodes in regions.items() for node in nodes)
    )
    scraper = Scraper(config.scrape_s)
    for target in targets:
        scraper.add(target)
    say(f"swarm over {len(regions)} regions: " + "; ".join(
        f"{name} = {', '.join(nodes)}" for name, nodes in regions.items()
    ))  # fmt: skip
    scraper.start()
    try:
        probed: list[Target] = list(targets)
        started, ended, _, probe = _swarm(config, out, command, hosts_file, None, probed, say)
    finally:
        scraper.stop()
    run = SwarmRun(
        config=config_dict(config, "(each region's own)", "(the nodes' own)", regions, MIRRORED),
        started=started,
        ended=ended,
        nodes=[t.node_id for t in targets],
        samples=scraper.samples,
        scale_out=None,
        probes=probe.samples if probe else [],
        probe_admissions=probe.admissions if probe else 0,
    )
    write_report(out, run)
    say(f"report: {out / 'summary.md'}")
    return out


def _swarm(
    config: SwarmConfig,
    out: Path,
    command: list[str],
    hosts_file: Path,
    cluster: Cluster | None,
    probed: list[Target],
    say: Callable[[str], None],
) -> tuple[float, float, tuple[str, float, float] | None, LagProbe | None]:
    """Run Locust over the hosts file until it ends, and the lag probe over `probed` (the
    nodes of every region; none without regions)."""
    env = {
        **os.environ,
        "SWARM_HOSTS_FILE": str(hosts_file),
        "SWARM_RECORD_DIR": str(out / "records"),
        "SWARM_RATE": f"{config.rate:g}",
        "SWARM_BURST": str(config.burst),
    }
    probe = LagProbe(probed, interval_s=config.probe_s) if probed else None
    say(f"swarm: {config.users} users, scenario {config.scenario}, {config.seconds:g}s ...")
    started = time.time()
    scale_out: tuple[str, float, float] | None = None
    try:
        if probe is not None:
            probe.start()
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
    finally:
        if probe is not None:
            probe.stop()
    ended = time.time()
    if locust.returncode != 0:
        raise SwarmFailed(
            f"locust exited with {locust.returncode}:\n" + "\n".join(tail(out / "locust.log", 30))
        )
    return started, ended, scale_out, probe


def _printer(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            print(message, flush=True)

    return say


def _wait_for_locust(
    locust: subprocess.Popen[bytes],
    config: SwarmConfig,
    started: float,
    cluster: Cluster | None,
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
        if due and scale_out is None and cluster is not None:
            say("scale-out: starting one more node ...")
            [node] = cluster.add(1)
            joined = time.time()
            scale_out = (node.node_id, now, joined)
            say(f"scale-out: {node.node_id} ready after {joined - now:.1f}s, now taking traffic")
        time.sleep(0.1)
    return scale_out


def config_dict(
    config: SwarmConfig,
    kafka: str,
    topic: str,
    regions: dict[str, list[str]] | None = None,
    region_mode: str | None = None,
) -> dict[str, object]:
    """The run's parameters as the report prints them (with regions: node ids per region)."""
    regional: dict[str, object] = {}
    if regions:
        regional = {
            "regions": regions,
            "region_mode": region_mode,
            "sync_delay_ms": config.sync_delay_ms,
            "region_delay_ms": config.region_delay_ms,
        }
    return {
        **regional,
        "nodes": sum(len(v) for v in regions.values()) if regions else config.nodes,
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
