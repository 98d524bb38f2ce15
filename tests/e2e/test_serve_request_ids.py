"""A real `ratelimiter serve` process: the request id of an HTTP request is echoed and is in
the node's log lines of that request; uvicorn's own lines share the node's format."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import Spawn
from tests.e2e.http import wait_until

pytestmark = pytest.mark.e2e

TOKEN = "an-admin-token-of-some-length"


def test_log_lines_of_a_request_carry_its_id(spawn: Spawn) -> None:
    node = spawn("rid-1", "none", "--admin-token", TOKEN)
    with httpx.Client(timeout=10) as client:
        response = client.put(
            f"{node.url}/v1/rules/gold",
            json={"prefix": "gold-", "rate": 5, "burst": 5},
            headers={"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "e2e-rid-42"},
        )
        made = client.post(f"{node.url}/protected", headers={"X-User-ID": "gold-1"})

    assert response.status_code == 200
    assert response.headers["x-request-id"] == "e2e-rid-42"
    assert len(made.headers["x-request-id"]) == 32

    def logged() -> bool:
        return (
            " rid-1 INFO ratelimiter.node [e2e-rid-42]: rules in force" in node.log_path.read_text()
        )

    wait_until(logged, 10, "the rule change logged with its request id")
    lines = node.log_path.read_text().splitlines()
    assert any(" rid-1 INFO uvicorn.error [-]: Application startup complete." in s for s in lines)
