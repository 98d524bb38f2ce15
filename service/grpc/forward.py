"""Forwarding ShouldRateLimit to a member that answers for every key of its descriptors
(--replicas N), over one pooled gRPC channel per member.

A forwarded call carries `x-ratelimiter-forwarded` metadata: its receiver always answers
it itself, so a call is forwarded at most once. The outcomes are counted with HTTP's
forwards (`ratelimiter_forwarded_total`, `ratelimiter_forward_seconds`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from service.http.forward import Forwarder
from service.membership.codec import Member

log = logging.getLogger("ratelimiter.grpc.forward")

FORWARDED_KEY = "x-ratelimiter-forwarded"
Metadata = Sequence[tuple[str, str]]


def was_forwarded(metadata: Metadata) -> bool:
    """The call came from a peer (answer it here, never forward it again)."""
    return any(key == FORWARDED_KEY for key, _ in metadata)


class GrpcForwarder:
    """Sends a RateLimitRequest to the first of `targets` that answers within the HTTP
    forwarder's budget; None when none does (the caller decides under --fail-mode)."""

    def __init__(self, node_id: str, counted: Forwarder) -> None:
        self.node_id = node_id
        self.counted = counted
        self._stubs: dict[str, tuple[Any, Any]] = {}

    def _stub(self, address: str) -> Any:
        held = self._stubs.get(address)
        if held is None:
            channel = grpc.aio.insecure_channel(address)
            held = self._stubs[address] = (channel, rls_pb2_grpc.RateLimitServiceStub(channel))
        return held[1]

    async def forward(self, targets: Sequence[Member], request: Any, metadata: Metadata) -> Any:
        """The first owner's RateLimitResponse, or None."""
        outcomes = self.counted.outcomes
        serving = [m for m in targets if m.grpc]
        if not serving:
            outcomes.labels("no_owner").inc()
            return None
        sent = (*metadata, (FORWARDED_KEY, self.node_id))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.counted.budget_s):
                for member in serving:
                    try:
                        response = await self._stub(member.grpc).ShouldRateLimit(
                            request, metadata=sent
                        )
                    except grpc.aio.AioRpcError as exc:
                        log.debug("forwarding to %s failed: %s", member.node, exc.code())
                        continue
                    self.counted.seconds.observe(time.perf_counter() - started)
                    outcomes.labels("forwarded").inc()
                    return response
        except TimeoutError:
            pass
        outcomes.labels("unreachable").inc()
        return None

    async def close(self) -> None:
        """Close every channel."""
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()
