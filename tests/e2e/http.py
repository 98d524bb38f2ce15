"""Blocking HTTP helpers for end-to-end tests, and a deadline-based wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from service.local.nodes import NodeProcess


def protected(client: httpx.Client, node: NodeProcess, user: str) -> int:
    """POST /protected for `user`; the status code."""
    return client.post(f"{node.url}/protected", headers={"X-User-ID": user}).status_code


def key_view(client: httpx.Client, node: NodeProcess, user: str) -> dict[str, Any]:
    """GET /v1/keys/{user}."""
    response = client.get(f"{node.url}/v1/keys/{user}")
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll until `predicate()` holds; returns the seconds it took, fails after the deadline."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(0.01)  # poll again until the deadline
    return time.monotonic() - started


def hold(seconds: float) -> None:
    """Let a fault or a load phase last `seconds` (a duration under test, not a sync wait)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))  # until the deadline
