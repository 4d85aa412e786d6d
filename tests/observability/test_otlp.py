"""Integration: the real OTLP/HTTP exporter, configured by `OTEL_*` variables, sends a run's spans to a loopback
receiver that decodes the protobuf `ExportTraceServiceRequest`."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from miniagent import Agent
from miniagent.context import correlation_scope
from miniagent.observability import REDACTED, configure
from miniagent.testing import ScriptedModel, tool_call_response


@dataclass
class Received:
    """What the receiver got: decoded requests and the paths and content types they came with."""

    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span with its resource's attributes."""
        out: list[tuple[dict[str, Any], Any]] = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope_spans.spans)
        return out


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind) if kind else None


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP trace receiver on 127.0.0.1; yields its base URL and what it received."""
    received = Received()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with lock:
                received.requests.append(request)
                received.paths.append(self.path)
                received.content_types.append(self.headers.get("Content-Type", ""))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_spans_reach_an_otlp_receiver_configured_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with otlp_receiver() as (endpoint, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "otlp-test-service")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")  # nothing leaves before the flush below
        handle = configure(logs=False, metrics=False)  # tracing turns itself on: the OTEL_* variables ask for it
        assert handle.tracing
        agent = Agent(model=ScriptedModel([tool_call_response(("a", {}), ("b", {})), "done"]), name="exported")

        @agent.tool
        def a() -> str:
            """A."""
            return "A"

        @agent.tool
        def b() -> str:
            """B."""
            return "B"

        with correlation_scope("otlp-corr-1"):
            result = agent.run_sync("go")
        assert handle.tracer_provider is not None
        tracer = handle.tracer_provider.get_tracer("other.instrumentation")
        with tracer.start_as_current_span("GET /secret") as span:  # not ours: redacted by the exporter wrapper
            span.set_attribute("http.request.header.authorization", "Bearer sk-abcdefghijklmnopqrstuv")
        handle.close()  # shuts the provider down: the batch is exported now

    assert set(received.paths) == {"/v1/traces"}
    assert set(received.content_types) == {"application/x-protobuf"}
    spans = received.spans()
    by_name: dict[str, list[Any]] = {}
    for _, span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert sorted(by_name) == [
        "GET /secret",
        "chat scripted",
        "execute_tool a",
        "execute_tool b",
        "invoke_agent exported",
    ]
    resource = spans[0][0]
    assert resource["service.name"] == "otlp-test-service"
    assert resource["deployment.environment"] == "test"
    (run,) = by_name["invoke_agent exported"]
    run_attrs = {kv.key: _value(kv.value) for kv in run.attributes}
    assert run_attrs["miniagent.run_id"] == result.run_id
    assert run_attrs["gen_ai.operation.name"] == "invoke_agent"
    assert run.parent_span_id == b""
    children = by_name["chat scripted"] + by_name["execute_tool a"] + by_name["execute_tool b"]
    assert len(children) == 4
    for child in children:
        assert child.parent_span_id == run.span_id and child.trace_id == run.trace_id
        attrs = {kv.key: _value(kv.value) for kv in child.attributes}
        assert attrs["miniagent.correlation_id"] == "otlp-corr-1"
    (foreign,) = by_name["GET /secret"]
    assert {kv.key: _value(kv.value) for kv in foreign.attributes} == {
        "http.request.header.authorization": f"Bearer {REDACTED}"
    }
