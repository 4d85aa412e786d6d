"""A span exporter wrapper that redacts every span before it leaves the process (imports the OpenTelemetry SDK)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from ._redact import Redactor

__all__ = ["RedactingSpanExporter"]


class RedactingSpanExporter(SpanExporter):
    """Wraps a span exporter so every span's attributes, events and status text are redacted before export.

    This catches what other instrumentation (HTTP clients, SDKs) puts on spans of the same provider.
    """

    def __init__(self, wrapped: SpanExporter, redactor: Redactor) -> None:
        self.wrapped = wrapped
        self._redactor = redactor

    def _attributes(self, attributes: Mapping[str, Any] | None) -> dict[str, Any]:
        redact = self._redactor.redact
        out: dict[str, Any] = {}
        for key, value in (attributes or {}).items():
            if isinstance(value, str):
                out[key] = redact(value)
            elif isinstance(value, Sequence) and not isinstance(value, bytes):
                out[key] = tuple(redact(v) if isinstance(v, str) else v for v in value)
            else:
                out[key] = value
        return out

    def _span(self, span: ReadableSpan) -> ReadableSpan:
        status = span.status
        if status.description:
            status = Status(status.status_code, self._redactor.redact(status.description))
        return ReadableSpan(
            name=self._redactor.redact(span.name),
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=self._attributes(span.attributes),
            events=[Event(e.name, self._attributes(e.attributes), e.timestamp) for e in span.events],
            links=span.links,
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export redacted copies of `spans` with the wrapped exporter."""
        return self.wrapped.export([self._span(s) for s in spans])

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self.wrapped.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the wrapped exporter."""
        return self.wrapped.force_flush(timeout_millis)
