"""Fixtures for end-to-end tests: real `ratelimiter serve` processes on a real broker."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.local.nodes import NodeProcess
from service.local.process import free_port

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
    ) -> NodeProcess:
        node = NodeProcess(node_id, port or free_port(), kafka, list(args), tmp_path / "logs")
        started.append(node)
        node.start()
        if wait:
            node.wait_ready(90)
        return node

    yield _spawn
    for node in started:
        node.stop()
