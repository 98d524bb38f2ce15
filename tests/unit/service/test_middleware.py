"""The ASGI middleware and FastAPI dependency answer like a node's /protected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.bootstrap import build_node
from service.http.app import create_app
from service.library import CheckResult, RateLimiter
from service.middleware import (
    RateLimit,
    RateLimitMiddleware,
    by_api_key,
    by_client,
    by_header,
    install_handler,
)
from service.testing import ManualClock
from tests.service_helpers import clean_env, served, standalone_settings

BURST = 3


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


@pytest.fixture
async def limiter() -> AsyncIterator[RateLimiter]:
    rules = {"rules": [{"name": "search", "algorithm": "fixed_window", "limit": 2, "window_s": 60}]}
    async with RateLimiter(rate=1, burst=BURST, rules=rules, clock=ManualClock()) as lim:
        yield lim


@asynccontextmanager
async def client_of(app: object) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        yield client


def fastapi_app(limiter: RateLimiter, **options: object) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, limiter=limiter, **options)  # type: ignore[arg-type]

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def test_middleware_sends_the_nodes_statuses_headers_and_bodies(
    limiter: RateLimiter,
) -> None:
    # The node's answers for the same limits, as a reference.
    settings = standalone_settings(rate=1, burst=BURST)
    node_app = create_app(settings, build_node(settings, clock=ManualClock()))
    app = fastapi_app(limiter, key=by_header("X-User-ID"))
    async with (
        node_app.router.lifespan_context(node_app),
        client_of(served(node_app)) as node,
        client_of(app) as client,
    ):
        for _ in range(BURST + 2):
            ours = await client.get("/hello", headers={"X-User-ID": "alice"})
            theirs = await node.post("/protected", headers={"X-User-ID": "alice"})
            assert ours.status_code == theirs.status_code
            for header in ("ratelimit-policy", "ratelimit", "retry-after"):
                assert ours.headers.get(header) == theirs.headers.get(header)
            if ours.status_code == 429:
                assert ours.json() == theirs.json()
                assert ours.json()["error"] == "rate_limited"
            else:
                assert ours.json() == {"hello": "world"}
        for headers in ({}, {"X-User-ID": " "}, {"X-User-ID": "x" * 257}):
            ours = await client.get("/hello", headers=headers)
            theirs = await node.post("/protected", headers=headers)
            assert ours.status_code == theirs.status_code == 400
            assert ours.json() == theirs.json()


async def test_exempt_paths_and_non_http_scopes_pass_through(limiter: RateLimiter) -> None:
    app = fastapi_app(limiter, key=by_header(), exempt={"/healthz"})
    async with client_of(app) as client:
        for _ in range(BURST + 2):
            response = await client.get("/healthz")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers


async def test_optional_keys_let_requests_through_unlimited(limiter: RateLimiter) -> None:
    app = fastapi_app(limiter, key=by_header("X-Tenant", required=False))
    async with client_of(app) as client:
        statuses = [(await client.get("/hello")).status_code for _ in range(BURST + 2)]
        assert statuses == [200] * (BURST + 2)
        tenant = [
            (await client.get("/hello", headers={"X-Tenant": "t1"})).status_code
            for _ in range(BURST + 1)
        ]
        assert tenant == [200] * BURST + [429]


async def test_by_client_limits_each_address(limiter: RateLimiter) -> None:
    app = fastapi_app(limiter, key=by_client())
    async with client_of(app) as client:
        statuses = [(await client.get("/hello")).status_code for _ in range(BURST + 1)]
    assert statuses == [200] * BURST + [429]
    assert limiter.node.engine.view("127.0.0.1", limiter.rules.default).consumed == BURST


async def test_by_client_behind_a_proxy_uses_the_forwarded_address(limiter: RateLimiter) -> None:
    app = fastapi_app(limiter, key=by_client("X-Forwarded-For"))
    async with client_of(app) as client:
        for _ in range(BURST):
            await client.get("/hello", headers={"X-Forwarded-For": "203.0.113.9, 10.0.0.1"})
        other = await client.get("/hello", headers={"X-Forwarded-For": "198.51.100.7"})
        same = await client.get("/hello", headers={"X-Forwarded-For": "203.0.113.9"})
    assert other.status_code == 200
    assert same.status_code == 429


async def test_api_keys_are_limited_by_digest_never_in_clear(limiter: RateLimiter) -> None:
    app = fastapi_app(limiter, key=by_api_key())
    async with client_of(app) as client:
        statuses = [
            (await client.get("/hello", headers={"X-API-Key": "sk-secret"})).status_code
            for _ in range(BURST + 1)
        ]
        missing = await client.get("/hello")
    assert statuses == [200] * BURST + [429]
    assert missing.status_code == 400
    assert "X-API-Key" in missing.json()["message"]
    [key] = limiter.node.engine.limiter(limiter.rules.default).keys()
    assert key.startswith("apikey:")
    assert "sk-secret" not in key


async def test_a_starlette_app_and_a_cost_per_request(limiter: RateLimiter) -> None:
    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse("stored")

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])
    app.add_middleware(
        RateLimitMiddleware,
        limiter=limiter,
        key=by_header(),
        cost=lambda request: int(request.headers.get("x-items", "1")),
    )
    async with client_of(app) as client:
        big = await client.post("/upload", headers={"X-User-ID": "u", "X-Items": "3"})
        small = await client.post("/upload", headers={"X-User-ID": "u"})
    assert big.text == "stored"
    assert big.headers["ratelimit"] == '"default";r=0;t=3'
    assert small.status_code == 429


async def test_dependency_limits_one_route_with_its_own_rule(limiter: RateLimiter) -> None:
    search_limit = RateLimit(limiter, by_header(), limit="search")
    app = FastAPI()
    install_handler(app)

    @app.get("/search")
    async def search(
        # A default rather than Annotated[...]: under `from __future__ import annotations`
        # FastAPI cannot resolve a string annotation naming this test's local variable.
        check: CheckResult | None = Depends(search_limit),  # noqa: B008
    ) -> dict[str, int | None]:
        return {"remaining": None if check is None else check.remaining}

    @app.get("/free")
    async def unlimited() -> dict[str, str]:
        return {"free": "yes"}

    async with client_of(app) as client:
        responses = [await client.get("/search", headers={"X-User-ID": "v"}) for _ in range(3)]
        free = await client.get("/free", headers={"X-User-ID": "v"})
        missing = await client.get("/search")

    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].json() == {"remaining": 1}
    assert responses[0].headers["ratelimit-policy"] == '"search";q=2;w=60'
    denied = responses[2]
    assert denied.json()["error"] == "rate_limited"
    assert denied.json()["allowed"] is False
    assert int(denied.headers["retry-after"]) >= 1
    assert free.status_code == 200
    assert "ratelimit" not in free.headers
    assert missing.status_code == 400
    assert missing.json() == {
        "error": "bad_request",
        "message": "the X-User-ID header is required",
    }


async def test_dependency_without_the_handler_still_answers_429(limiter: RateLimiter) -> None:
    app = FastAPI()

    @app.get("/x", dependencies=[Depends(RateLimit(limiter, by_header()))])
    async def x() -> dict[str, str]:
        return {}

    async with client_of(app) as client:
        statuses = [(await client.get("/x", headers={"X-User-ID": "w"})) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[3].headers["retry-after"] == "1"
    assert "rate_limited" in statuses[3].json()["detail"]


async def test_a_limiter_not_started_answers_503_with_retry_after() -> None:
    limiter = RateLimiter(clock=ManualClock())
    app = fastapi_app(limiter, key=by_header())
    async with client_of(app) as client:
        response = await client.get("/hello", headers={"X-User-ID": "z"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"] == "unavailable"
