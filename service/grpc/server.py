"""The node's gRPC server: Envoy's rate limit service, health and server reflection (so
generic clients such as grpcurl need no proto files), beside the HTTP server.

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
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from fastapi import FastAPI
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.errors import ConfigError
from service.grpc.forward import GrpcForwarder
from service.grpc.health import ReadinessHealth
from service.grpc.ratelimit import RateLimitService
from service.node import Node
from service.observability.request_id import RequestIds
from service.observability.tracing import Tracing

log = logging.getLogger("ratelimiter.grpc")
STOP_GRACE_S = 5.0


REFLECTED = (
    rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


class GrpcServer:
    """ShouldRateLimit, health checking and reflection on `host:port` (0: any free port).

    `tracing` makes a span of every call; `request_ids` (by default the node id's own,
    apart from HTTP's) names calls that come without an `x-request-id`.
    """

    def __init__(
        self,
        node: Node,
        host: str,
        port: int,
        allow_limit_override: bool,
        *,
        tracing: Tracing | None = None,
        request_ids: RequestIds | None = None,
        forwarder: GrpcForwarder | None = None,
    ) -> None:
        self.node = node
        self.address = f"{host}:{port}"
        if request_ids is None:
            request_ids = RequestIds(f"{node.settings.node_id}/grpc")
        self.forwarder = forwarder
        self.service = RateLimitService(node, allow_limit_override, tracing, request_ids, forwarder)
        self.health = ReadinessHealth(node)
        self.port: int | None = None
        self._server: Any = None
        self._follow: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listen; returns the port bound. ConfigError when the address cannot be bound."""
        server = grpc.aio.server()
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        reflection.enable_server_reflection(REFLECTED, server)
        try:
            port: int = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {self.address}: {exc}") from exc
        await self.health.sync()
        await server.start()
        self._server, self.port = server, port
        if self.node.placement is not None:
            # Members forward ShouldRateLimit here once they hear of it (next heartbeat).
            host = self.node.settings.advertised_address.rpartition(":")[0]
            self.node.placement.membership.set_grpc_address(f"{host}:{port}")
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
        if self.forwarder is not None:
            await self.forwarder.close()


def serve_beside(app: FastAPI, node: Node, host: str, port: int, allow_override: bool) -> None:
    """Run a GrpcServer for the lifetime of `app` (inside its lifespan, after the node),
    tracing as the app does and naming calls from the app's request ids."""
    inner: Callable[[Any], Any] = app.router.lifespan_context
    tracing: Tracing | None = getattr(app.state, "tracing", None)
    request_ids: RequestIds | None = getattr(app, "request_ids", None)

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with inner(asgi_app) as state:
            router = getattr(asgi_app.state, "router", None)
            forwarder = (
                GrpcForwarder(node.settings.node_id, router.forwarder)
                if router is not None
                else None
            )
            server = GrpcServer(
                node,
                host,
                port,
                allow_override,
                tracing=tracing,
                request_ids=request_ids,
                forwarder=forwarder,
            )
            await server.start()
            try:
                yield state
            finally:
                await server.stop()

    app.router.lifespan_context = lifespan
