"""X-Request-ID on every HTTP answer: taken when usable, else made here; echoed by the fast
path and the FastAPI routes alike, errors included, and in every log line of the request."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.bootstrap import build_node
from service.cli.serve import LOG_FORMAT
from service.engine import Decision
from service.http.app import create_app
from service.node import Node
from service.observability.request_id import MAX_LENGTH, RequestIdFilter
from service.rules.model import Rule
from service.settings import load_settings
from service.testing import ManualClock
from tests.service_helpers import clean_env, served

TOKEN = "an-admin-token-of-some-length"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MADE = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


@pytest.fixture
def app() -> FastAPI:
    node = build_node(
        load_settings(kafka="none", admin_token=TOKEN, node_id="ids", burst=1),
        clock=ManualClock(),
    )
    return create_app(node.settings, node)


@pytest.fixture(params=[True, False], ids=["served", "app-alone"])
async def client(request: pytest.FixtureRequest, app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # A 500 is answered, then re-raised to the server (as uvicorn sees it): not to the test.
    transport = httpx.ASGITransport(
        app=served(app) if request.param else app, raise_app_exceptions=False
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://node") as c,
    ):
        yield c


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The log as the node's handlers see it (through the request id filter)."""
    caplog.set_level(logging.INFO)
    request_ids = RequestIdFilter()
    caplog.handler.addFilter(request_ids)
    yield caplog
    caplog.handler.removeFilter(request_ids)


def boom(*args: Any) -> Any:
    raise RuntimeError("a bug")


REQUESTS: list[tuple[str, str, dict[str, Any], int]] = [
    ("POST", "/protected", {"headers": {"X-User-ID": "alice"}}, 200),
    ("POST", "/protected", {"headers": {"X-User-ID": "alice"}}, 429),
    ("POST", "/protected", {}, 400),
    ("POST", "/v1/check", {"json": {"key": "bob"}}, 200),
    ("POST", "/v1/check", {"json": {"key": ""}}, 422),
    ("POST", "/v1/check", {"json": {"all": [{"key": "bob", "limit": "nope"}]}}, 404),
    ("GET", "/healthz", {}, 200),
    ("GET", "/v1/keys/alice", {}, 200),
    ("GET", "/nope", {}, 404),
    ("GET", "/v1/check", {}, 405),
    ("PUT", "/v1/rules/x", {"json": {"rate": 1, "burst": 1}}, 401),
    ("GET", "/openapi.json", {}, 200),
]


@pytest.mark.parametrize(("method", "path", "options", "status"), REQUESTS)
async def test_a_given_id_is_echoed_on_every_route(
    client: httpx.AsyncClient, method: str, path: str, options: dict[str, Any], status: int
) -> None:
    if status == 429:
        await client.post("/protected", headers={"X-User-ID": "alice"})
    given = {**options.get("headers", {}), "X-Request-ID": "given-0042_abc:Z~"}
    rest = {name: value for name, value in options.items() if name != "headers"}

    response = await client.request(method, path, headers=given, **rest)

    assert response.status_code == status
    assert response.headers.get_list("x-request-id") == ["given-0042_abc:Z~"]


@pytest.mark.parametrize("path", ["/v1/check", "/v1/rules/x"])
async def test_a_body_too_large_carries_its_id(app: FastAPI, path: str) -> None:
    transport = httpx.ASGITransport(app=served(app))  # 413 is the served stack's
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://node") as client,
    ):
        response = await client.request(
            "POST" if path == "/v1/check" else "PUT",
            path,
            content=b" " * (1 << 20 | 1),
            headers={"X-Request-ID": "big-1"},
        )
    assert response.status_code == 413
    assert response.headers.get_list("x-request-id") == ["big-1"]


async def test_an_unhandled_error_still_carries_its_id(
    app: FastAPI, client: httpx.AsyncClient, logs: pytest.LogCaptureFixture
) -> None:
    app.state.node.engine.view = boom

    response = await client.get("/v1/keys/alice", headers={"X-Request-ID": "bug-1"})

    assert response.status_code == 500
    assert response.headers["x-request-id"] == "bug-1"
    logged = [r for r in logs.records if r.getMessage().startswith("unhandled error")]
    assert [r.request_id for r in logged] == ["bug-1"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "given",
    [b"", b"has space", b"x" * (MAX_LENGTH + 1), "caf\u00e9".encode(), b"a\x01b", b"a\tb"],
    ids=["empty", "space", "too-long", "non-ascii", "control", "tab"],
)
async def test_an_unusable_id_is_replaced(client: httpx.AsyncClient, given: bytes) -> None:
    for path in ("/protected", "/healthz"):
        response = await client.request(
            "POST" if path == "/protected" else "GET",
            path,
            headers=[(b"X-User-ID", b"carol"), (b"X-Request-ID", given)],
        )
        made = response.headers["x-request-id"]
        assert MADE.fullmatch(made), made
        assert made.encode() != given


async def test_the_longest_usable_id_is_kept(client: httpx.AsyncClient) -> None:
    given = "~" * MAX_LENGTH
    response = await client.get("/healthz", headers={"X-Request-ID": given})
    assert response.headers["x-request-id"] == given


async def test_made_ids_never_repeat_across_fast_path_and_routes(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=served(app))
    seen = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://node") as client,
    ):
        for i in range(50):
            if i % 2:
                response = await client.get("/healthz")
            else:
                response = await client.post("/protected", headers={"X-User-ID": f"u{i}"})
            seen.append(response.headers["x-request-id"])
    assert all(MADE.fullmatch(rid) for rid in seen)
    assert len(set(seen)) == len(seen)


async def test_every_log_line_of_a_fast_path_request_carries_its_id(
    app: FastAPI, client: httpx.AsyncClient, logs: pytest.LogCaptureFixture
) -> None:
    node: Node = app.state.node
    decide = node.decide
    logger = logging.getLogger("ratelimiter.node")

    def logged_decide(key: str, cost: int, rule: Rule) -> Decision:
        logger.info("deciding for a test")
        return decide(key, cost, rule)

    node.decide = logged_decide  # type: ignore[method-assign]
    logger.info("before any request")
    await client.post("/protected", headers={"X-User-ID": "dan", "X-Request-ID": "r-1"})
    await client.post("/v1/check", json={"key": "dan"}, headers={"X-Request-ID": "r-2"})
    made = (await client.post("/protected", headers={"X-User-ID": "dan"})).headers["x-request-id"]
    logger.info("after every request")

    lines = [
        (r.getMessage(), r.request_id)  # type: ignore[attr-defined]
        for r in logs.records
        if r.name.startswith("ratelimiter")
    ]
    assert lines == [
        ("before any request", "-"),
        ("deciding for a test", "r-1"),
        ("deciding for a test", "r-2"),
        ("deciding for a test", made),
        ("after every request", "-"),
    ]


async def test_log_lines_of_an_admin_request_carry_its_id(
    client: httpx.AsyncClient, logs: pytest.LogCaptureFixture
) -> None:
    response = await client.put(
        "/v1/rules/gold",
        json={"prefix": "gold-", "rate": 5, "burst": 5},
        headers={**ADMIN, "X-Request-ID": "admin-7"},
    )

    assert response.status_code == 200
    logged = [r for r in logs.records if r.getMessage().startswith("rules in force")]
    assert [r.request_id for r in logged] == ["admin-7"]  # type: ignore[attr-defined]


def test_the_node_log_format_shows_the_request_id() -> None:
    record = logging.LogRecord("ratelimiter.node", logging.INFO, __file__, 1, "hello", None, None)
    RequestIdFilter().filter(record)
    record.request_id = "abc-1"

    line = logging.Formatter(LOG_FORMAT.format(node_id="n1")).format(record)

    assert line.endswith(" n1 INFO ratelimiter.node [abc-1]: hello")
