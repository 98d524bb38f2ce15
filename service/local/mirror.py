"""A local MirrorMaker 2 process (dedicated mode, Maven Central jars): mirror, stop, status.

It mirrors the state and rules topics of every region's cluster to every other one under
MirrorMaker's default names (`<source>.ratelimiter.state`), which also keeps records from
going round in circles. Records keep their source timestamps: the mirrored topics are
created without the source's `message.timestamp.type` (LogAppendTime), so a node reads
the source broker's append time and can tell how old a remote region's news is.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from service.errors import BrokerError
from service.local import jars, process
from service.local.broker import broker_answers, run_sync
from service.local.daemon import JavaDaemon
from service.local.jars import Progress

MAIN_CLASS = "org.apache.kafka.connect.mirror.MirrorMaker"
STARTED_LINE = "Kafka MirrorMaker started"  # logged once every herder runs
FAILED_LINE = "ERROR Failed to configure"  # a connector refused its configuration
DEFAULT_TOPICS = r"ratelimiter\.state|ratelimiter\.rules"
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a region name: no '.', the policy's separator
# Never synced to a mirrored topic: MirrorMaker's defaults, message.timestamp.type among
# them (named here so a changed default cannot make the target restamp our records).
CONFIG_EXCLUDE = (
    r"follower\.replication\.throttled\.replicas, leader\.replication\.throttled\.replicas, "
    r"message\.timestamp\.difference\.max\.ms, message\.timestamp\.type, "
    r"message\.timestamp\.(before|after)\.max\.ms, unclean\.leader\.election\.enable, "
    r"min\.insync\.replicas"
)


def parse_clusters(text: str) -> dict[str, str]:
    """`a=127.0.0.1:9092,b=127.0.0.1:9093` as {alias: bootstrap}; BrokerError when malformed."""
    clusters: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        alias, sep, address = part.partition("=")
        if not sep or not _ALIAS.match(alias) or not re.match(r"^[^\s=]+:\d{1,5}$", address):
            raise BrokerError(
                f"bad cluster {part!r}: use REGION=HOST:PORT (region: letters, digits, '_', '-')"
            )
        if alias in clusters:
            raise BrokerError(f"cluster {alias!r} is named twice")
        clusters[alias] = address
    if len(clusters) < 2:
        raise BrokerError("MirrorMaker needs at least two clusters (REGION=HOST:PORT,...)")
    return clusters


def mm2_properties(clusters: Mapping[str, str], topics: str, refresh_s: int) -> dict[str, str]:
    """MirrorMaker 2's configuration: every cluster mirrored to every other one."""
    settings = {"clusters": ", ".join(clusters)}
    for alias, address in clusters.items():
        settings[f"{alias}.bootstrap.servers"] = address
        # Worker settings of the Connect herder writing to this cluster (MirrorMaker hands
        # a herder only its target's `<alias>.` settings, not the top-level ones).
        # Kafka's own connectors have ServiceLoader manifests: no classpath scan by
        # reflection (6 s per herder on two busy cores).
        settings[f"{alias}.plugin.discovery"] = "service_load"
        # One process: tasks of a worker that left are reassigned at once, not held for
        # its return (5 minutes by default).
        settings[f"{alias}.scheduled.rebalance.max.delay.ms"] = "0"
    for source in clusters:
        for target in clusters:
            if source != target:
                settings[f"{source}->{target}.enabled"] = "true"
    settings.update(
        {
            "topics": topics,
            # Nodes read without consumer groups: no offsets to translate. (Turning the
            # checkpoint connector off instead makes MirrorMaker log it as an error.)
            "groups.exclude": ".*",
            # Freshness comes from the nodes' own records (they write at least once a
            # --region-heartbeat-s); MirrorMaker's heartbeats would prove only itself.
            "emit.heartbeats.enabled": "false",
            "sync.topic.acls.enabled": "false",
            "config.properties.exclude": CONFIG_EXCLUDE,
            "refresh.topics.interval.seconds": str(refresh_s),
            "sync.topic.configs.interval.seconds": "60",
            "plugin.discovery": "service_load",  # for MirrorMaker's own plugin lookups
            # Single-broker clusters: every topic MirrorMaker creates has one replica.
            "replication.factor": "1",
            "checkpoints.topic.replication.factor": "1",
            "heartbeats.topic.replication.factor": "1",
            "offset-syncs.topic.replication.factor": "1",
            "offset.storage.replication.factor": "1",
            "status.storage.replication.factor": "1",
            "config.storage.replication.factor": "1",
        }
    )
    return settings


@dataclass(frozen=True, slots=True)
class MirrorStatus:
    """Whether the mirror of a data dir runs, its pid and the clusters it mirrors."""

    running: bool
    pid: int | None
    clusters: dict[str, str]
    data_dir: Path


class LocalMirror(JavaDaemon):
    """One MirrorMaker 2 process mirroring every cluster to every other, owning one data
    dir. It runs detached (own session, output to `mirror.out`), so it outlives the process
    that started it; `down()` works from any process."""

    what = "MirrorMaker"

    def __init__(
        self,
        clusters: Mapping[str, str],
        data_dir: Path,
        *,
        jars_dir: Path | None = None,
        topics: str = DEFAULT_TOPICS,
        refresh_s: int = 2,
        heap: str = "384m",
        start_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(
            data_dir,
            jars_dir or jars.default_mirror_jars_dir(),
            "mirror",
            heap=heap,
            stop_timeout=stop_timeout,
            progress=progress,
        )
        self.clusters = dict(clusters)
        self.topics = topics
        self.refresh_s = refresh_s
        self.start_timeout = start_timeout
        self.properties = self.data_dir / "mm2.properties"

    def fetch_jars(self) -> Path:
        """Fetch MirrorMaker's jars with Maven unless the cache is already complete."""
        return jars.fetch_jars(
            self.jars_dir, pom=jars.MIRROR_POM, progress=self._progress, what="MirrorMaker"
        )

    def running_pid(self) -> int | None:
        return self.status().pid

    def status(self) -> MirrorStatus:
        """Whether this data dir's MirrorMaker runs (by its pid file), and what it mirrors."""
        pid = process.read_pid(self.pid_file)
        if pid is not None and process.runs_command(pid, [MAIN_CLASS, str(self.properties)]):
            return MirrorStatus(True, pid, self._running_clusters(), self.data_dir)
        return MirrorStatus(False, None, self.clusters, self.data_dir)

    def up(self) -> str:
        """Start MirrorMaker unless it runs; return what it mirrors once it has started."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with jars.file_lock(self.data_dir / ".lock"):
            current = self.status()
            if current.running:
                if current.clusters != self.clusters:
                    raise BrokerError(
                        f"the mirror of {self.data_dir} already runs (pid {current.pid}) for "
                        f"{_describe(current.clusters)}; run `ratelimiter kafka mirror down` "
                        "before changing its clusters"
                    )
                return _describe(self.clusters)
            self.pid_file.unlink(missing_ok=True)
            java = process.require_java()
            self._require_clusters()
            self.fetch_jars()
            self._write_properties()
            pid, log_from = self._spawn(java)
            try:
                self._wait_started(pid, log_from)
            except BaseException:
                process.terminate_group(pid, 5.0, self.what)
                self.pid_file.unlink(missing_ok=True)
                raise
            return _describe(self.clusters)

    def _require_clusters(self) -> None:
        for alias, address in self.clusters.items():
            if not run_sync(partial(broker_answers, address, wait_s=5.0)):
                raise BrokerError(
                    f"cluster {alias!r} at {address} does not answer; start its broker first "
                    f"(`ratelimiter kafka up --port {address.rpartition(':')[2]} --data-dir ...`)"
                )

    def _running_clusters(self) -> dict[str, str]:
        """The clusters named in mm2.properties when the running mirror started."""
        try:
            text = self.properties.read_text()
        except OSError:
            return self.clusters
        found = dict(re.findall(r"^([A-Za-z0-9_-]+)\.bootstrap\.servers=(.+)$", text, re.M))
        return found or self.clusters

    def _write_properties(self) -> None:
        settings = mm2_properties(self.clusters, self.topics, self.refresh_s)
        body = "".join(f"{key}={value}\n" for key, value in settings.items())
        header = "# Written by `ratelimiter kafka mirror up` on every start.\n"
        self.properties.write_text(header + body)

    def _spawn(self, java: str) -> tuple[int, int]:
        """Start MirrorMaker detached; returns its pid and where its log starts this time."""
        self._say(f"starting MirrorMaker {jars.kafka_version()} for {_describe(self.clusters)} ...")
        self.server_log.parent.mkdir(parents=True, exist_ok=True)
        log_from = self.server_log.stat().st_size if self.server_log.exists() else 0
        pid = self.spawn([*self.java_args(java), MAIN_CLASS, str(self.properties)])
        return pid, log_from

    def _wait_started(self, pid: int, log_from: int) -> None:
        """Return once the log says every herder started; raise if it dies or times out."""
        deadline = time.monotonic() + self.start_timeout
        while STARTED_LINE not in (logged := self._log_since(log_from)):
            if FAILED_LINE in logged:
                raise BrokerError(
                    f"MirrorMaker refused its configuration; its log ends:\n{self.log_tail()}"
                )
            if not process.pid_alive(pid):
                raise BrokerError(
                    f"MirrorMaker exited during startup; its log ends:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"MirrorMaker did not start within {self.start_timeout:g}s; its log ends:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(process.POLL_S)

    def _log_since(self, offset: int) -> str:
        try:
            with self.server_log.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""


def _describe(clusters: Mapping[str, str]) -> str:
    return " <-> ".join(f"{alias} ({address})" for alias, address in clusters.items())
