"""gRPC health checking (grpc.health.v1) that follows the node's readiness.

SERVING exactly when `GET /readyz` answers 200 (bootstrapped, no background task failing),
NOT_SERVING otherwise, for the whole server ("") and for the rate limit service by name.
Readiness is looked at every `period_s`; a change is pushed to `Watch` streams.
"""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health, health_pb2

from service.node import Node

RATELIMIT_SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
SERVICES = ("", RATELIMIT_SERVICE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def node_ready(node: Node) -> bool:
    """What /readyz says: ready and no background task failing."""
    return node.ready and node.failing is None


class ReadinessHealth:
    """The health servicer and the loop keeping it equal to the node's readiness."""

    def __init__(self, node: Node, period_s: float = 0.1) -> None:
        self.node = node
        self.period_s = period_s
        self.servicer = health.aio.HealthServicer()
        self.serving: bool | None = None

    async def sync(self) -> None:
        """Publish the node's readiness now if it changed."""
        ready = node_ready(self.node)
        if ready != self.serving:
            self.serving = ready
            for service in SERVICES:
                await self.servicer.set(service, SERVING if ready else NOT_SERVING)

    async def follow(self) -> None:
        """Keep publishing readiness changes until cancelled."""
        while True:
            await self.sync()
            await asyncio.sleep(self.period_s)

    async def shut_down(self) -> None:
        """NOT_SERVING for every service from now on (the server is stopping)."""
        await self.servicer.enter_graceful_shutdown()
