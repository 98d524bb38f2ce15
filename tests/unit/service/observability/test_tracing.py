"""Tracing is configured by the standard OTEL_* variables and off without them; spans reach
an OTLP/HTTP endpoint; keys are shown only as salted hashes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from service.errors import ConfigError
from service.http.app import create_asgi
from service.observability.tracing import Tracing, tracing_from_env, tracing_wanted
from tests.service_helpers import clean_env, standalone_settings
from tests.tracing_helpers import in_memory_tracing


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


class Collector:
    """An OTLP/HTTP trace endpoint on 127.0.0.1 keeping what it is sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        self.received = threading.Event()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name is http.server's
                body = self.rfile.read(int(self.headers["content-length"]))
                collector.requests.append((self.path, body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()
                collector.received.set()

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[tuple[str, dict[str, str]]]:
        """(span name, resource attributes) of every span received."""
        out: list[tuple[str, dict[str, str]]] = []
        for path, body in self.requests:
            assert path == "/v1/traces"
            export = ExportTraceServiceRequest.FromString(body)
            for resource_spans in export.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    out.extend((span.name, resource) for span in scope_spans.spans)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def test_off_without_any_otel_variable() -> None:
    assert tracing_from_env("n1") is None
    assert not tracing_wanted({"RATELIMITER_PORT": "8000", "PATH": "/bin"})


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_SDK_DISABLED": "true", "OTEL_SERVICE_NAME": "x"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "x"},
    ],
    ids=["sdk-disabled", "exporter-none"],
)
def test_off_when_the_variables_say_so(environ: dict[str, str]) -> None:
    assert not tracing_wanted(environ)


def test_any_otel_variable_turns_it_on() -> None:
    assert tracing_wanted({"OTEL_SERVICE_NAME": "edge"})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_wanted({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"})


def test_spans_are_exported_to_the_otlp_endpoint(
    monkeypatch: pytest.MonkeyPatch, collector: Collector
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-limiter")

    tracing = tracing_from_env("node-7")
    assert tracing is not None
    with tracing.request("POST /protected", [], "rid-1", {}):
        pass
    tracing.shutdown()  # flushes the batch

    assert collector.received.wait(10)
    ((name, resource),) = collector.spans()
    assert name == "POST /protected"
    assert resource["service.name"] == "edge-limiter"
    assert resource["service.instance.id"] == "node-7"


def test_resource_attributes_from_the_environment_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-3,team=edge")
    tracing = tracing_from_env("n1")
    assert tracing is not None
    resource = tracing.provider.resource.attributes  # type: ignore[attr-defined]
    assert (resource["service.instance.id"], resource["team"]) == ("pod-3", "edge")
    tracing.shutdown()


def test_the_service_name_defaults_to_ratelimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    tracing = tracing_from_env("n1")
    assert tracing is not None
    resource = tracing.provider.resource.attributes  # type: ignore[attr-defined]
    assert resource["service.name"] == "ratelimiter"
    assert resource["service.instance.id"] == "n1"
    tracing.shutdown()


def test_the_sampler_follows_otel_traces_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    tracing = tracing_from_env("n1")
    assert tracing is not None
    with tracing.request("POST /protected", [], "rid", {}) as span:
        assert not span.is_recording()
    tracing.shutdown()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
    ],
)
def test_what_is_not_shipped_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name.split("_TRACES")[0].split("_OTLP")[0]):
        tracing_from_env("n1")


def test_create_asgi_traces_only_when_configured(
    monkeypatch: pytest.MonkeyPatch, collector: Collector
) -> None:
    off = create_asgi(standalone_settings())
    assert off.tracing is None
    assert off.protector.tracing is None
    assert off.checker.tracing is None

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    on = create_asgi(standalone_settings(trace_key_salt="fleet-wide-salt"))
    assert isinstance(on.tracing, Tracing)
    assert on.protector.tracing is on.tracing
    assert on.checker.tracing is on.tracing
    assert on.tracing.salt == b"fleet-wide-salt"
    on.tracing.shutdown()


def test_keys_are_shown_as_salted_hashes() -> None:
    one, other = in_memory_tracing().tracing, Tracing(in_memory_tracing().tracing.provider)

    assert one.key_hash("alice") == one.key_hash("alice")
    assert len(one.key_hash("alice")) == 16
    assert int(one.key_hash("alice"), 16) >= 0
    assert one.key_hash("alice") != one.key_hash("bob")
    assert one.key_hash("alice") != other.key_hash("alice")  # another salt
