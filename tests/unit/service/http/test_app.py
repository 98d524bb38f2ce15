"""The HTTP surface of a standalone node, in process: /protected, /v1/check, state, probes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from service.bootstrap import build_node
from service.http.app import create_app, create_asgi
from service.http.fastpath import FastPath
from service.testing import ManualClock
from tests.service_helpers import clean_env, served, standalone_settings

RULES = """
rules:
  - {name: gold, tier: gold, rate: 100, burst: 3}
  - {name: exports, algorithm: fixed_window, limit: 5, window_s: 60}
"""


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


def build_app(clock: ManualClock, rules: Path) -> FastAPI:
    settings = standalone_settings(node_id="solo", rules=str(rules), trust_tier_header=True)
    return create_app(settings, build_node(settings, clock=clock))


@asynccontextmanager
async def serve(app: FastAPI, *, fast_path: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """A client of what uvicorn serves (or of the FastAPI app alone), lifespan around it."""
    asgi = served(app) if fast_path else app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            yield client


@pytest.fixture
async def client(clock: ManualClock, rules_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app(clock, rules_file)) as c:
        yield c


def json_error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str)
    assert isinstance(body["message"], str)
    return body


# -- /protected -----------------------------------------------------------------


async def test_burst_then_denied_with_a_frozen_clock(client: httpx.AsyncClient) -> None:
    responses = [await client.post("/protected", headers={"X-User-ID": "alice"}) for _ in range(30)]

    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 20 + [429] * 10
    for i, response in enumerate(responses):
        assert response.headers["ratelimit-policy"] == '"default";q=20;w=2'
        assert response.headers["content-type"] == "application/json"
        if response.status_code == 200:
            assert "retry-after" not in response.headers
            # remaining r after this request; t: seconds until the bucket is full again
            remaining = 19 - i
            assert response.json() == {"allowed": True, "remaining": remaining}
            t = -(-(20 - remaining) // 10)  # ceil((20 - r) / rate)
            assert response.headers["ratelimit"] == f'"default";r={remaining};t={t}'
        else:
            assert response.headers["retry-after"] == "1"  # one token at 10/s: 0.1 s -> 1
            assert response.headers["ratelimit"] == '"default";r=0;t=2'
            body = response.json()
            assert body["allowed"] is False
            assert body["error"] == "rate_limited"
            assert body["retry_after_ms"] == 100


async def test_users_are_independent(client: httpx.AsyncClient) -> None:
    for _ in range(20):
        await client.post("/protected", headers={"X-User-ID": "alice"})

    assert (await client.post("/protected", headers={"X-User-ID": "alice"})).status_code == 429
    assert (await client.post("/protected", headers={"X-User-ID": "bob"})).status_code == 200


async def test_refill_follows_the_clock(client: httpx.AsyncClient, clock: ManualClock) -> None:
    for _ in range(20):
        await client.post("/protected", headers={"X-User-ID": "alice"})
    assert (await client.post("/protected", headers={"X-User-ID": "alice"})).status_code == 429

    clock.advance(0.1)  # one token at 10/s

    assert (await client.post("/protected", headers={"X-User-ID": "alice"})).status_code == 200
    assert (await client.post("/protected", headers={"X-User-ID": "alice"})).status_code == 429


async def test_tier_header_selects_a_rule(client: httpx.AsyncClient) -> None:
    headers = {"X-User-ID": "carol", "X-User-Tier": "gold"}
    statuses = [(await client.post("/protected", headers=headers)).status_code for _ in range(4)]

    assert statuses == [200, 200, 200, 429]
    last = await client.post("/protected", headers=headers)
    assert last.headers["ratelimit-policy"] == '"gold";q=3;w=1'


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"X-User-ID", b"")],
        [(b"X-User-ID", b"   ")],
        [(b"X-User-ID", b"\xff\xfeabc")],
        [(b"X-User-ID", b"u" * 257)],
        [(b"X-User-ID", b"alice"), (b"X-User-ID", b"bob")],
        [(b"X-User-ID", b" alice")],
        [(b"X-User-ID", b"al\x01ice")],
        [(b"X-User-ID", b"alice"), (b"X-User-Tier", "gold\u00e9".encode())],
    ],
    ids=[
        "missing",
        "empty",
        "whitespace",
        "non-utf8",
        "oversized",
        "duplicated",
        "surrounding-blank",
        "control-char",
        "non-ascii-tier",
    ],
)
async def test_unusable_user_ids_are_400_json(
    client: httpx.AsyncClient, headers: list[tuple[bytes, bytes]]
) -> None:
    response = await client.post("/protected", headers=headers)

    assert response.status_code == 400
    assert json_error(response)["error"] == "bad_request"
    assert "ratelimit" not in response.headers


async def test_user_id_of_256_bytes_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/protected", headers={"X-User-ID": "u" * 256})

    assert response.status_code == 200


async def test_fastapi_route_answers_like_the_fast_path(
    clock: ManualClock, rules_file: Path
) -> None:
    requests: list[list[tuple[bytes, bytes]]] = [[(b"X-User-ID", b"alice")]] * 22 + [
        [(b"X-User-ID", b"bob"), (b"X-User-Tier", b"gold")],
        [],
        [(b"X-User-ID", b"")],
        [(b"X-User-ID", b"   ")],
        [(b"X-User-ID", b"\xff")],
        [(b"X-User-ID", b"u" * 257)],
        [(b"X-User-ID", b"a"), (b"X-User-ID", b"b")],
    ]

    async def answers(fast_path: bool) -> list[tuple[int, dict[str, str], bytes]]:
        out = []
        app = build_app(ManualClock(clock.t), rules_file)
        async with serve(app, fast_path=fast_path) as c:
            for headers in requests:
                r = await c.post("/protected", headers=headers)
                out.append((r.status_code, dict(r.headers), r.content))
        return out

    fast = await answers(fast_path=True)
    routed = await answers(fast_path=False)

    assert [status for status, _, _ in fast][:22] == [200] * 20 + [429] * 2
    assert fast == routed


# -- /v1/check ------------------------------------------------------------------


async def test_check_happy_path(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/check", json={"key": "k1", "cost": 5})

    assert response.status_code == 200
    assert response.json() == {
        "allowed": True,
        "remaining": 15,
        "limit": 20,
        "retry_after_ms": 0,
        "reset_after_ms": 500,
        "rule": "default",
    }


async def test_check_default_cost_is_one_and_denial_says_when(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/v1/check", json={"key": "k2", "cost": 20})).json()["allowed"]

    response = await client.post("/v1/check", json={"key": "k2"})

    assert response.status_code == 200
    body = response.json()
    assert body["allowed"] is False
    assert body["remaining"] == 0
    assert body["retry_after_ms"] == 100


async def test_cost_above_burst_is_denied_not_an_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/check", json={"key": "k3", "cost": 21})

    assert response.status_code == 200
    body = response.json()
    assert body["allowed"] is False
    assert body["retry_after_ms"] is None
    # Nothing was spent: the key still holds its whole burst.
    assert (await client.post("/v1/check", json={"key": "k3", "cost": 20})).json()["allowed"]


async def test_check_named_limit(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/check", json={"key": "k4", "cost": 5, "limit": "exports"})

    assert response.status_code == 200
    assert response.json()["rule"] == "exports"
    assert response.json()["limit"] == 5
    denied = await client.post("/v1/check", json={"key": "k4", "limit": "exports"})
    assert denied.json()["allowed"] is False


async def test_unknown_limit_is_a_json_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/check", json={"key": "k", "limit": "platinum"})

    assert response.status_code == 404
    body = json_error(response)
    assert body["error"] == "unknown_rule"
    assert "platinum" in body["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"cost": 1}',
        b'{"key": "", "cost": 1}',
        b'{"key": "   "}',
        b'{"key": "k", "cost": 0}',
        b'{"key": "k", "cost": -1}',
        b'{"key": "k", "cost": "5"}',
        b'{"key": "k", "cost": 1.5}',
        b'{"key": "k", "cost": 1e13}',
        b'{"key": "k", "cost": 10000000000000}',
        b'{"key": "k", "cost": true}',
        b'{"key": 5}',
        b'{"key": "k", "colour": "red"}',
        b'{"key": "' + b"u" * 257 + b'"}',
        b'{"key": "k", "limit": ""}',
        b"[]",
        b'"k"',
        b"{",
        b"",
        b"\xff\xfe",
    ],
)
async def test_bad_check_bodies_are_422(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/v1/check", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422, response.text
    assert json_error(response)["error"] == "invalid_request"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"key": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"key": "k", "cost": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    ],
    ids=["lists", "nested-in-key", "nested-objects"],
)
async def test_deeply_nested_json_is_a_client_error(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/v1/check", content=body, headers={"content-type": "application/json"}
    )

    assert 400 <= response.status_code < 500, response.text
    json_error(response)


# -- state, probes, metrics, docs ---------------------------------------------------


async def test_key_state_shape(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await client.post("/protected", headers={"X-User-ID": "dave"})

    response = await client.get("/v1/keys/dave")

    assert response.status_code == 200
    body = response.json()
    replica = body["replica"]
    assert replica.startswith("solo/")
    assert body["key"] == "dave"
    assert body["rule"] == "default"
    assert body["consumed"] == 3
    assert body["contributions"] == {replica: 3}
    assert body["tokens"] == pytest.approx(17)
    assert body["capacity"] == 20


async def test_key_state_of_an_unknown_key_is_a_full_bucket(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/keys/nobody")).json()

    assert body["consumed"] == 0
    assert body["contributions"] == {}
    assert body["tokens"] == pytest.approx(20)


async def test_key_state_named_limit(client: httpx.AsyncClient) -> None:
    await client.post("/v1/check", json={"key": "erin", "cost": 2, "limit": "exports"})

    body = (await client.get("/v1/keys/erin", params={"limit": "exports"})).json()
    assert body["rule"] == "exports"
    assert body["consumed"] == 2
    unknown = await client.get("/v1/keys/erin", params={"limit": "nope"})
    assert unknown.status_code == 404
    json_error(unknown)


async def test_key_state_refuses_oversized_keys(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/keys/" + "u" * 257)

    assert response.status_code == 400
    json_error(response)


async def test_probes(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    ready = await client.get("/readyz")

    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert ready.json()["standalone"] is True


async def test_not_ready_before_start(clock: ManualClock, rules_file: Path) -> None:
    transport = httpx.ASGITransport(app=served(build_app(clock, rules_file)))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        ready = await client.get("/readyz")
        protected = await client.post("/protected", headers={"X-User-ID": "alice"})
        check = await client.post("/v1/check", json={"key": "alice"})

    assert ready.status_code == 503
    assert ready.json()["error"] == "starting"  # a not-ready node always says why
    for response in (protected, check):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert json_error(response)["error"] == "unavailable"


async def test_metrics(client: httpx.AsyncClient) -> None:
    await client.post("/protected", headers={"X-User-ID": "frank"})

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'ratelimiter_decisions_total{outcome="admitted",rule="default"} 1.0' in text
    assert "ratelimiter_ready 1.0" in text
    assert "ratelimiter_tracked_keys" in text


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope")
    wrong_method = await client.get("/v1/check")

    assert missing.status_code == 404
    assert json_error(missing)["error"] == "not_found"
    assert wrong_method.status_code == 405
    assert json_error(wrong_method)["error"] == "method_not_allowed"


async def test_openapi_and_docs(client: httpx.AsyncClient) -> None:
    spec = await client.get("/openapi.json")
    docs = await client.get("/docs")

    assert spec.status_code == 200
    paths = orjson.loads(spec.content)["paths"]
    assert "post" in paths["/protected"]
    assert "post" in paths["/v1/check"]
    assert "/v1/keys/{key}" in paths
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_create_asgi_puts_the_fast_path_in_front_of_the_app() -> None:
    asgi = create_asgi(standalone_settings(node_id="served"))
    assert isinstance(asgi, FastPath)
    app = asgi.app
    assert isinstance(app, FastAPI)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            protected = await client.post("/protected", headers={"X-User-ID": "alice"})
            health = await client.get("/healthz")
            missing = await client.get("/protected")

    assert protected.status_code == 200
    assert protected.headers["ratelimit-policy"] == '"default";q=20;w=2'
    assert health.json()["node"] == "served"
    assert missing.status_code == 405


async def test_the_check_answer_is_the_openapi_schema_of_check_result(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    check = schema["paths"]["/v1/check"]["post"]["responses"]["200"]
    refs = [s["$ref"] for s in check["content"]["application/json"]["schema"]["anyOf"]]
    assert refs == ["#/components/schemas/CheckResult", "#/components/schemas/BatchCheckResult"]
    fields = schema["components"]["schemas"]["CheckResult"]["properties"]

    body = (await client.post("/v1/check", json={"key": "schema", "cost": 1})).json()

    assert set(body) == set(fields) == set(required := fields.keys())
    assert required == {"allowed", "remaining", "limit", "retry_after_ms", "reset_after_ms", "rule"}


async def test_every_429_has_one_body_shape(client: httpx.AsyncClient) -> None:
    for _ in range(20):
        await client.post("/protected", headers={"X-User-ID": "shape"})

    response = await client.post("/protected", headers={"X-User-ID": "shape"})

    assert response.status_code == 429
    assert response.json() == {
        "error": "rate_limited",
        "message": "rate limit exceeded for 'shape'",
        "allowed": False,
        "remaining": 0,
        "retry_after_ms": 100,
    }


async def test_a_batch_of_checks_is_answered_in_order(client: httpx.AsyncClient) -> None:
    checks = [
        {"key": "b1", "cost": 15},
        {"key": "b1", "cost": 10},
        {"key": "b2"},
        {"key": "b1", "limit": "no-such-rule"},
        {"key": "b1", "cost": 5},
    ]
    response = await client.post("/v1/check", json={"checks": checks})

    assert response.status_code == 200
    results = response.json()["results"]
    assert [r.get("allowed") for r in results] == [True, False, True, None, True]
    assert [r.get("remaining") for r in results] == [5, 5, 19, None, 0]
    assert results[3]["error"] == "unknown_rule"
    one = (await client.post("/v1/check", json={"key": "b1"})).json()
    assert one["allowed"] is False  # the batch spent what it admitted


@pytest.mark.parametrize(
    "body",
    [
        {"checks": []},
        {"checks": [{"key": "k"}] * 1001},
        {"checks": [{"key": ""}]},
        {"checks": [{"key": "k", "cost": 0}]},
        {"checks": "k"},
        {"checks": [{"key": "k"}], "key": "k"},
    ],
    ids=["empty", "too-many", "bad-key", "bad-cost", "not-a-list", "mixed"],
)
async def test_bad_batches_are_422_and_decide_nothing(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post("/v1/check", json=body)

    assert response.status_code == 422, response.text
    assert json_error(response)["error"] == "invalid_request"
    assert (await client.get("/v1/keys/k")).json()["consumed"] == 0


async def test_a_body_over_a_mebibyte_is_413_before_it_is_parsed(
    client: httpx.AsyncClient,
) -> None:
    declared = await client.post(
        "/v1/check", content=b"{" + b" " * (1 << 20) + b"}", headers={"content-type": "x"}
    )

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):  # no content-length: counted while it streams
            yield b" " * 65536

    streamed = await client.post("/v1/check", content=chunks())

    for response in (declared, streamed):
        assert response.status_code == 413
        assert json_error(response)["error"] == "payload_too_large"


@pytest.mark.parametrize(
    "body",
    [
        {"key": "same", "cost": 3},
        {"key": "same", "cost": 100},
        {"key": "same", "limit": "nope"},
        {"checks": [{"key": "same"}, {"key": "same", "cost": 2}]},
        {"key": ""},
    ],
)
async def test_the_fast_path_answers_as_the_documented_route(
    clock: ManualClock, rules_file: Path, body: dict[str, Any]
) -> None:
    answers = []
    for fast_path in (True, False):
        async with serve(build_app(clock, rules_file), fast_path=fast_path) as c:
            response = await c.post("/v1/check", json=body)
            answers.append((response.status_code, response.json()))
    (fast_status, fast), (slow_status, slow) = answers
    assert fast_status == slow_status
    if fast_status == 422:
        assert fast["error"] == slow["error"] == "invalid_request"
    else:
        assert fast == slow
