"""Helpers for the service tests: waiting with a deadline, a settable clock, test nodes."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import FastAPI

from service.bootstrap import build_node
from service.http.fastpath import FastPath
from service.node import Node
from service.replication.remotelog import RemoteLog
from service.settings import Settings, load_settings
from service.testing import MemoryLog, MemoryStateLog


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    within: float = 5.0,
    what: str = "condition",
) -> float:
    """Return the seconds it took `predicate()` (sync or async) to hold; fail after `within`."""
    started = time.monotonic()
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)  # poll again until the deadline


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every RATELIMITER_* variable so defaults are what the test sees."""
    for name in list(os.environ):
        if name.upper().startswith("RATELIMITER_"):
            monkeypatch.delenv(name)


def standalone_settings(**overrides: Any) -> Settings:
    """Settings of a node without Kafka."""
    return load_settings(**{"kafka": "none", **overrides})


def kafka_settings(bootstrap: str, topic: str, node_id: str, **overrides: Any) -> Settings:
    """Settings of a node replicating through `topic` on a real broker."""
    return load_settings(
        **{"kafka": bootstrap, "topic": topic, "node_id": node_id, "partitions": 6, **overrides}
    )


def unique_topic(label: str) -> str:
    """A topic name no other test uses."""
    return f"test.{label}.{uuid.uuid4().hex[:12]}"


def memory_node(
    log: MemoryLog,
    clock: Callable[[], float],
    node_id: str,
    **overrides: Any,
) -> Node:
    """A replicating node on the in-memory log (no rules topic unless `rules_topic` is given;
    other regions' topics on `remote_log` (a RemoteLog) with `region`)."""
    remote_log: RemoteLog | None = overrides.pop("remote_log", None)
    values: dict[str, Any] = {
        "kafka": "127.0.0.1:1",
        "rules_topic": "none",
        "node_id": node_id,
        "partitions": len(log.partitions),
        "flush_ms": 5,
        **overrides,
    }
    return build_node(
        load_settings(**values), clock=clock, state_log=MemoryStateLog(log), remote_log=remote_log
    )


def served(app: FastAPI) -> FastPath:
    """What `create_asgi` serves, for an app built around a test's own node."""
    return FastPath(app, app.state.protector, app.state.checker, app.state.router)


def sample(node: Node, name: str, **labels: str) -> float:
    """A metric's current value in `node`'s registry (0 when never set)."""
    value = node.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value
