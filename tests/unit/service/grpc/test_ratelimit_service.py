"""Envoy's rate limit service on a real grpc.aio server, called with the generated stubs
(xds-protos) over 127.0.0.1: decisions, hits_addend, several descriptors at once,
overrides, headers, bad requests and health following readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import yaml
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.bootstrap import build_node
from service.grpc.server import GrpcServer
from service.node import Node
from service.rules.document import parse_rules
from service.rules.model import default_rule
from service.testing import ManualClock
from tests.service_helpers import standalone_settings, wait_for

OK = rls_pb2.RateLimitResponse.Code.OK
OVER = rls_pb2.RateLimitResponse.Code.OVER_LIMIT
MINUTE = rls_pb2.RateLimitResponse.RateLimit.Unit.MINUTE
SECOND = rls_pb2.RateLimitResponse.RateLimit.Unit.SECOND
MONTH = rls_pb2.RateLimitResponse.RateLimit.Unit.MONTH
WEEK = rls_pb2.RateLimitResponse.RateLimit.Unit.WEEK
YEAR = rls_pb2.RateLimitResponse.RateLimit.Unit.YEAR
Override = ratelimit_pb2.RateLimitDescriptor.RateLimitOverride

CONFIG = """
domain: api
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: org
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: blocked
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: soft
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: free
    rate_limit: {unlimited: true}
"""


@dataclass
class Served:
    node: Node
    server: GrpcServer
    stub: Any
    health: Any
    clock: ManualClock


def make_node(clock: ManualClock) -> Node:
    fallback = default_rule("token_bucket", 10, 20, 1)
    rules = parse_rules(yaml.safe_load(CONFIG), fallback)
    return build_node(standalone_settings(), clock=clock, rules=rules)


@pytest.fixture(params=[False], ids=["no-override"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    async for item in serve(allow_override=request.param):
        yield item


async def serve(allow_override: bool, start_node: bool = True) -> AsyncIterator[Served]:
    clock = ManualClock(1_200.0)  # a minute boundary: minute windows reset in 60 s
    node = make_node(clock)
    server = GrpcServer(node, "127.0.0.1", 0, allow_override)
    port = await server.start()
    if start_node:
        await node.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(
            node,
            server,
            rls_pb2_grpc.RateLimitServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
            clock,
        )
    finally:
        await channel.close()
        await server.stop(0)
        await node.stop()


def descriptor(*entries: tuple[str, str], hits: int | None = None, limit: Any = None) -> Any:
    built = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if hits is not None:
        built.hits_addend.value = hits
    if limit is not None:
        built.limit.CopyFrom(limit)
    return built


async def ask(
    served: Served, descriptors: Sequence[Any], domain: str = "api", hits: int = 0
) -> Any:
    request = rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits)
    return await served.stub.ShouldRateLimit(request, timeout=5)


def headers(response: Any) -> dict[str, str]:
    return {h.key: h.value for h in response.response_headers_to_add}


async def test_ok_until_the_limit_then_over_limit_with_status_and_headers(served: Served) -> None:
    answers = [await ask(served, [descriptor(("user", "alice"))]) for _ in range(4)]
    assert [a.overall_code for a in answers] == [OK, OK, OK, OVER]
    assert [a.statuses[0].limit_remaining for a in answers] == [2, 1, 0, 0]
    status = answers[-1].statuses[0]
    assert status.code == OVER
    assert (status.current_limit.requests_per_unit, status.current_limit.unit) == (3, MINUTE)
    assert status.current_limit.name == "api.user"
    assert status.duration_until_reset.ToMilliseconds() == 60_000
    assert headers(answers[0]) == {
        "ratelimit-policy": '"api.user";q=3;w=60',
        "ratelimit": '"api.user";r=2;t=60',
    }
    assert headers(answers[-1])["retry-after"] == "60"
    # Another user has a budget of their own; a new minute brings alice's back.
    assert (await ask(served, [descriptor(("user", "bob"))])).overall_code == OK
    served.clock.advance(60)
    assert (await ask(served, [descriptor(("user", "alice"))])).overall_code == OK


async def test_hits_addend_descriptor_level_wins_and_zero_only_looks(served: Served) -> None:
    for _ in range(3):
        looked = await ask(served, [descriptor(("user", "carol"), hits=0)], hits=2)
        assert (looked.overall_code, looked.statuses[0].limit_remaining) == (OK, 3)
    # The request's hits_addend applies where a descriptor gives none; Envoy's unset (0) is 1.
    assert (await ask(served, [descriptor(("user", "carol"))], hits=2)).statuses[
        0
    ].limit_remaining == 1
    assert (await ask(served, [descriptor(("user", "carol"))])).statuses[0].limit_remaining == 0
    assert (await ask(served, [descriptor(("user", "dave"), hits=3)], hits=1)).statuses[
        0
    ].limit_remaining == 0
    over = await ask(served, [descriptor(("user", "erin"), hits=4)])
    assert over.overall_code == OVER
    assert served.node.engine.view("api/user=erin", over_rule(served)).consumed == 0


def over_rule(served: Served) -> Any:
    return served.node.rules.get("api.user")


async def test_several_descriptors_are_one_decision_and_a_denial_takes_nothing(
    served: Served,
) -> None:
    assert (await ask(served, [descriptor(("org", "acme"), hits=5)])).overall_code == OK
    answer = await ask(
        served,
        [descriptor(("user", "frank")), descriptor(("org", "acme")), descriptor(("nothing", "x"))],
    )
    assert answer.overall_code == OVER
    assert [s.code for s in answer.statuses] == [OK, OVER, OK]
    assert answer.statuses[0].current_limit.name == "api.user"
    assert answer.statuses[1].current_limit.name == "api.org"
    assert not answer.statuses[2].HasField("current_limit")
    assert headers(answer)["ratelimit"].startswith('"api.org";r=0')
    # frank's limit was not taken from: all 3 are still there.
    after = await ask(served, [descriptor(("user", "frank"), hits=0)])
    assert after.statuses[0].limit_remaining == 3
    both = await ask(served, [descriptor(("user", "frank")), descriptor(("org", "other"), hits=2)])
    assert [(s.code, s.limit_remaining) for s in both.statuses] == [(OK, 2), (OK, 3)]


async def test_zero_unlimited_shadow_and_unknown_descriptors(served: Served) -> None:
    blocked = await ask(served, [descriptor(("user", "gina")), descriptor(("blocked", "1.2.3.4"))])
    assert [s.code for s in blocked.statuses] == [OK, OVER]
    assert blocked.statuses[1].current_limit.requests_per_unit == 0
    assert served.node.engine.view("api/user=gina", over_rule(served)).consumed == 0
    free = await ask(served, [descriptor(("free", "x"), hits=10**6)])
    assert (free.overall_code, free.statuses[0].limit_remaining) == (OK, 2**32 - 1)
    soft = [await ask(served, [descriptor(("soft", "s"))]) for _ in range(3)]
    assert all(a.overall_code == OK for a in soft)
    unknown = await ask(served, [descriptor(("user", "x"), ("deeper", "y"))], domain="api")
    assert unknown.overall_code == OK
    assert not unknown.statuses[0].HasField("current_limit")
    other_domain = await ask(served, [descriptor(("user", "x"))], domain="elsewhere")
    assert other_domain.overall_code == OK


async def test_limit_overrides_only_with_the_setting(served: Served) -> None:
    one_per_second = Override(requests_per_unit=1, unit=SECOND)
    ignored = [
        await ask(served, [descriptor(("user", "hal"), limit=one_per_second)]) for _ in range(2)
    ]
    assert [a.overall_code for a in ignored] == [OK, OK]
    assert ignored[0].statuses[0].current_limit.requests_per_unit == 3
    async for honouring in serve(allow_override=True):
        answers = [
            await ask(honouring, [descriptor(("user", "hal"), limit=one_per_second)])
            for _ in range(2)
        ]
        assert [a.overall_code for a in answers] == [OK, OVER]
        limit = answers[0].statuses[0].current_limit
        assert (limit.requests_per_unit, limit.unit) == (1, SECOND)
        # Without an override the configured limit still applies to the same user.
        assert (await ask(honouring, [descriptor(("user", "hal"))])).statuses[
            0
        ].limit_remaining == 2


async def test_month_and_week_overrides_reset_at_the_calendar_boundary() -> None:
    twice_a_month = Override(requests_per_unit=2, unit=MONTH)
    async for served in serve(allow_override=True):
        # The clock is at 2025-01-01T00:20:00Z: the month ends in 31 days less 20 minutes.
        answers = [
            await ask(served, [descriptor(("user", "mo"), limit=twice_a_month)]) for _ in range(3)
        ]
        assert [a.overall_code for a in answers] == [OK, OK, OVER]
        status = answers[-1].statuses[0]
        assert (status.current_limit.requests_per_unit, status.current_limit.unit) == (2, MONTH)
        assert status.duration_until_reset.ToMilliseconds() == (31 * 86_400 - 1_200) * 1000
        assert headers(answers[-1])["ratelimit-policy"] == '"override.month.2";q=2;w=2678400'
        served.clock.t = 31 * 86_400.0  # February 1st
        again = await ask(served, [descriptor(("user", "mo"), limit=twice_a_month)])
        assert again.overall_code == OK
        # 2025-02-01 is a Saturday: a weekly limit resets on Monday the 3rd.
        weekly = Override(requests_per_unit=1, unit=WEEK)
        answers = [await ask(served, [descriptor(("user", "wk"), limit=weekly)]) for _ in range(2)]
        assert [a.overall_code for a in answers] == [OK, OVER]
        reset = answers[-1].statuses[0].duration_until_reset.ToMilliseconds()
        assert reset == 2 * 86_400 * 1000


@pytest.mark.parametrize(
    ("domain", "descriptors", "message"),
    [
        ("", [descriptor(("user", "a"))], "domain must not be empty"),
        ("api", [], "descriptors must not be empty"),
        (
            "api",
            [descriptor(("user", "a")), descriptor()],
            "descriptors[1].entries must not be empty",
        ),
        ("api", [descriptor(("", "a"))], "descriptors[0].entries[0].key must not be empty"),
        (
            "api",
            [descriptor(("user", "x" * 300))],
            "descriptors[0]: the limit key (domain and entries) is longer than 256 bytes",
        ),
        (
            "api",
            [
                descriptor(
                    ("user", "a"),
                    limit=Override(requests_per_unit=1, unit=YEAR),
                )
            ],
            "descriptors[0].limit.unit: unit year is not supported",
        ),
    ],
)
async def test_bad_requests_are_invalid_argument(
    served: Served, domain: str, descriptors: list[Any], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ask(served, descriptors, domain=domain)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def status_of(served: Served, service: str = "") -> int:
    answer = await served.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(answer.status)


async def test_health_follows_readiness() -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    async for served in serve(allow_override=False, start_node=False):
        assert await status_of(served) == not_serving
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ask(served, [descriptor(("user", "a"))])
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await served.node.start()

        async def serving_now(expected: int, served: Served = served) -> bool:
            return (
                await status_of(served) == expected
                and await status_of(served, "envoy.service.ratelimit.v3.RateLimitService")
                == expected
            )

        await wait_for(lambda: serving_now(serving), what="SERVING once the node is ready")
        await served.node.stop()
        await wait_for(lambda: serving_now(not_serving), what="NOT_SERVING once it is not")
