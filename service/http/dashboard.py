"""GET /dashboard: a live status page of one node; GET /dashboard/data: the JSON it polls."""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import deque
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query
from fastapi.responses import HTMLResponse, Response
from prometheus_client import Histogram

from service.http.auth import bearer_or_token, require_admin
from service.http.dashboard_page import PAGE
from service.metrics import histogram_quantile
from service.node import Node

REFRESH_S = 1.0  # /dashboard/data is computed at most this often
SLICE_S = 0.001  # the top-keys scan yields to the event loop after this much work
RATE_WINDOW_S = 10.0  # admitted/denied per second over (at most) this many seconds
TOP_KEYS = 10
SCAN_LIMIT = 20_000  # keys looked at for the top list per poll: bounded work per request


class DecisionRates:
    """Admitted and denied per second from counter samples taken when the page polls."""

    def __init__(self, node: Node) -> None:
        self.node = node
        # The first sample is at app creation (all zero), so the first poll has a rate.
        self._samples: deque[tuple[float, float, float]] = deque([(time.monotonic(), 0.0, 0.0)])

    def totals(self) -> tuple[float, float]:
        """Admitted and denied decisions since the node started, over every rule."""
        admitted = denied = 0.0
        for (_, outcome), count in self.node.decisions.items():
            if outcome == "admitted":
                admitted += count
            elif outcome == "denied":
                denied += count
        return admitted, denied

    def sample(self) -> dict[str, float]:
        """Rates over the last RATE_WINDOW_S seconds (or since the first sample)."""
        now = time.monotonic()
        admitted, denied = self.totals()
        samples = self._samples
        while len(samples) > 1 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        then, admitted_then, denied_then = samples[0]
        samples.append((now, admitted, denied))
        span = max(now - then, 1e-6)
        return {
            "admitted_per_s": round((admitted - admitted_then) / span, 2),
            "denied_per_s": round((denied - denied_then) / span, 2),
            "window_s": round(span, 2),
        }


def sync_lag(node: Node) -> dict[str, Any]:
    """Merged-record count and p50/p99 of the node's sync-lag histogram since it started."""
    return _histogram_summary(node.metrics.sync_lag)


def loop_lag(node: Node) -> dict[str, Any]:
    """Probe count and p50/p99 of the node's event-loop lag histogram since it started."""
    return _histogram_summary(node.metrics.loop_lag)


def _histogram_summary(histogram: Histogram) -> dict[str, Any]:
    buckets: dict[float, float] = {}
    count = total = 0.0
    for family in histogram.collect():
        for s in family.samples:
            if s.name.endswith("_bucket"):
                buckets[float(s.labels["le"])] = s.value
            elif s.name.endswith("_count"):
                count = s.value
            elif s.name.endswith("_sum"):
                total = s.value
    p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    return {
        "count": int(count),
        "mean_ms": round(total / count * 1000, 1) if count else None,
        "p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "p99_ms": None if p99 is None else round(p99 * 1000, 1),
    }


def peers(node: Node) -> list[dict[str, Any]]:
    """Every peer replica merged here: when its last delta arrived and how many records."""
    replicator = node.replicator
    if replicator is None:
        return []
    now = node.clock()
    return [
        {
            "replica": replica,
            "node": replica.split("/")[0],
            "last_delta_s_ago": round(max(0.0, now - seen.at), 3),
            "records": seen.records,
        }
        for replica, seen in sorted(replicator.peers.items())
    ]


async def top_keys(node: Node, count: int = TOP_KEYS) -> tuple[list[dict[str, Any]], bool]:
    """The keys with the most consumption (merged across nodes); True when the scan was cut.

    The scan yields to the event loop every slice: requests never wait behind it."""
    now = node.clock()
    candidates = []
    scanned = 0
    deadline = time.perf_counter() + SLICE_S
    for rule_name, limiter in list(node.engine.limiters.items()):
        keys = limiter.keys()[: SCAN_LIMIT - scanned]
        scanned += len(keys)
        for key in keys:
            view = limiter.view(key, now)
            candidates.append((view.consumed, key, rule_name, view))
            if time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + SLICE_S
    best = heapq.nlargest(count, candidates, key=lambda c: (c[0], c[1]))
    rows = [
        {
            "key": key,
            "rule": rule_name,
            "consumed": consumed,
            "tokens": round(view.tokens, 2),
            "writers": len(view.contributions),
        }
        for consumed, key, rule_name, view in best
    ]
    return rows, scanned >= SCAN_LIMIT and node.engine.tracked_keys() > SCAN_LIMIT


async def snapshot(node: Node, rates: DecisionRates) -> dict[str, Any]:
    """Everything the page shows, now."""
    keys, truncated = await top_keys(node)
    admitted, denied = rates.totals()
    replicator = node.replicator
    s = node.settings
    return {
        "node": s.node_id,
        "replica": node.replica,
        "ready": node.ready,
        "mode": node.mode,
        "standalone": s.standalone,
        "kafka": s.kafka,
        "topic": s.topic,
        "broker_up": None if replicator is None else replicator.broker_ok,
        "buffered": 0 if replicator is None else replicator.buffered,
        "rules": [
            {"name": r.name, "algorithm": r.algorithm, "rate": r.rate, "capacity": r.capacity}
            for r in node.rules.all()
        ],
        "decisions": {"admitted": int(admitted), "denied": int(denied)},
        "rates": rates.sample(),
        "sync_lag": sync_lag(node),
        "loop_lag": loop_lag(node),
        "peers": peers(node),
        "tracked_keys": node.engine.tracked_keys(),
        "top_keys": keys,
        "top_keys_truncated": truncated,
        "time_ms": int(time.time() * 1000),
    }


class DashboardData:
    """The /dashboard/data body, computed at most once per REFRESH_S however many poll."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.rates = DecisionRates(node)
        self._body = b""
        self._at = -math.inf
        self._lock = asyncio.Lock()

    async def body(self) -> bytes:
        """The newest body (computed now when the last one is older than REFRESH_S)."""
        async with self._lock:
            if time.monotonic() - self._at >= REFRESH_S:
                self._body = orjson.dumps(await snapshot(self.node, self.rates))
                self._at = time.monotonic()
        return self._body


def dashboard_router(node: Node) -> APIRouter:
    """The /dashboard page and its /dashboard/data endpoint for `node` (behind the admin
    token when the node has one: `Authorization: Bearer`, or `?token=` from a browser)."""
    router = APIRouter(tags=["dashboard"])
    data = DashboardData(node)

    @router.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        """A live status page (polls /dashboard/data every second)."""
        return HTMLResponse(PAGE)

    @router.get("/dashboard/data")
    async def dashboard_data(
        authorization: Annotated[str | None, Header()] = None,
        token: Annotated[str | None, Query(max_length=256)] = None,
    ) -> Response:
        """Rates, sync lag, peers and top keys of this node, as JSON (refreshed each second)."""
        if node.settings.admin_token is not None:
            require_admin(node.settings, bearer_or_token(authorization, token))
        return Response(await data.body(), media_type="application/json")

    return router
