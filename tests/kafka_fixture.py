"""The session's Kafka: $KAFKA_BOOTSTRAP_SERVERS, else testcontainers, else a LocalBroker."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from service.errors import BrokerError
from service.local.broker import LocalBroker
from service.local.jars import MIRROR_SUFFIX, default_cache_root, kafka_version, repo_root
from service.local.process import free_port

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
CONTAINER_IMAGE = "confluentinc/cp-kafka:7.6.0"
REPO_ROOT = repo_root(Path(__file__).parent)


def shared_jars_dir() -> Path:
    """The jar cache every test broker reuses (`$RATELIMITER_KAFKA_HOME` or the repo's)."""
    if os.environ.get("RATELIMITER_KAFKA_HOME"):
        return default_cache_root() / kafka_version()
    return REPO_ROOT / ".kafka" / "libs" / kafka_version()


def shared_mirror_jars_dir() -> Path:
    """MirrorMaker's jar cache every test mirror reuses, beside the broker's."""
    broker = shared_jars_dir()
    return broker.with_name(broker.name + MIRROR_SUFFIX)


def docker_answers() -> bool:
    """Whether a Docker engine answers `GET /_ping` within a few seconds.

    A raw request rather than the Docker SDK: the SDK leaks its socket when no engine
    answers, which `filterwarnings = error` turns into a failure.
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    scheme, _, rest = host.partition("://")
    try:
        if scheme == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(3)
                conn.connect(rest)
                return _pinged(conn)
        if scheme == "tcp":
            hostname, _, port = rest.partition(":")
            with socket.create_connection((hostname, int(port or 2375)), timeout=3) as conn:
                return _pinged(conn)
    except (OSError, ValueError):
        return False
    # ssh:// and other transports: ask the docker CLI, if there is one.
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _pinged(conn: socket.socket) -> bool:
    conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    return conn.recv(64).startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))


@contextmanager
def _container_kafka() -> Iterator[str]:
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer(CONTAINER_IMAGE).with_kraft() as kafka:
        yield str(kafka.get_bootstrap_server())


@contextmanager
def _local_kafka(data_dir: Path) -> Iterator[str]:
    broker = LocalBroker(port=free_port(), data_dir=data_dir, jars_dir=shared_jars_dir())
    try:
        yield broker.up()
    finally:
        broker.down()


@contextmanager
def session_kafka(data_dir: Path) -> Iterator[str]:
    """Yield a bootstrap address for the whole session; fail (never skip) if none works."""
    configured = os.environ.get(BOOTSTRAP_ENV)
    if configured:
        yield configured
        return
    reasons: list[str] = []
    with ExitStack() as stack:
        address: str | None = None
        if docker_answers():
            try:
                address = stack.enter_context(_container_kafka())
            except Exception as exc:  # whatever broke, the local broker is the fallback
                reasons.append(f"testcontainers Kafka failed: {exc}")
        else:
            reasons.append("no Docker engine answers")
        if address is None:
            try:
                address = stack.enter_context(_local_kafka(data_dir))
            except BrokerError as exc:
                reasons.append(f"local broker failed: {exc}")
        if address is None:
            pytest.fail(
                f"no Kafka for the integration tests ({BOOTSTRAP_ENV} unset; "
                + "; ".join(reasons)
                + ")",
                pytrace=False,
            )
        yield address


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Kafka broker's bootstrap address, shared by the test session."""
    with session_kafka(tmp_path_factory.mktemp("kafka")) as address:
        yield address
