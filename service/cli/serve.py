"""`ratelimiter serve`: run one node (flags mirror the settings; RATELIMITER_* work too)."""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging

import uvicorn

from service.http.app import create_asgi
from service.observability.request_id import RequestIdFilter
from service.settings import Settings, load_settings

# [request id]: the X-Request-ID (or gRPC x-request-id) of the request being handled, "-"
# outside any request.
LOG_FORMAT = "%(asctime)s {node_id} %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class OncePer(logging.Filter):
    """Pass a given message template from loggers under `prefix` once per `seconds`."""

    def __init__(self, seconds: float, prefix: str) -> None:
        super().__init__()
        self.seconds = seconds
        self.prefix = prefix
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        key = (record.name, record.msg)
        last = self._last.get(key)
        if last is not None and record.created - last < self.seconds:
            return False
        self._last[key] = record.created
        return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, e.g. --node-id, --kafka, --rate, --burst, --flush-ms."""
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else default
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"env RATELIMITER_{name.upper()} (default: {shown})",
        )


GC_THRESHOLDS = (50_000, 20, 100)  # the cyclic GC's, set at start (`run` says why)


def _freeze_heap() -> None:
    # Only the youngest generation is collected first (at most the gen-0 threshold of
    # objects): a full collection over a million keys' objects held the event loop about
    # a second at ready. Cyclic garbage left in older generations is frozen with the rest,
    # a one-time cost of what bootstrap left uncollected.
    gc.collect(0)
    gc.freeze()
    _trim_c_heap()


def _trim_c_heap() -> None:
    # Reading the topic leaves tens of MB of fetch buffers freed but resident in the C
    # heap; glibc's malloc_trim gives those pages back (about 1 ms). Other C libraries
    # have no such call: nothing to do there.
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim(0)


def configure_logging(settings: Settings) -> None:
    """One format for every logger (uvicorn's too), each line with its request id."""
    logging.basicConfig(
        level=settings.log_level.upper(), format=LOG_FORMAT.format(node_id=settings.node_id)
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
        # aiokafka logs every failed reconnect (thousands a second during an outage); the
        # node logs the outage itself: one line per kind of client message per minute.
        handler.addFilter(OncePer(60.0, prefix="aiokafka"))


def run(args: argparse.Namespace) -> int:
    """Validate settings, build the app and serve it until interrupted."""
    values = {name: getattr(args, name) for name in Settings.model_fields}
    settings = load_settings(**values)
    configure_logging(settings)
    # A node holds up to millions of long-lived key objects, and every flush allocates
    # many short-lived tuples: with the default threshold (700) the cyclic GC rescans
    # the long-lived heap over and over (70% of a 1M-key flush, BENCHMARKS.md). Collect
    # the young generation less often; nothing in the node builds reference cycles.
    gc.set_threshold(*GC_THRESHOLDS)
    asgi = create_asgi(settings)
    if settings.grpc_port is not None:
        from fastapi import FastAPI

        from service.grpc.server import serve_beside  # grpcio is loaded only when asked for

        assert isinstance(asgi.app, FastAPI)
        serve_beside(
            asgi.app,
            asgi.protector.node,
            settings.host,
            settings.grpc_port,
            settings.allow_limit_override,
        )
    # What bootstrap built (keys, rules, the app itself) lives as long as the process:
    # move it out of the cyclic GC's sight so collections scan only what came after.
    asgi.protector.node.ready_listeners.append(_freeze_heap)
    uvicorn.run(
        asgi,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        log_config=None,  # uvicorn's lines go through the root handler: one format
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0
