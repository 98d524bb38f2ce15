"""`ratelimiter serve --grpc-port`: a real node process answers Envoy's ShouldRateLimit and
gRPC health from a `--rules` file in Envoy ratelimit's format, and stops cleanly."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.local.process import free_port
from tests.e2e.conftest import Spawn
from tests.e2e.http import wait_until

pytestmark = pytest.mark.e2e

OK = rls_pb2.RateLimitResponse.Code.OK
OVER = rls_pb2.RateLimitResponse.Code.OVER_LIMIT
CONFIG = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: hour, requests_per_unit: 3}
"""


def request(address: str) -> Any:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value=address)
    return rls_pb2.RateLimitRequest(
        domain="edge", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )


def test_serve_answers_should_rate_limit_and_health_on_the_grpc_port(
    spawn: Spawn, tmp_path: Path
) -> None:
    rules = tmp_path / "envoy.yaml"
    rules.write_text(CONFIG)
    grpc_port = free_port()
    node = spawn("grpc-1", "none", "--rules", str(rules), "--grpc-port", str(grpc_port))
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.RpcError:
                return False
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

        wait_until(serving, 30, "gRPC health SERVING")
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        answers = [stub.ShouldRateLimit(request("10.0.0.1"), timeout=5) for _ in range(4)]
        assert [a.overall_code for a in answers] == [OK, OK, OK, OVER]
        assert answers[0].statuses[0].current_limit.name == "edge.remote_address"
        assert {h.key for h in answers[-1].response_headers_to_add} == {
            "ratelimit-policy",
            "ratelimit",
            "retry-after",
        }
        assert stub.ShouldRateLimit(request("10.0.0.2"), timeout=5).overall_code == OK
    # SIGTERM: the lifespan stops the gRPC server, then the node (uvicorn then exits by
    # the signal it caught, as it does without gRPC).
    assert node.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in node.log_path.read_text()
