"""Every error a client can see, as one JSON shape: {"error": code, "message": text}."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from service.errors import RateLimiterError

log = logging.getLogger("ratelimiter.http")

JSON = b"application/json"


def error_body(code: str, message: str, **extra: Any) -> bytes:
    """The JSON body of an error response."""
    return orjson.dumps({"error": code, "message": message, **extra})


def status_of(exc: RateLimiterError) -> int:
    """The HTTP status a project error maps to (500 for ones never meant for clients)."""
    return int(getattr(exc, "http_status", 500))


def code_of(exc: BaseException) -> str:
    """snake_case of the exception class: BadRequest -> bad_request."""
    name = type(exc).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def invalid_request(
    errors: Sequence[Mapping[str, Any]] | Sequence[Any], prefix: tuple[str, ...] = ()
) -> bytes:
    """The 422 body of an invalid request: one entry per problem, where and what."""
    problems = [
        {
            "loc": [*prefix, *(str(p) for p in e.get("loc", ()))],
            "msg": str(e.get("msg")),
            "type": e.get("type"),
        }
        for e in errors
    ]
    return error_body("invalid_request", "the request body is invalid", detail=problems)


def error_response(exc: RateLimiterError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of a project error, for raw ASGI paths and FastAPI alike."""
    status = status_of(exc)
    headers: list[tuple[bytes, bytes]] = []
    if status == 503:
        headers.append((b"retry-after", b"1"))
    elif status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="ratelimiter"'))
    return status, headers, error_body(code_of(exc), str(exc))


def _response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def install(app: FastAPI) -> None:
    """Map errors to HTTP in one place."""

    @app.exception_handler(RateLimiterError)
    async def _ours(request: Request, exc: RateLimiterError) -> Response:
        status, headers, body = error_response(exc)
        return _response(status, body, {k.decode(): v.decode() for k, v in headers})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _response(422, invalid_request(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        return _response(exc.status_code, error_body(code, str(exc.detail)), headers)

    @app.exception_handler(RecursionError)
    async def _deep(request: Request, exc: RecursionError) -> Response:
        return _response(400, error_body("bad_request", "JSON nested too deeply"))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _response(500, error_body("internal_error", "internal error; see the node's log"))
