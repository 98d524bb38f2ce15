"""Fixtures for end-to-end tests: real `ratelimiter serve` processes on a real broker."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.local.broker import LocalBroker
from service.local.nodes import NodeProcess
from service.local.process import free_port
from tests.kafka_fixture import shared_jars_dir

Spawn = Callable[..., NodeProcess]


@pytest.fixture
def topic() -> str:
    """A fresh state topic per test, so tests never see each other's users."""
    return f"e2e.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start a node process (stopped at the end of the test); returns it once ready."""
    started: list[NodeProcess] = []

    def _spawn(
        node_id: str,
        kafka: str = "none",
        *args: str,
        port: int | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> NodeProcess:
        node = NodeProcess(
            node_id, port or free_port(), kafka, list(args), tmp_path / "logs", env=env
        )
        started.append(node)
        node.start()
        if wait:
            node.wait_ready(90)
        return node

    yield _spawn
    for node in started:
        node.stop()


@dataclass
class Broker:
    """A broker of the test's own (it gets stopped), with a listener behind a proxy."""

    broker: LocalBroker
    proxy_port: int

    @property
    def direct(self) -> str:
        return self.broker.address

    @property
    def proxied(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    listen, advertised = free_port(), free_port()
    broker = LocalBroker(
        port=free_port(),
        data_dir=tmp_path / "kafka",
        jars_dir=shared_jars_dir(),
        extra_listeners={"PROXIED": (listen, advertised)},
    )
    broker.up()
    try:
        yield Broker(broker, advertised)
    finally:
        broker.down()
