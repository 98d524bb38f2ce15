"""OpenTelemetry spans of the requests a node answers and of their decisions.

Off unless an `OTEL_*` variable is set: `tracing_from_env` then returns None and the
request paths make no tracer call at all. On, it follows the standard variables
(OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT and
_HEADERS, OTEL_TRACES_SAMPLER[_ARG], OTEL_TRACES_EXPORTER=otlp|console|none,
OTEL_PROPAGATORS, OTEL_BSP_*, OTEL_SDK_DISABLED) and exports OTLP over HTTP.

Each request answered (POST /protected, POST /v1/check, ShouldRateLimit) is a SERVER span,
child of the caller's W3C `traceparent` (header or gRPC metadata); each decision in it a
`ratelimit.decision` span carrying the rule, the outcome, the cost and a salted hash of the
key: never the key itself, which is often a user id.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from service.errors import ConfigError

log = logging.getLogger("ratelimiter.tracing")

DECISION_SPAN = "ratelimit.decision"
RULE = "ratelimit.rule"
OUTCOME = "ratelimit.outcome"  # admitted, denied or shadow_denied (as the metrics count)
COST = "ratelimit.cost"
KEY_HASH = "ratelimit.key_hash"  # first 16 hex digits of sha256(salt + key)
REQUEST_ID = "ratelimit.request_id"
DENIED_BY = "ratelimit.denied_by"  # on a request span: the rules that denied it
SERVICE_NAME = "ratelimiter"  # unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) says
EXPORTERS = ("otlp", "console", "none")

Carrier = Sequence[tuple[bytes | str, bytes | str]]  # raw ASGI headers or gRPC metadata


class Decided(Protocol):
    """What a span needs of a decision (`service.engine.Decision` is one)."""

    @property
    def allowed(self) -> bool: ...

    @property
    def shadow_denied(self) -> bool: ...


def outcome(decision: Decided) -> str:
    """admitted, denied or shadow_denied: the outcome label of the decision metrics."""
    if decision.shadow_denied:
        return "shadow_denied"
    return "admitted" if decision.allowed else "denied"


class _Pairs(Getter[Carrier]):
    """Reads a propagation header from (name, value) pairs, bytes or text, any case."""

    def get(self, carrier: Carrier, key: str) -> list[str] | None:
        wanted = key.lower()
        found = [_text(value) for name, value in carrier if _text(name).lower() == wanted]
        return found or None

    def keys(self, carrier: Carrier) -> list[str]:
        return [_text(name) for name, _ in carrier]


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


PAIRS = _Pairs()


class Tracing:
    """Request and decision spans on `provider`; keys hashed with `salt` (random when None,
    so hashes match across nodes only when every node is given the same salt)."""

    def __init__(
        self,
        provider: trace.TracerProvider,
        *,
        salt: bytes | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        if propagator is None:
            from opentelemetry.propagate import get_global_textmap  # honours OTEL_PROPAGATORS

            propagator = get_global_textmap()
        self.provider = provider
        self.tracer = provider.get_tracer("ratelimiter")
        self.propagator = propagator
        self.salt = salt if salt else secrets.token_bytes(16)

    def key_hash(self, key: str) -> str:
        """What a span says of a key: 16 hex digits of its salted sha256."""
        return hashlib.sha256(self.salt + key.encode()).hexdigest()[:16]

    @contextmanager
    def request(
        self,
        name: str,
        carrier: Carrier,
        request_id: str,
        attributes: Mapping[str, AttributeValue],
    ) -> Iterator[Span]:
        """A SERVER span for one request, current while inside, child of the `traceparent`
        found in `carrier` (a new trace without one)."""
        parent = self.propagator.extract(carrier, getter=PAIRS)
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={**attributes, REQUEST_ID: request_id},
        ) as span:
            yield span

    def decision(self, key: str, cost: int, rule: str, decided: Decided, start_ns: int) -> None:
        """One decision, as a span under the current request span, from `start_ns` to now
        (none when that request is not sampled: its children would not be either)."""
        if not trace.get_current_span().is_recording():
            return
        self.tracer.start_span(
            DECISION_SPAN,
            start_time=start_ns,
            attributes={
                RULE: rule,
                OUTCOME: outcome(decided),
                COST: cost,
                KEY_HASH: self.key_hash(key),
            },
        ).end()

    def denied_by(self, rules: Sequence[str]) -> None:
        """Name the rules that denied a request with several limits on its span."""
        if rules:
            trace.get_current_span().set_attribute(DENIED_BY, list(rules))

    def shutdown(self) -> None:
        """Export what is buffered and stop (the provider's own shutdown, when it has one)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if callable(shutdown):
            shutdown()


def http_status(span: Span, status: int) -> None:
    """Record the response status on a request span (5xx marks it an error)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


# Server faults among gRPC status codes (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
# UNAVAILABLE, DATA_LOSS): the others are the caller's, as 4xx are over HTTP.
_GRPC_SERVER_FAULTS = frozenset({2, 4, 12, 13, 14, 15})


def grpc_status(span: Span, code: int) -> None:
    """Record a call's gRPC status code on its span (a server fault marks it an error)."""
    span.set_attribute("rpc.grpc.status_code", code)
    if code in _GRPC_SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR))


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """True when an OTEL_* variable is set, unless the SDK or the trace exporter is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if _exporters(environ) == ["none"]:
        return False
    return any(name.startswith("OTEL_") for name in environ)


def _exporters(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER", "") or "otlp"
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not available here "
            f"(use {', '.join(EXPORTERS)})"
        )
    return names


def tracing_from_env(node_id: str, salt: bytes | None = None) -> Tracing | None:
    """Tracing configured by this process's OTEL_* variables, or None when none is set.

    ConfigError for an exporter or OTLP protocol this node does not ship (only OTLP over
    HTTP with protobuf, and the console for debugging).
    """
    environ = os.environ
    if not tracing_wanted(environ):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol.strip() != "http/protobuf":
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not available here: "
            "spans are exported as OTLP over HTTP (http/protobuf)"
        )
    resource = Resource.create()
    defaults: dict[str, AttributeValue] = {}
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        defaults["service.name"] = SERVICE_NAME
    if "service.instance.id=" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        defaults["service.instance.id"] = node_id  # not the SDK's random one: the node's
    provider = TracerProvider(resource=resource.merge(Resource(defaults)))
    for name in _exporters(environ):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    log.info(
        "tracing on: service %s, exporters %s, sampler %s",
        provider.resource.attributes.get("service.name"),
        ", ".join(_exporters(environ)),
        provider.sampler.get_description(),
    )
    return Tracing(provider, salt=salt)
