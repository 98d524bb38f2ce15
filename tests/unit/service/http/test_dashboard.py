"""GET /dashboard and /dashboard/data of a standalone node, in process."""

from __future__ import annotations

import httpx
import pytest

from service.bootstrap import build_node
from service.http.app import create_app
from service.testing import ManualClock
from tests.service_helpers import clean_env, served, standalone_settings


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


async def test_data_reports_totals_rates_and_top_keys() -> None:
    settings = standalone_settings(node_id="dash")
    app = create_app(settings, build_node(settings, clock=ManualClock()))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=served(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            for user, count in (("alice", 30), ("bob", 3)):
                for _ in range(count):
                    await client.post("/protected", headers={"X-User-ID": user})
            page = await client.get("/dashboard")
            data = (await client.get("/dashboard/data")).json()

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="admitted-total"' in page.text
    assert "dashboard/data" in page.text
    assert data["node"] == "dash"
    assert data["standalone"] is True
    assert data["decisions"] == {"admitted": 23, "denied": 10}
    assert data["rates"]["admitted_per_s"] > 0
    assert data["peers"] == []
    assert data["tracked_keys"] == 2
    assert [(k["key"], k["consumed"]) for k in data["top_keys"]] == [("alice", 20), ("bob", 3)]
    assert data["top_keys"][0]["tokens"] == 0
    assert data["sync_lag"] == {"count": 0, "mean_ms": None, "p50_ms": None, "p99_ms": None}
    assert set(data["loop_lag"]) == {"count", "mean_ms", "p50_ms", "p99_ms"}
