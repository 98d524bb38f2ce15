"""ASGI middleware and a FastAPI dependency limiting requests with a `RateLimiter`.

Both answer like a node's `POST /protected`: 429 with the same JSON body,
`RateLimit-Policy`/`RateLimit` headers (IETF httpapi draft) and `Retry-After`; admitted
responses carry the RateLimit headers too. A key function picks what is limited: a
header (`by_header`), the client address (`by_client`) or an API key (`by_api_key`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection

from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.engine import validate_key
from service.errors import BadRequest, RateLimiterError
from service.http.contract import CheckResult, rate_limited_body
from service.http.errors import error_response
from service.http.fastpath import Answer, send_answer
from service.library import RateLimiter

__all__ = [
    "KeyFunc",
    "RateLimit",
    "RateLimitMiddleware",
    "RateLimitRejected",
    "by_api_key",
    "by_client",
    "by_header",
    "install_handler",
]

# The key of a request; None lets the request through unlimited; BadRequest answers 400.
KeyFunc = Callable[[Request], str | None]


def by_header(name: str = "X-User-ID", *, required: bool = True) -> KeyFunc:
    """The value of header `name` (400 when missing and `required`, else unlimited)."""
    lowered = name.lower()

    def key(request: Request) -> str | None:
        values = request.headers.getlist(lowered)
        if not values:
            if required:
                raise BadRequest(f"the {name} header is required")
            return None
        if len(values) > 1:
            raise BadRequest(f"send exactly one {name} header")
        return validate_key(values[0].encode("latin-1"), name)

    return key


def by_client(forwarded_header: str | None = None) -> KeyFunc:
    """The client's address; behind a proxy, the first address of `forwarded_header`
    (e.g. "X-Forwarded-For": only when the proxy sets it, clients can forge it)."""

    def key(request: Request) -> str | None:
        if forwarded_header is not None:
            forwarded = request.headers.get(forwarded_header)
            if forwarded:
                return forwarded.split(",")[0].strip() or None
        client = request.client
        return client.host if client is not None else None

    return key


def by_api_key(header: str = "X-API-Key", *, required: bool = True) -> KeyFunc:
    """A digest of the API key in `header`: the secret itself never reaches the topic."""
    lowered = header.lower()

    def key(request: Request) -> str | None:
        value = request.headers.get(lowered)
        if not value:
            if required:
                raise BadRequest(f"the {header} header is required")
            return None
        return "apikey:" + hashlib.sha256(value.encode("latin-1")).hexdigest()[:32]

    return key


class RateLimitRejected(HTTPException):
    """A request answered by the limiter (429, or 400/503): status, headers, JSON body.

    An HTTPException, so FastAPI answers it even without `install_handler` (with the
    same status and headers, and its own `{"detail": ...}` body).
    """

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(
            status, detail=body.decode(), headers={k.decode(): v.decode() for k, v in headers}
        )
        self.raw_headers = headers
        self.body = body


async def rate_limit_handler(request: Request, exc: Exception) -> Response:
    """Answer a RateLimitRejected with the node's body and headers."""
    assert isinstance(exc, RateLimitRejected)
    response = Response(exc.body, status_code=exc.status_code, media_type="application/json")
    response.headers.update(exc.headers or {})
    return response


def install_handler(app: FastAPI) -> None:
    """Make RateLimit dependencies answer with exactly the node's 429 (and 400/503) body."""
    app.add_exception_handler(RateLimitRejected, rate_limit_handler)


class RateLimit:
    """A limit on requests: `Depends(RateLimit(limiter, key=...))` on a route, or the
    policy of a RateLimitMiddleware.

    `limit` names the rule; None applies the rule `POST /protected` would (prefix match
    on the key, else the default). `cost` is a number or a function of the request.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        key: KeyFunc | None = None,
        *,
        cost: int | Callable[[Request], int] = 1,
        limit: str | None = None,
    ) -> None:
        self.limiter = limiter
        self.key = key if key is not None else by_header()
        self.cost = cost
        self.limit = limit

    async def evaluate(self, request: Request) -> tuple[CheckResult | None, Answer | None]:
        """(result, None) when admitted (or unlimited: result None), else (result or None,
        the rejection as status, headers, body)."""
        try:
            key = self.key(request)
            if key is None:
                return None, None
            key = validate_key(key, "key")
            cost = self.cost if isinstance(self.cost, int) else self.cost(request)
            limit = self.limit or self.limiter.rule_for(key).name
            result = await self.limiter.check(key, cost, limit)
        except RateLimiterError as exc:
            return None, error_response(exc)
        if result.allowed:
            return result, None
        body = rate_limited_body(key, result.remaining, result.retry_after_ms)
        return result, (429, result.headers(), body)

    async def __call__(self, request: Request, response: Response) -> CheckResult | None:
        """The FastAPI dependency: the admitted decision (None: unlimited), else raise."""
        result, rejected = await self.evaluate(request)
        if rejected is not None:
            raise RateLimitRejected(*rejected)
        if result is not None:
            for name, value in result.headers():
                response.headers.append(name.decode(), value.decode())
        return result


class RateLimitMiddleware:
    """ASGI middleware applying one RateLimit to every HTTP request but `exempt` paths."""

    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        key: KeyFunc | None = None,
        *,
        cost: int | Callable[[Request], int] = 1,
        limit: str | None = None,
        exempt: Collection[str] = (),
    ) -> None:
        self.app = app
        self.policy = RateLimit(limiter, key, cost=cost, limit=limit)
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        result, rejected = await self.policy.evaluate(Request(scope))
        if rejected is not None:
            await send_answer(send, rejected)
            return
        if result is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _with_headers(send, result.headers()))


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sender
