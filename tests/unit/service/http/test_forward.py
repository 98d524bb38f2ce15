"""Forwarding on loopback: two nodes served by uvicorn in this process, --replicas 1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
import yaml
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from service.bootstrap import build_node
from service.clock import ORIGIN
from service.grpc.forward import GrpcForwarder
from service.grpc.server import GrpcServer
from service.http.app import create_app
from service.http.fastpath import FastPath
from service.local.process import free_port
from service.membership.rendezvous import owners
from service.node import Node
from service.placement import Placement
from service.replication.codec import partition_for_user
from service.rules.document import parse_rules
from service.rules.model import RuleSet, default_rule
from service.settings import load_settings
from service.testing import MemoryLog, MemoryMembers, MemoryMembersLog, MemoryStateLog
from tests.service_helpers import served, wait_for

PARTITIONS = 4


@dataclass
class Served:
    node: Node
    port: int
    server: uvicorn.Server
    task: asyncio.Task[None]
    asgi: FastPath

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop_serving(self) -> None:
        self.server.should_exit = True
        await self.task

    async def stop(self) -> None:
        if not self.task.done():
            await self.stop_serving()
        await self.node.stop()
        assert self.asgi.router is not None
        self.asgi.router.forwarder.close()  # what the lifespan does


async def serve(
    log: MemoryLog,
    members: MemoryMembers,
    node_id: str,
    rules: RuleSet | None = None,
    **more: str,
) -> Served:
    port = free_port()
    settings = load_settings(
        kafka="127.0.0.1:1",
        rules_topic="none",
        node_id=node_id,
        port=port,
        partitions=PARTITIONS,
        flush_ms=5,
        replicas="1",
        heartbeat_s=0.05,
        member_expiry_s=0.5,
        rate=1,
        burst=5,
        **more,
    )
    node = build_node(
        settings,
        clock=lambda: time.time() - ORIGIN,
        state_log=MemoryStateLog(log),
        members_log=MemoryMembersLog(members),
        rules=rules,
    )
    asgi: FastPath = served(create_app(settings, node))
    # The node is started and stopped here, so its HTTP server can go while it still
    # heartbeats (an owner that peers cannot reach).
    config = uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    await node.start()
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, 10, f"{node_id} serving")
    await node.wait_ready(10)
    return Served(node, port, server, task, asgi)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Served, Served]]:
    async for both in serve_pair():
        yield both


async def serve_pair(rules: RuleSet | None = None) -> AsyncIterator[tuple[Served, Served]]:
    log, members = MemoryLog(PARTITIONS), MemoryMembers()
    a = await serve(log, members, "a", rules)
    b = await serve(log, members, "b", rules)
    try:
        await wait_for(
            lambda: all(
                s.node.placement is not None
                and len(s.node.placement.live) == 2
                and s.node.placement.ready
                == frozenset(
                    p for p in range(PARTITIONS) if owners(p, "ab", 1) == [s.node.settings.node_id]
                )
                for s in (a, b)
            ),
            5,
            "a and b each answer for their own partitions",
        )
        yield a, b
    finally:
        for s in (a, b):
            with contextlib.suppress(Exception):
                await s.stop()


def user_of(owner: str) -> str:
    return next(
        u
        for i in range(10_000)
        if owners(partition_for_user(u := f"u{i}", PARTITIONS), "ab", 1) == [owner]
    )


def forwarded(node: Node, outcome: str) -> float:
    value = node.metrics.registry.get_sample_value(
        "ratelimiter_forwarded_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_a_non_owner_forwards_protected_check_and_keys_to_the_owner(
    pair: tuple[Served, Served],
) -> None:
    a, b = pair
    user = user_of("b")
    async with httpx.AsyncClient() as client:
        codes = []
        for _ in range(7):
            response = await client.post(f"{a.url}/protected", headers={"X-User-ID": user})
            assert response.headers["x-ratelimiter-answered-by"] == "b"
            assert "ratelimit-policy" in response.headers
            assert response.headers["content-type"] == "application/json"
            codes.append(response.status_code)
        assert codes == [200] * 5 + [429] * 2  # one bucket, at the owner
        assert "retry-after" in response.headers
        # Nothing was decided on a: every admission is b's.
        view = (await client.get(f"{a.url}/v1/keys/{user}")).json()
        assert view["node"] == "b"
        assert view["consumed"] == 5
        assert view["contributions"] == {b.node.replica: 5}
        check = await client.post(f"{a.url}/v1/check", json={"key": user, "cost": 1})
        assert check.status_code == 200
        assert check.json()["allowed"] is False
        assert check.headers["x-ratelimiter-answered-by"] == "b"
        # A user a owns is answered by a itself.
        own = await client.post(f"{a.url}/protected", headers={"X-User-ID": user_of("a")})
        assert own.status_code == 200
        assert "x-ratelimiter-answered-by" not in own.headers
    assert forwarded(a.node, "forwarded") == 9
    assert forwarded(b.node, "forwarded") == 0


async def test_a_forwarded_request_is_never_forwarded_again(pair: tuple[Served, Served]) -> None:
    a, _ = pair
    user = user_of("b")
    async with httpx.AsyncClient() as client:
        # Sent to a as if forwarded by b: a answers it itself (no loop).
        response = await client.post(
            f"{a.url}/protected", headers={"X-User-ID": user, "X-RateLimiter-Forwarded": "b"}
        )
    assert response.status_code == 200
    assert "x-ratelimiter-answered-by" not in response.headers
    assert forwarded(a.node, "forwarded") == 0
    assert a.node.engine.view(user, a.node.rules.default).contributions == {a.node.replica: 1}


async def test_an_unreachable_owner_means_a_local_decision_within_the_budget(
    pair: tuple[Served, Served],
) -> None:
    a, b = pair
    user = user_of("b")
    await b.stop_serving()  # unreachable; it still heartbeats and claims its partitions
    assert a.node.placement is not None
    route = a.node.placement.route(user)
    assert route is not None
    assert [m.node for m in route] == ["b"]
    async with httpx.AsyncClient() as client:
        started = time.perf_counter()
        response = await client.post(f"{a.url}/protected", headers={"X-User-ID": user})
        took = time.perf_counter() - started
    assert response.status_code == 200
    assert "x-ratelimiter-answered-by" not in response.headers
    assert took < 1.0
    assert forwarded(a.node, "unreachable") + forwarded(a.node, "no_owner") == 1


def users_of(owner: str, count: int) -> list[str]:
    return [
        u
        for i in range(10_000)
        if owners(partition_for_user(u := f"u{i}", PARTITIONS), "ab", 1) == [owner]
    ][:count]


async def test_a_batch_goes_whole_to_the_node_answering_for_all_its_keys(
    pair: tuple[Served, Served],
) -> None:
    a, b = pair
    theirs = users_of("b", 2)
    async with httpx.AsyncClient() as client:
        # Batches and atomic checks of b's users, sent to a: decided by b (one bucket each).
        for _ in range(3):
            batch = await client.post(
                f"{a.url}/v1/check", json={"checks": [{"key": k, "cost": 2} for k in theirs]}
            )
            assert batch.status_code == 200
            assert batch.headers["x-ratelimiter-answered-by"] == "b"
        assert [r["allowed"] for r in batch.json()["results"]] == [False, False]  # 2+2, then 1
        both = await client.post(
            f"{a.url}/v1/check", json={"all": [{"key": k, "cost": 1} for k in theirs]}
        )
        assert both.status_code == 200
        assert both.headers["x-ratelimiter-answered-by"] == "b"
        assert both.json()["allowed"] is True
        for key in theirs:
            assert b.node.engine.view(key, b.node.rules.default).consumed == 5
            assert a.node.engine.view(key, a.node.rules.default).contributions == {}
        # Keys answered on different nodes: refused with a 400 that says why, nothing decided.
        mixed = [users_of("a", 1)[0], theirs[0]]
        split = await client.post(
            f"{a.url}/v1/check", json={"all": [{"key": k, "cost": 1} for k in mixed]}
        )
        assert split.status_code == 400
        assert split.json()["error"] == "bad_request"
        assert "different nodes" in split.json()["message"]
        assert a.node.engine.view(mixed[0], a.node.rules.default).consumed == 0
        # A batch of a's own users is decided on a.
        mine = await client.post(
            f"{a.url}/v1/check", json={"checks": [{"key": k} for k in users_of("a", 2)]}
        )
        assert mine.status_code == 200
        assert "x-ratelimiter-answered-by" not in mine.headers
    assert forwarded(a.node, "forwarded") == 4
    assert forwarded(a.node, "spans_owners") == 1


ENVOY = """
domain: api
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
"""


def envoy_request(*users: str) -> Any:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    return rls_pb2.RateLimitRequest(
        domain="api",
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="user", value=u)]) for u in users
        ],
    )


@dataclass
class EnvoyPair:
    a: Served
    b: Served
    servers: list[GrpcServer]
    stub: Any  # a RateLimitService stub on a's gRPC port


@pytest.fixture
async def envoy_pair() -> AsyncIterator[EnvoyPair]:
    rules = parse_rules(yaml.safe_load(ENVOY), default_rule("token_bucket", 1, 5, 1))
    async for a, b in serve_pair(rules):
        servers = []
        for s in (a, b):
            assert s.asgi.router is not None
            forwarder = GrpcForwarder(s.node.settings.node_id, s.asgi.router.forwarder)
            servers.append(GrpcServer(s.node, "127.0.0.1", 0, False, forwarder=forwarder))
        ports = [await server.start() for server in servers]
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}")
        try:
            placement = a.node.placement
            assert placement is not None
            b_grpc = f"127.0.0.1:{ports[1]}"

            def heard(p: Placement = placement, address: str = b_grpc) -> bool:
                return p.live["b"].grpc == address

            await wait_for(heard, 5, "a hears b's gRPC")
            yield EnvoyPair(a, b, servers, rls_pb2_grpc.RateLimitServiceStub(channel))
        finally:
            await channel.close()
            for server in servers:
                await server.stop(0)


async def test_should_rate_limit_goes_to_the_node_answering_for_its_descriptors(
    envoy_pair: EnvoyPair,
) -> None:
    a, b, stub = envoy_pair.a, envoy_pair.b, envoy_pair.stub
    placement = a.node.placement
    assert placement is not None
    planned = envoy_pair.servers[0].service._planned

    def key(user: str) -> str:  # the limit key of the user's descriptor
        asked, _ = planned(envoy_request(user))
        return asked[0].key

    theirs = [u for i in range(2_000) if placement.route(key(u := f"e{i}"))][:2]
    mine = next(u for i in range(2_000) if placement.route(key(u := f"m{i}")) is None)
    over = rls_pb2.RateLimitResponse.Code.OVER_LIMIT
    codes = [
        (await stub.ShouldRateLimit(envoy_request(theirs[0]), timeout=5)).overall_code
        for _ in range(4)
    ]
    assert codes.count(over) == 1  # 3 a minute, all decided at b
    assert codes[-1] == over
    rule = next(r for r in b.node.rules.rules if r.envoy is not None)
    assert b.node.engine.view(key(theirs[0]), rule).consumed == 3
    assert a.node.engine.view(key(theirs[0]), rule).contributions == {}
    assert forwarded(a.node, "forwarded") == 4
    # Both descriptors answered by b: the request goes whole to b, one atomic decision
    # (the first is over its limit, so the second takes nothing).
    both = await stub.ShouldRateLimit(envoy_request(*theirs), timeout=5)
    assert both.overall_code == over
    assert [s.code for s in both.statuses] == [over, rls_pb2.RateLimitResponse.Code.OK]
    assert forwarded(a.node, "forwarded") == 5
    assert b.node.engine.view(key(theirs[1]), rule).consumed == 0
    # A user of a's own partitions is decided on a.
    await stub.ShouldRateLimit(envoy_request(mine), timeout=5)
    assert forwarded(a.node, "forwarded") == 5
    assert a.node.engine.view(key(mine), rule).consumed == 1
    # Descriptors answered on different nodes: INVALID_ARGUMENT, nothing decided.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ShouldRateLimit(envoy_request(mine, theirs[1]), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "different nodes" in (refused.value.details() or "")
    assert forwarded(a.node, "spans_owners") == 1
    assert a.node.engine.view(key(mine), rule).consumed == 1
