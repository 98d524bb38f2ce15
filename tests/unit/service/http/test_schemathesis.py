"""Schemathesis against the node's own OpenAPI: generated requests never get a 5xx."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation.case import Case

from service.http.app import create_asgi
from service.settings import load_settings

# The served stack: the /protected fast path in front of the FastAPI app (schemathesis
# runs its lifespan, so the node starts). The admin token makes /v1/refund reachable.
ASGI = create_asgi(load_settings(kafka="none", admin_token="secret-token-for-schemathesis"))
schema = schemathesis.openapi.from_asgi("/openapi.json", ASGI)
NON_JSON = ("/metrics", "/docs", "/openapi.json", "/redoc", "/dashboard")


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_json_errors(case: Case[Any]) -> None:
    response = case.call()
    assert response.status_code < 500, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
    )
    if case.path not in NON_JSON:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/json"), (case.path, content_type)
