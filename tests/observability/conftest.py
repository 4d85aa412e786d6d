"""Fixtures for the observability tests: no `OTEL_*` variables from the developer, nothing left configured."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from miniagent.observability import Observability, configure, unconfigure


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test exports to the developer's collector; every test ends with observability removed."""
    for name in list(os.environ):
        if name.upper().startswith("OTEL_"):
            monkeypatch.delenv(name, raising=False)
    yield
    unconfigure()


@dataclass
class Observed:
    """What one configured test captures: log lines, finished spans and the metrics registry."""

    handle: Observability
    out: io.StringIO
    exporter: InMemorySpanExporter
    registry: CollectorRegistry

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        return [json.loads(line) for line in self.out.getvalue().splitlines() if line.strip()]

    def spans(self) -> list[ReadableSpan]:
        """The finished spans so far."""
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        """The one finished span called `name`."""
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A metric sample's value."""
        return self.registry.get_sample_value(name, labels or {})


def tracer_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A provider exporting synchronously to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def observed() -> Iterator[Observed]:
    """Logs (JSON, DEBUG), spans (in memory) and metrics (a fresh registry), all on."""
    provider, exporter = tracer_provider()
    out = io.StringIO()
    registry = CollectorRegistry()
    handle = configure(
        log_format="json", log_level="DEBUG", stream=out, tracer_provider=provider, registry=registry, metrics=True
    )
    try:
        yield Observed(handle, out, exporter, registry)
    finally:
        handle.close()
        provider.shutdown()
