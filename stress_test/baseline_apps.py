"""Baselines served in the same benchmark run as the node: a bare FastAPI route, a raw
ASGI app, and slowapi on Redis (moving window), each answering POST /protected."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def bare_fastapi() -> FastAPI:
    """The ceiling of a FastAPI app: a route that always answers 200."""
    app = FastAPI()

    @app.post("/protected")
    async def protected() -> dict[str, bool]:
        return {"allowed": True}

    return app


async def raw_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ceiling of any Python ASGI app under uvicorn."""
    if scope["type"] != "http":
        return
    body = b'{"allowed":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"16")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def slowapi_redis() -> FastAPI:
    """slowapi with a Redis moving window keyed by X-User-ID: 10/second, as the node."""
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded

    def user_key(request: Request) -> str:
        return request.headers.get("x-user-id", "anonymous")

    limiter = Limiter(
        key_func=user_key,
        storage_uri=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"),
        strategy="moving-window",
    )
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.post("/protected")
    @limiter.limit("10/second")
    async def protected(request: Request) -> JSONResponse:
        return JSONResponse({"allowed": True})

    return app
