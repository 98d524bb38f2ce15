"""POST /v1/check {"all": [...]}: several limits decided as one, on the fast path and the
documented route alike: admitted only if every limit admits, a denial takes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.bootstrap import build_node
from service.http.app import create_app
from service.http.contract import MAX_ALL
from service.testing import ManualClock
from tests.service_helpers import clean_env, served, standalone_settings

RULES = """
rules:
  - {name: per-user, prefix: "never-", rate: 1, burst: 5}
  - {name: per-org, prefix: "never-", rate: 1, burst: 8}
  - {name: daily, algorithm: fixed_window, limit: 3, window_s: 86400}
  - {name: soft, prefix: "never-", rate: 1, burst: 1, shadow: true}
"""


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


def build_app(rules: Path) -> FastAPI:
    settings = standalone_settings(node_id="atomic", rules=str(rules))
    return create_app(settings, build_node(settings, clock=ManualClock(86_400.0 * 100)))


@asynccontextmanager
async def serve(app: FastAPI, *, fast_path: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    asgi = served(app) if fast_path else app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            yield client


@pytest.fixture(params=[True, False], ids=["fast-path", "route"])
async def client(
    request: pytest.FixtureRequest, rules_file: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app(rules_file), fast_path=request.param) as c:
        yield c


async def consumed(client: httpx.AsyncClient, key: str, limit: str) -> int:
    body = (await client.get(f"/v1/keys/{key}", params={"limit": limit})).json()
    value: int = body["consumed"]
    return value


def both(user_cost: int = 1, org_cost: int = 1) -> dict[str, Any]:
    return {
        "all": [
            {"key": "alice", "cost": user_cost, "limit": "per-user"},
            {"key": "acme", "cost": org_cost, "limit": "per-org"},
        ]
    }


async def test_all_admitted_takes_every_cost(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/check", json=both(2, 3))

    assert response.status_code == 200
    body = response.json()
    assert body["allowed"] is True
    assert body["denied_by"] == []
    assert [(r["rule"], r["allowed"], r["remaining"]) for r in body["results"]] == [
        ("per-user", True, 3),
        ("per-org", True, 5),
    ]
    assert set(body["results"][0]) == {
        "allowed",
        "remaining",
        "limit",
        "retry_after_ms",
        "reset_after_ms",
        "rule",
    }
    assert await consumed(client, "alice", "per-user") == 2
    assert await consumed(client, "acme", "per-org") == 3


async def test_a_denial_names_its_limit_and_takes_nothing_anywhere(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/v1/check", json=both(1, 7))).json()["allowed"] is True

    # per-user has 4 left, per-org 1: asking 2 of each is denied by per-org alone.
    response = await client.post("/v1/check", json=both(2, 2))

    body = response.json()
    assert response.status_code == 200
    assert body["allowed"] is False
    assert body["denied_by"] == ["per-org"]
    user, org = body["results"]
    assert (user["allowed"], org["allowed"]) == (True, False)
    assert org["retry_after_ms"] == 1000  # one token at 1/s
    assert user["remaining"] == 4  # looked at, not taken
    assert await consumed(client, "alice", "per-user") == 1
    assert await consumed(client, "acme", "per-org") == 7
    # Still all or nothing afterwards: what fits in both is admitted and taken from both.
    assert (await client.post("/v1/check", json=both(1, 1))).json()["allowed"] is True
    assert await consumed(client, "alice", "per-user") == 2
    assert await consumed(client, "acme", "per-org") == 8


async def test_a_shadow_limit_never_denies(client: httpx.AsyncClient) -> None:
    body = {"all": [{"key": "dan", "cost": 3, "limit": "soft"}, {"key": "dan", "limit": "daily"}]}

    answer = (await client.post("/v1/check", json=body)).json()

    assert answer["allowed"] is True
    assert answer["denied_by"] == []
    assert await consumed(client, "dan", "daily") == 1


async def test_costs_on_one_limit_and_key_add_up(client: httpx.AsyncClient) -> None:
    body = {"all": [{"key": "eve", "cost": 3, "limit": "per-user"}] * 2}

    answer = (await client.post("/v1/check", json=body)).json()

    assert answer["allowed"] is False
    assert answer["denied_by"] == ["per-user", "per-user"]
    assert await consumed(client, "eve", "per-user") == 0


async def test_the_default_rule_applies_without_limit(client: httpx.AsyncClient) -> None:
    answer = (await client.post("/v1/check", json={"all": [{"key": "fay", "cost": 5}]})).json()

    assert answer["allowed"] is True
    assert answer["results"][0]["rule"] == "default"
    assert answer["results"][0]["remaining"] == 15


async def test_an_unknown_limit_decides_nothing(client: httpx.AsyncClient) -> None:
    body = {"all": [{"key": "gus", "limit": "per-user"}, {"key": "gus", "limit": "nope"}]}

    response = await client.post("/v1/check", json=body)

    assert response.status_code == 404
    assert response.json()["error"] == "unknown_rule"
    assert await consumed(client, "gus", "per-user") == 0


@pytest.mark.parametrize(
    "body",
    [
        {"all": []},
        {"all": [{"key": "k"}] * (MAX_ALL + 1)},
        {"all": [{"key": "k", "cost": 0}]},
        {"all": [{"key": ""}]},
        {"all": "k"},
        {"all": [{"key": "k"}], "key": "k"},
        {"all": [{"key": "k"}], "checks": [{"key": "k"}]},
    ],
    ids=["empty", "too-many", "bad-cost", "bad-key", "not-a-list", "mixed-single", "mixed-batch"],
)
async def test_bad_atomic_checks_are_422_and_decide_nothing(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post("/v1/check", json=body)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"
    assert await consumed(client, "k", "default") == 0


@pytest.mark.parametrize(
    "bodies",
    [
        [both(1, 7), both(2, 2), both(1, 1)],
        [{"all": [{"key": "x", "cost": 30}]}],
        [{"all": [{"key": "x", "limit": "nope"}]}],
    ],
    ids=["sequence", "never-fits", "unknown"],
)
async def test_the_fast_path_answers_as_the_documented_route(
    rules_file: Path, bodies: list[dict[str, Any]]
) -> None:
    answers = []
    for fast_path in (True, False):
        async with serve(build_app(rules_file), fast_path=fast_path) as c:
            answers.append(
                [
                    (r.status_code, r.json())
                    for r in [await c.post("/v1/check", json=body) for body in bodies]
                ]
            )
    assert answers[0] == answers[1]


async def test_the_openapi_schema_documents_it(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    body = schema["paths"]["/v1/check"]["post"]["requestBody"]["content"]["application/json"]
    refs = [s["$ref"] for s in body["schema"]["anyOf"]]
    components = schema["components"]["schemas"]

    assert "#/components/schemas/AtomicCheckRequest" in refs
    atomic = components["AtomicCheckRequest"]
    assert atomic["required"] == ["all"]
    assert atomic["properties"]["all"]["maxItems"] == MAX_ALL
    answer = components["BatchCheckResult"]["properties"]
    assert {"results", "allowed", "denied_by"} <= set(answer)
    assert "denied_by" in components["BatchCheckResult"]["description"]
