"""The request path's own cost, in process: POST /protected and POST /v1/check through what
uvicorn serves (the fast path in front of the app), without sockets or a load generator,
with tracing off (no OTEL_* variable) and on (every request sampled, or none).

Run `python -m stress_test.bench_request_path [--requests N] [--repeats R] [--json]`.
Variants run interleaved, repeat after repeat; the median CPU microseconds per request of
each is printed (process CPU time: steadier than wall time on a shared machine, and it
counts the span export thread too). With tracing off the path makes no tracer call:
compare `off` with the same script run on an older tree (only `off` runs where
`create_app` takes no tracing).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Message

from service.bootstrap import build_node
from service.http.app import create_app
from service.http.fastpath import FastPath
from service.settings import load_settings

USERS = 1000
PATHS = ("/protected", "/v1/check")


def tracing_variants() -> dict[str, Callable[[], Any]]:
    """Name -> factory of the `tracing` argument (None: off)."""
    variants: dict[str, Callable[[], Any]] = {"off": lambda: None}
    if "tracing" not in inspect.signature(create_app).parameters:
        return variants  # an older tree: tracing does not exist there
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    from service.observability.tracing import Tracing

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    def on(sampler: Any) -> Callable[[], Any]:
        def make() -> Any:
            provider = TracerProvider(sampler=ParentBased(sampler))
            provider.add_span_processor(BatchSpanProcessor(Dropped()))
            return Tracing(provider)

        return make

    variants["on"] = on(ALWAYS_ON)
    variants["on-unsampled"] = on(ALWAYS_OFF)
    return variants


def served(tracing: Any) -> tuple[ASGIApp, Any]:
    """(what uvicorn serves, the app) for a standalone node that admits nearly everything."""
    settings = load_settings(kafka="none", node_id="bench", rate=1e6, burst=10**6)
    node = build_node(settings)
    app = (
        create_app(settings, node)
        if tracing is None
        else create_app(settings, node, tracing=tracing)
    )
    return FastPath(app, app.state.protector, app.state.checker), app


async def per_request_us(asgi: ASGIApp, path: str, requests: int) -> float:
    """CPU microseconds per request over `requests` requests cycling over USERS keys."""
    users = [f"user-{i}".encode() for i in range(USERS)]
    if path == "/protected":
        scopes = [
            {"type": "http", "method": "POST", "path": path, "headers": [(b"x-user-id", u)]}
            for u in users
        ]
        bodies = [b""] * USERS
    else:
        header = [(b"content-type", b"application/json")]
        scopes = [{"type": "http", "method": "POST", "path": path, "headers": header}] * USERS
        bodies = [b'{"key": "%s", "cost": 1}' % u for u in users]
    statuses: list[int] = []
    body = b""

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.process_time()
    for i in range(requests):
        body = bodies[i % USERS]
        await asgi(scopes[i % USERS], receive, send)
    elapsed = time.process_time() - started
    if set(statuses) != {200}:
        raise SystemExit(f"{path}: unexpected statuses {sorted(set(statuses))}")
    return elapsed / requests * 1e6


async def run(requests: int, repeats: int) -> dict[str, dict[str, float]]:
    variants = tracing_variants()
    stacks = {}
    for name, make in variants.items():
        tracing = make()
        asgi, app = served(tracing)
        stacks[name] = (asgi, app, tracing)
        await app.state.node.start()
    samples: dict[str, dict[str, list[float]]] = {n: {p: [] for p in PATHS} for n in variants}
    gc.collect()
    gc.freeze()
    for _ in range(repeats):
        for name, (asgi, _, _) in stacks.items():
            for path in PATHS:
                samples[name][path].append(await per_request_us(asgi, path, requests))
    for _, app, tracing in stacks.values():
        await app.state.node.stop()
        if tracing is not None:
            tracing.shutdown()
    return {
        name: {path: round(statistics.median(values), 2) for path, values in by_path.items()}
        for name, by_path in samples.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--requests", type=int, default=20_000, help="requests per run (20,000)")
    p.add_argument("--repeats", type=int, default=7, help="runs per variant and path (7)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    figures = asyncio.run(run(args.requests, args.repeats))
    if args.json:
        print(json.dumps({"us_per_request": figures, **vars(args)}))
        return 0
    print(f"median CPU microseconds per request ({args.requests} requests x {args.repeats} runs)")
    print(f"{'tracing':<14}" + "".join(f"{path:>14}" for path in PATHS))
    for name, by_path in figures.items():
        print(f"{name:<14}" + "".join(f"{by_path[path]:>14.2f}" for path in PATHS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
