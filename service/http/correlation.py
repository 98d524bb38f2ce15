"""Request ids on the FastAPI app: every HTTP answer carries `X-Request-ID`, errors included."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.observability.request_id import HEADER, RequestIds, current


class RequestIdMiddleware:
    """ASGI: takes or makes the request's id, current while it is handled, and echoes it."""

    def __init__(self, app: ASGIApp, request_ids: RequestIds) -> None:
        self.app = app
        self.request_ids = request_ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.request_ids.take(scope["headers"])
        header = (HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = current.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current.reset(token)


class NodeApp(FastAPI):
    """FastAPI with request ids outside its whole middleware stack, so that the 500 of an
    unhandled error (answered by Starlette's outermost middleware) carries one too."""

    request_ids: RequestIds

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIdMiddleware(super().build_middleware_stack(), self.request_ids)
