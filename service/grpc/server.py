"""The node's gRPC server: Envoy's rate limit service and health, beside the HTTP server.

`GrpcServer` runs in the node's event loop (grpc.aio), so a gRPC decision and an HTTP
decision never interleave. `serve_beside(app, node, settings)` ties it to the FastAPI
lifespan: it starts once the node started and stops before the node stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from fastapi import FastAPI
from grpc_health.v1 import health_pb2_grpc

from service.errors import ConfigError
from service.grpc.health import ReadinessHealth
from service.grpc.ratelimit import RateLimitService
from service.node import Node

log = logging.getLogger("ratelimiter.grpc")
STOP_GRACE_S = 5.0


class GrpcServer:
    """ShouldRateLimit and health checking on `host:port` (port 0: any free port)."""

    def __init__(self, node: Node, host: str, port: int, allow_limit_override: bool) -> None:
        self.node = node
        self.address = f"{host}:{port}"
        self.service = RateLimitService(node, allow_limit_override)
        self.health = ReadinessHealth(node)
        self.port: int | None = None
        self._server: Any = None
        self._follow: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listen; returns the port bound. ConfigError when the address cannot be bound."""
        server = grpc.aio.server()
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        try:
            port: int = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {self.address}: {exc}") from exc
        await self.health.sync()
        await server.start()
        self._server, self.port = server, port
        self._follow = asyncio.create_task(self.health.follow(), name="grpc-health")
        log.info("gRPC (Envoy rate limit service, health) on port %d", port)
        return port

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Report NOT_SERVING, finish calls in flight (up to `grace_s`), stop listening."""
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
            self._follow = None
        if self._server is not None:
            await self.health.shut_down()
            await self._server.stop(grace_s)
            self._server = None


def serve_beside(app: FastAPI, node: Node, host: str, port: int, allow_override: bool) -> None:
    """Run a GrpcServer for the lifetime of `app` (inside its lifespan, after the node)."""
    inner: Callable[[Any], Any] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with inner(asgi_app) as state:
            server = GrpcServer(node, host, port, allow_override)
            await server.start()
            try:
                yield state
            finally:
                await server.stop()

    app.router.lifespan_context = lifespan
