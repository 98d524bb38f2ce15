"""A local single-node KRaft Kafka broker (Maven Central jars, no Docker): up, down, status."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from service.errors import BrokerError
from service.local import jars, process
from service.local.daemon import JavaDaemon
from service.local.jars import Progress
from service.local.process import LOOPBACK

DEFAULT_PORT = 9092
POLL_S = 0.2  # readiness and shutdown polling period

T = TypeVar("T")


def default_data_dir() -> Path:
    """`.kafka/` at the repository root of the working directory (git-ignored)."""
    return jars.repo_root() / ".kafka"


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    """Whether the broker of a data dir runs, where it listens and its pid."""

    running: bool
    address: str
    pid: int | None
    data_dir: Path


class LocalBroker(JavaDaemon):
    """One single-node KRaft broker (combined broker + controller) owning one data dir.

    The broker runs detached (own session, output to `broker.out` in the data dir), so
    it outlives the process that started it; `down()` works from any process.
    """

    what = "the broker"

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        data_dir: Path | None = None,
        *,
        jars_dir: Path | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        start_timeout: float = 90.0,
        stop_timeout: float = 30.0,
        progress: Progress | None = None,
        extra_listeners: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(
            data_dir or default_data_dir(),
            jars_dir or jars.default_jars_dir(),
            "broker",
            heap=heap,
            stop_timeout=stop_timeout,
            progress=progress,
        )
        self.port = port
        # name -> (port the broker listens on, port it advertises): lets a TCP proxy sit
        # between some clients and the broker (metadata then points at the proxy too).
        self.extra_listeners = dict(extra_listeners or {})
        self.controller_port = controller_port
        self.start_timeout = start_timeout
        self.properties = self.data_dir / "server.properties"
        self._log_dir = self.data_dir / "kraft"

    @property
    def address(self) -> str:
        """The bootstrap address clients use: `127.0.0.1:<port>`."""
        return f"{LOOPBACK}:{self.port}"

    def fetch_jars(self) -> Path:
        """Fetch the broker's jars with Maven unless the cache is already complete."""
        return jars.fetch_jars(self.jars_dir, progress=self._progress)

    def running_pid(self) -> int | None:
        return self.status().pid

    def status(self) -> BrokerStatus:
        """Whether this data dir's broker process runs (by its pid file), with its address."""
        pid = process.read_pid(self.pid_file)
        if pid is not None and process.runs_command(pid, ["kafka.Kafka", str(self.properties)]):
            return BrokerStatus(True, f"{LOOPBACK}:{self._running_port()}", pid, self.data_dir)
        return BrokerStatus(False, self.address, None, self.data_dir)

    def up(self) -> str:
        """Start the broker unless it runs; return its bootstrap address once it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with jars.file_lock(self.data_dir / ".lock"):
            current = self.status()
            if current.running:
                if current.address != self.address:
                    raise BrokerError(
                        f"the broker of {self.data_dir} already runs at {current.address} "
                        f"(pid {current.pid}); run `ratelimiter kafka down` before changing "
                        "its port"
                    )
                # It may still be starting (an `up` killed before it answered): wait for it.
                run_sync(lambda: self._wait_answering(current.pid))
                return self.address
            self.pid_file.unlink(missing_ok=True)
            process.require_port_free(self.port)
            java = process.require_java()
            self.fetch_jars()
            self._write_properties()
            self._format_storage(java)
            pid = self._spawn(java)
            try:
                run_sync(lambda: self._wait_answering(pid))
            except BaseException:
                process.terminate_group(pid, 5.0, self.what)
                self.pid_file.unlink(missing_ok=True)
                raise
            return self.address

    def _running_port(self) -> int:
        """The client port written in server.properties when the running broker started."""
        try:
            text = self.properties.read_text()
        except OSError:
            return self.port
        found = re.search(r"^listeners=PLAINTEXT://[^:]+:(\d+)", text, re.MULTILINE)
        return int(found.group(1)) if found else self.port

    def _write_properties(self) -> None:
        controller = self.controller_port or process.free_port()
        listeners = [f"PLAINTEXT://{LOOPBACK}:{self.port}", f"CONTROLLER://{LOOPBACK}:{controller}"]
        advertised = [f"PLAINTEXT://{LOOPBACK}:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        for name, (listen, advertise) in sorted(self.extra_listeners.items()):
            listeners.append(f"{name}://{LOOPBACK}:{listen}")
            advertised.append(f"{name}://{LOOPBACK}:{advertise}")
            protocols.append(f"{name}:PLAINTEXT")
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # Static voters (kraft.version 0): the controller port may change between runs.
            "controller.quorum.voters": f"1@{LOOPBACK}:{controller}",
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(self._log_dir),
            # One node: every internal topic has a single replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            # A producer must never create the state topic by accident with the wrong config.
            "auto.create.topics.enable": "false",
        }
        body = "".join(f"{key}={value}\n" for key, value in settings.items())
        header = "# Written by `ratelimiter kafka up` on every start.\n"
        self.properties.write_text(header + body)

    def _format_storage(self, java: str) -> None:
        """Format the KRaft log dir once; a formatted dir keeps its cluster id and topics."""
        if (self._log_dir / "meta.properties").is_file():
            return
        self._say(f"formatting KRaft storage in {self._log_dir} ...")
        command = [
            *self.java_args(java),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _new_cluster_id(),
            "-c",
            str(self.properties),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError("formatting the KRaft storage did not finish in 120s") from exc
        if done.returncode != 0:
            output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            raise BrokerError(f"formatting the KRaft storage failed:\n{output}")

    def _spawn(self, java: str) -> int:
        """Start the broker in its own session, output to broker.out; write the pid file."""
        self._say(f"starting Kafka {jars.kafka_version()} on {self.address} ...")
        self.server_log.parent.mkdir(parents=True, exist_ok=True)
        argv = [*self.java_args(java), "kafka.Kafka", str(self.properties)]
        pid = process.spawn_detached(argv, self.output_log)
        self.pid_file.write_text(f"{pid}\n")
        return pid

    async def _wait_answering(self, pid: int | None) -> None:
        """Return once the admin client answers; raise if the process dies or time runs out."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            if pid is not None and not process.pid_alive(pid):
                raise BrokerError(
                    f"the broker exited during startup; its log ends:\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if process.tcp_open(LOOPBACK, self.port) and await broker_answers(
                self.address, wait_s=max(1.0, min(5.0, remaining))
            ):
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"the broker did not answer on {self.address} within {self.start_timeout:g}s; "
                    f"its log ends:\n{self.log_tail()}"
                )
            await asyncio.sleep(POLL_S)


async def broker_answers(address: str, wait_s: float = 5.0) -> bool:
    """Whether a Kafka broker at `address` answers a metadata request naming a broker."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=address, request_timeout_ms=int(wait_s * 1000), client_id="ratelimiter"
    )
    try:
        await asyncio.wait_for(admin.start(), wait_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), wait_s)
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()
    return bool(cluster.get("brokers"))


def _new_cluster_id() -> str:
    """A random Kafka cluster id: 16 bytes, URL-safe base64 without padding, no leading '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even when this thread runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()
