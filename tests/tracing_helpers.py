"""Tracing for tests: spans kept in memory, W3C trace context, and what to assert on them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.observability.tracing import DECISION_SPAN, Tracing

SALT = b"salt-of-the-tests"
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_SPAN_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_SPAN_ID:016x}-01"


@dataclass
class Traced:
    """A Tracing whose finished spans land in `exporter`."""

    tracing: Tracing
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def requests(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name != DECISION_SPAN]

    def decisions(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == DECISION_SPAN]


def in_memory_tracing() -> Traced:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider, salt=SALT, propagator=TraceContextTextMapPropagator())
    return Traced(tracing, exporter)


def hashed(key: str) -> str:
    """What a span must show of `key`."""
    return hashlib.sha256(SALT + key.encode()).hexdigest()[:16]


def mentions(span: ReadableSpan, text: str) -> bool:
    """True when `text` appears in the span's name, attribute names or values, or events."""
    blobs = [span.name]
    for name, value in (span.attributes or {}).items():
        blobs += [name, str(value)]
    for event in span.events:
        blobs.append(event.name)
        blobs += [str(v) for v in (event.attributes or {}).values()]
    return any(text in blob for blob in blobs)
