"""The admin surface under hostile input: rules that would break answers, tokens, body caps,
and a client-claimed tier."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.bootstrap import build_node
from service.errors import ConfigError
from service.http.app import create_app
from service.rules.model import MAX_RULES, InvalidRule, rule_from_mapping
from service.settings import load_settings
from service.testing import ManualClock
from tests.service_helpers import clean_env, served

TOKEN = "an-admin-token-of-some-length"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


async def client_for(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    values = {"kafka": "none", "admin_token": TOKEN, **settings}
    node = build_node(load_settings(**values), clock=ManualClock())
    app = create_app(node.settings, node)
    transport = httpx.ASGITransport(app=served(app))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://node") as client,
    ):
        yield client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async for c in client_for():
        yield c


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prefix": "a", "rate": 1e-320, "burst": 1}, "rate"),
        ({"prefix": "a", "rate": 1e-9, "burst": 10}, "rate"),
        ({"prefix": "a", "rate": 1e300, "burst": 1}, "rate"),
        ({"prefix": "a", "algorithm": "fixed_window", "limit": 5, "window_s": 1e-300}, "window_s"),
    ],
)
async def test_a_rule_whose_answers_cannot_be_computed_is_refused_by_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    put = await client.put("/v1/rules/tiny", json=body, headers=ADMIN)

    assert put.status_code == 422, put.text
    assert put.json()["error"] == "invalid_rule"
    assert field in put.json()["message"]
    for user in ("alice", "bob"):
        response = await client.post("/protected", headers={"X-User-ID": user})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("token", ["", "   ", "short"])
def test_an_empty_or_short_admin_token_refuses_to_start(token: str) -> None:
    with pytest.raises(ConfigError, match=r"admin_token .*--admin-token.*RATELIMITER_ADMIN_TOKEN"):
        load_settings(kafka="none", admin_token=token)


async def test_admin_bodies_over_the_cap_are_413_before_they_are_read(
    client: httpx.AsyncClient,
) -> None:
    huge = b'{"rate": 1, "burst": 1, "prefix": "' + b"x" * (2 << 20) + b'"}'
    response = await client.put("/v1/rules/huge", content=huge, headers=ADMIN)

    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_the_tier_header_counts_only_when_trusted() -> None:
    rule = {"tier": "gold", "rate": 100, "burst": 100}
    answers = {}
    for trusted in (False, True):
        async for client in client_for(trust_tier_header=trusted):
            assert (await client.put("/v1/rules/gold", json=rule, headers=ADMIN)).is_success
            claimed = {"X-User-ID": "mallory", "X-User-Tier": "gold"}
            statuses = [
                (await client.post("/protected", headers=claimed)).status_code for _ in range(30)
            ]
            answers[trusted] = statuses.count(200)
    assert answers == {False: 20, True: 30}


async def test_the_dashboard_data_is_behind_the_token_when_one_is_set(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/dashboard/data")).status_code == 401
    assert (await client.get("/dashboard/data", headers=ADMIN)).status_code == 200
    assert (await client.get("/dashboard/data", params={"token": TOKEN})).status_code == 200
    assert (await client.get("/dashboard/data", params={"token": "wrong"})).status_code == 401


async def test_the_dashboard_data_is_computed_at_most_once_a_second(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = (await client.get("/dashboard/data", headers=ADMIN)).json()
    await client.post("/protected", headers={"X-User-ID": "carol"})
    again = (await client.get("/dashboard/data", headers=ADMIN)).json()
    assert again == first  # the same body, not recomputed within the second

    monkeypatch.setattr("service.http.dashboard.REFRESH_S", 0.0)
    fresh = (await client.get("/dashboard/data", headers=ADMIN)).json()
    assert fresh["decisions"]["admitted"] == first["decisions"]["admitted"] + 1


def test_beyond_a_thousand_rules_a_change_is_refused_with_the_reason() -> None:
    node = build_node(load_settings(kafka="none"), clock=ManualClock())
    many = {
        f"r{i}": rule_from_mapping({"prefix": f"p{i}-", "rate": 1, "burst": 1}, f"r{i}")
        for i in range(MAX_RULES + 1)
    }
    with pytest.raises(InvalidRule, match=f"at most {MAX_RULES}"):
        node.set_topic_rules(many)
    assert node.rules.rules == ()  # nothing changed

    many.popitem()
    node.set_topic_rules(many)
    assert len(node.rules.rules) == MAX_RULES


async def test_a_refund_gives_back_at_most_what_was_admitted(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await client.post("/protected", headers={"X-User-ID": "alice"})).status_code == 200
    huge = {"key": "alice", "cost": 10**12}
    refund = await client.post("/v1/refund", json=huge, headers=ADMIN)

    assert refund.status_code == 200
    body = refund.json()
    assert body["refunded"] == 3
    state = (await client.get("/v1/keys/alice")).json()
    assert state["consumed"] == 0  # never below zero: no credit beyond a full bucket
    nobody = await client.post("/v1/refund", json={"key": "bob", "cost": 5}, headers=ADMIN)
    assert nobody.json()["refunded"] == 0
