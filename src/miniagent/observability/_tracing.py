"""OpenTelemetry spans from a run's events, after the GenAI semantic conventions.

Structure of one run's trace:

```
invoke_agent {agent}                 (RunStarted .. RunFinished / RunFailed / RunCancelled)
├── chat {model}                     one span per request attempt: a retry, a fallback or a restarted stream
│   └── (HTTP client spans)          ends one attempt and opens the next, all siblings under the run
├── chat {model}
├── execute_tool {tool}              parallel calls are siblings
│   └── store.{operation}            store operations nest under whatever span is current
└── store.{operation}
```

Handlers run synchronously in the task that emits the event, so the run span is made current (attached) at
`RunStarted` and detached at the run's terminal event in the same task; a tool's span is current inside its own
task. Only this module imports `opentelemetry`, and only when tracing is configured.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..context import current_correlation_id, current_run
from ..errors import UserError
from ..events import (
    AgentEvent,
    CircuitStateChanged,
    FallbackUsed,
    HistoryFitted,
    ModelRequestStarted,
    ModelResponseReceived,
    RetryScheduled,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StreamRestarted,
    TextDelta,
    ThinkingDelta,
    ToolCallArgsDelta,
    ToolCallFinished,
    ToolCallStarted,
)
from ..messages import ModelResponse, TextPart, ThinkingPart, ToolCallPart
from ._redact import Redactor

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["TraceSink", "provider_from_env"]

_OPEN_RUNS_LIMIT = 10_000  # runs whose terminal event never came (a sink raised at RunStarted) are dropped oldest first
_ENDED_RUNS_KEPT = 256  # ended runs whose span later store writes (the run's final save) are parented to

_OP = "gen_ai.operation.name"
_RAISED = re.compile(r"the tool raised (\w+)")


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    names = []
    for raw in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        name = raw.strip().lower()
        if not name or name == "none":
            continue
        if name == "otlp":
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            mapped = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}.get(protocol)
            if mapped is None:
                raise UserError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use 'http/protobuf' (or 'grpc' with "
                    "opentelemetry-exporter-otlp-proto-grpc installed)."
                )
            name = mapped
        names.append(name)
    return names


def provider_from_env(redactor: Redactor, environ: Mapping[str, str] | None = None) -> TracerProvider:
    """A tracer provider exporting as `OTEL_TRACES_EXPORTER` and the `OTEL_EXPORTER_OTLP_*` variables say.

    Exporters are the OpenTelemetry SDK's own, found through its `opentelemetry_traces_exporter` entry points, so
    `OTEL_EXPORTER_OTLP_ENDPOINT`, `..._HEADERS`, `..._TIMEOUT`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`
    and the `OTEL_BSP_*` batch settings work as documented by OpenTelemetry. Every exported span passes through a
    `RedactingSpanExporter`.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    from ._export import RedactingSpanExporter

    env = os.environ if environ is None else environ
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "miniagent"}))
    provider = TracerProvider(resource=resource)
    for name in _exporter_names(env):
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            raise UserError(
                f"OTEL_TRACES_EXPORTER asks for the {name!r} span exporter, which is not installed; install its "
                "package (e.g. `pip install 'miniagent[otel]'` for OTLP over HTTP) or change OTEL_TRACES_EXPORTER."
            )
        exporter = next(iter(found)).load()()
        wrapped = RedactingSpanExporter(exporter, redactor)
        processor = SimpleSpanProcessor(wrapped) if isinstance(exporter, ConsoleSpanExporter) else None
        provider.add_span_processor(processor or BatchSpanProcessor(wrapped))
    return provider


class _Attempt:
    __slots__ = ("by_restart", "context", "model", "number", "progressed", "span", "token")

    def __init__(self, span: Span, context: Context, token: object, model: str, number: int, by_restart: bool) -> None:
        self.span = span
        self.context = context
        self.token = token
        self.model = model
        self.number = number
        self.by_restart = by_restart
        self.progressed = False


class _Run:
    __slots__ = ("attempt", "common", "context", "span", "step", "token", "tools")

    def __init__(self, span: Span, context: Context, token: object, common: dict[str, Any]) -> None:
        self.common = common
        """The attributes every span of the run carries (run id, correlation id)."""
        self.span = span
        self.context = context
        self.token = token
        self.attempt: _Attempt | None = None
        self.step = 0
        self.tools: dict[str, tuple[Span, Context, object]] = {}


def _detach(token: object, attached: Context) -> None:
    # A token is only valid in the context it was made in; an end seen from another task leaves the context alone
    # (that task's copy of the context ends with it).
    if otel_context.get_current() is attached:
        otel_context.detach(token)  # type: ignore[arg-type]  # the token attach() returned


def _error(span: Span, error_type: str, description: str | None = None) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description))


class TraceSink:
    """Opens and ends spans from a run's events (see the module's docstring for the structure).

    Args:
        tracer: Makes the spans.
        redactor: Hides secrets in every string attribute, event attribute and status text.
        record_content: Record prompts, responses, tool arguments and results (redacted) as span attributes.
        user_id: Turns a run's user id into the `miniagent.user_id` attribute (hashed by default), or `None`.
    """

    def __init__(
        self,
        tracer: Tracer,
        *,
        redactor: Redactor,
        record_content: bool = False,
        user_id: Callable[[str | None], str | None] = lambda _: None,
    ) -> None:
        self._tracer = tracer
        self._redactor = redactor
        self._redact = redactor.redact
        self._content = record_content
        self._user_id = user_id
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._ended: OrderedDict[str, Span] = OrderedDict()
        self._dispatch: dict[type[Any], Callable[[Any], None]] = {
            RunStarted: self._run_started,
            ModelRequestStarted: self._request_started,
            HistoryFitted: self._history_fitted,
            TextDelta: self._delta,
            ThinkingDelta: self._delta,
            ToolCallArgsDelta: self._delta,
            ModelResponseReceived: self._response,
            ToolCallStarted: self._tool_started,
            ToolCallFinished: self._tool_finished,
            RetryScheduled: self._retry,
            StreamRestarted: self._stream_restarted,
            FallbackUsed: self._fallback,
            CircuitStateChanged: self._circuit,
            RunFinished: self._run_finished,
            RunFailed: self._run_failed,
            RunCancelled: self._run_cancelled,
        }

    def __call__(self, event: AgentEvent) -> None:
        """Open, annotate or end spans for `event`."""
        method = self._dispatch.get(type(event))
        if method is not None:
            method(event)

    # -- runs ---------------------------------------------------------------------------------------------------

    def _run_started(self, event: RunStarted) -> None:
        scope = current_run()
        agent = self._redact(event.agent_name)
        common: dict[str, Any] = {"miniagent.run_id": event.run_id}
        if scope is not None:
            common["miniagent.correlation_id"] = self._redact(scope.correlation_id)
        attributes: dict[str, Any] = {_OP: "invoke_agent", "gen_ai.agent.name": agent, **common}
        if scope is not None:
            if scope.thread_id is not None:
                attributes["gen_ai.conversation.id"] = scope.thread_id
            if scope.tenant_id is not None:
                attributes["miniagent.tenant_id"] = self._redact(scope.tenant_id)
            user = self._user_id(scope.user_id)
            if user is not None:
                attributes["miniagent.user_id"] = user
        if self._content and event.prompt is not None:
            attributes["gen_ai.input.messages"] = self._json(
                [{"role": "user", "parts": [{"type": "text", "content": event.prompt}]}]
            )
        span = self._tracer.start_span(f"invoke_agent {agent}", kind=SpanKind.INTERNAL, attributes=attributes)
        ctx = trace.set_span_in_context(span)
        token = otel_context.attach(ctx)
        self._runs[event.run_id] = _Run(span, ctx, token, common)
        if len(self._runs) > _OPEN_RUNS_LIMIT:
            _, stale = self._runs.popitem(last=False)
            stale.span.end()

    def _end_run(self, run_id: str, error_type: str | None, description: str | None) -> _Run | None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return None
        for span, _, _ in run.tools.values():  # cancelled with the run: no ToolCallFinished came
            if error_type is not None:
                _error(span, error_type, description)
            span.end()
        run.tools.clear()
        self._close_attempt(run, error_type, description)
        if error_type is not None:
            _error(run.span, error_type, description)
        _detach(run.token, run.context)
        self._ended[run_id] = run.span
        if len(self._ended) > _ENDED_RUNS_KEPT:
            self._ended.popitem(last=False)
        return run

    def _usage(self, span: Span, usage: Any) -> None:
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "miniagent.usage.requests": usage.requests,
            "miniagent.usage.tool_calls": usage.tool_calls,
        }
        if usage.cost_usd is not None:
            attributes["miniagent.cost_usd"] = usage.cost_usd
        span.set_attributes(attributes)

    def _run_finished(self, event: RunFinished) -> None:
        run = self._end_run(event.run_id, None, None)
        if run is None:
            return
        self._usage(run.span, event.usage)
        if self._content:
            output = event.output if isinstance(event.output, str) else str(event.output)
            run.span.set_attribute(
                "gen_ai.output.messages",
                self._json([{"role": "assistant", "parts": [{"type": "text", "content": output}]}]),
            )
        run.span.set_status(Status(StatusCode.OK))
        run.span.end()

    def _run_failed(self, event: RunFailed) -> None:
        message = self._redact(event.message)
        run = self._end_run(event.run_id, event.error_type, message)
        if run is not None:
            self._usage(run.span, event.usage)
            run.span.add_event("exception", {"exception.type": event.error_type, "exception.message": message})
            run.span.end()

    def _run_cancelled(self, event: RunCancelled) -> None:
        run = self._end_run(event.run_id, "cancelled", "the run was cancelled")
        if run is not None:
            self._usage(run.span, event.usage)
            run.span.end()

    # -- model requests -----------------------------------------------------------------------------------------

    def _open_attempt(self, run: _Run, model: str, number: int, *, by_restart: bool) -> None:
        attributes: dict[str, Any] = {
            _OP: "chat",
            "gen_ai.request.model": model,
            "miniagent.step": run.step,
            "miniagent.attempt": number,
            **run.common,
        }
        span = self._tracer.start_span(
            f"chat {model}", context=run.context, kind=SpanKind.CLIENT, attributes=attributes
        )
        ctx = trace.set_span_in_context(span, run.context)
        token = otel_context.attach(ctx)
        run.attempt = _Attempt(span, ctx, token, model, number, by_restart)

    def _close_attempt(self, run: _Run, error_type: str | None, description: str | None) -> None:
        attempt = run.attempt
        if attempt is None:
            return
        run.attempt = None
        if error_type is not None:
            _error(attempt.span, error_type, description)
        _detach(attempt.token, attempt.context)
        attempt.span.end()

    def _request_started(self, event: ModelRequestStarted) -> None:
        run = self._runs.get(event.run_id)
        if run is not None:
            self._close_attempt(run, "abandoned", None)
            run.step = event.step
            self._open_attempt(run, self._redact(event.model_name), 1, by_restart=False)

    def _history_fitted(self, event: HistoryFitted) -> None:
        run = self._runs.get(event.run_id)
        if run is not None and run.attempt is not None:
            run.attempt.span.add_event(
                "history_fitted",
                {
                    "kept": event.kept,
                    "evicted": event.evicted,
                    "tokens_before": event.tokens_before,
                    "tokens_after": event.tokens_after,
                    "budget": event.budget,
                },
            )

    def _delta(self, event: TextDelta | ThinkingDelta | ToolCallArgsDelta) -> None:
        run = self._runs.get(event.run_id)
        if run is None or run.attempt is None or run.attempt.progressed:
            return
        attempt = run.attempt
        attempt.progressed = True
        start = getattr(attempt.span, "start_time", None)
        if isinstance(start, int):
            attempt.span.set_attribute("gen_ai.response.time_to_first_chunk", (time.time_ns() - start) / 1e9)

    def _response(self, event: ModelResponseReceived) -> None:
        run = self._runs.get(event.run_id)
        if run is None or run.attempt is None:
            return
        span = run.attempt.span
        response = event.response
        usage = response.usage
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
        }
        if response.model_name:
            attributes["gen_ai.response.model"] = self._redact(response.model_name)
        if response.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = (response.finish_reason,)
        if usage.cache_read_tokens:
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read_tokens
        if usage.reasoning_tokens:
            attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
        if usage.cost_usd is not None:
            attributes["miniagent.cost_usd"] = usage.cost_usd
        if self._content:
            attributes["gen_ai.output.messages"] = self._json([_output_message(response)])
        span.set_attributes(attributes)
        self._close_attempt(run, None, None)

    def _rotate(self, run_id: str, error_type: str, description: str, model: str | None, *, restart: bool) -> None:
        """End the current attempt as failed and open the next one (a retry, a fallback, a restarted stream)."""
        run = self._runs.get(run_id)
        if run is None or run.attempt is None:
            return
        attempt = run.attempt
        if not attempt.progressed and (attempt.by_restart or restart) and attempt.number > 1:
            # The second report of one failure (a retry and its stream restart): annotate, do not open a third span.
            attempt.span.add_event("attempt_restarted", {"error.type": error_type, "reason": description})
            if model is not None and model != attempt.model:
                attempt.model = model
                attempt.span.update_name(f"chat {model}")
                attempt.span.set_attribute("gen_ai.request.model", model)
            return
        self._close_attempt(run, error_type, description)
        self._open_attempt(run, model or attempt.model, attempt.number + 1, by_restart=restart)

    def _retry(self, event: RetryScheduled) -> None:
        message = self._redact(event.message)
        attributes: dict[str, Any] = {
            "miniagent.retry.cause": event.cause,
            "miniagent.retry.attempt": event.attempt,
            "miniagent.retry.delay_s": event.delay_s,
            "miniagent.retry.message": message,
        }
        if event.tool_name is not None:
            attributes["gen_ai.tool.name"] = self._redact(event.tool_name)
        if event.error_type is not None:
            attributes["error.type"] = event.error_type
        if event.upstream is not None:
            attributes["miniagent.retry.upstream"] = self._redact(event.upstream)
        run = self._runs.get(event.run_id)
        if event.cause == "model-error" and run is not None and run.attempt is not None:
            run.attempt.span.add_event("retry_scheduled", attributes)
            self._rotate(event.run_id, event.error_type or "model-error", message, None, restart=False)
            return
        current = trace.get_current_span()  # a tool's own span inside its task, else the run's
        if current.is_recording():
            current.add_event("retry_scheduled", attributes)
        elif run is not None:
            run.span.add_event("retry_scheduled", attributes)

    def _stream_restarted(self, event: StreamRestarted) -> None:
        reason = self._redact(event.reason)
        run = self._runs.get(event.run_id)
        if run is None or run.attempt is None:
            return
        run.attempt.span.add_event(
            "stream_restarted", {"reason": reason, "miniagent.discarded_chars": event.discarded_chars}
        )
        self._rotate(event.run_id, "stream-restarted", reason, self._redact(event.model_name), restart=True)

    def _fallback(self, event: FallbackUsed) -> None:
        message = self._redact(event.message)
        run = self._runs.get(event.run_id)
        if run is None or run.attempt is None:
            return
        run.attempt.span.add_event(
            "fallback_used",
            {
                "miniagent.fallback.from_model": self._redact(event.from_model),
                "miniagent.fallback.to_model": self._redact(event.to_model),
                "error.type": event.error_type,
                "miniagent.fallback.message": message,
            },
        )
        self._rotate(event.run_id, event.error_type, message, self._redact(event.to_model), restart=False)

    def _circuit(self, event: CircuitStateChanged) -> None:
        attributes = {
            "miniagent.circuit.upstream": self._redact(event.upstream),
            "miniagent.circuit.from_state": event.from_state,
            "miniagent.circuit.to_state": event.to_state,
            "miniagent.circuit.reason": self._redact(event.reason),
        }
        current = trace.get_current_span()
        if current.is_recording():
            current.add_event("circuit_state_changed", attributes)

    # -- tools --------------------------------------------------------------------------------------------------

    def _tool_started(self, event: ToolCallStarted) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return
        tool = self._redact(event.tool_name)
        attributes: dict[str, Any] = {
            _OP: "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": event.tool_call_id,
            "gen_ai.tool.type": "function",
            "miniagent.step": event.step,
            **run.common,
        }
        if self._content:
            attributes["gen_ai.tool.call.arguments"] = self._json(event.args)
        span = self._tracer.start_span(
            f"execute_tool {tool}", context=run.context, kind=SpanKind.INTERNAL, attributes=attributes
        )
        ctx = trace.set_span_in_context(span, run.context)
        token = otel_context.attach(ctx)  # in the tool's task: what the tool does nests under its span
        run.tools[event.tool_call_id] = (span, ctx, token)

    def _tool_finished(self, event: ToolCallFinished) -> None:
        run = self._runs.get(event.run_id)
        if run is None:
            return
        entry = run.tools.pop(event.tool_call_id, None)
        if entry is None:
            return
        span, ctx, token = entry
        span.set_attribute("miniagent.tool.outcome", event.outcome)
        if self._content:
            result = event.result if isinstance(event.result, str) else self._json(event.result)
            span.set_attribute("gen_ai.tool.call.result", self._redact(result))
        if event.outcome != "success":
            text = str(event.result)
            raised = _RAISED.search(text)
            _error(span, raised.group(1) if raised else event.outcome, self._redact(text)[:1000])
        _detach(token, ctx)
        span.end()

    # -- store operations ---------------------------------------------------------------------------------------

    def store_span(self, name: str, attributes: dict[str, Any]) -> _StoreSpan:
        """The span around one store operation (installed with `miniagent._instrument.set_store_tracer`)."""
        parent: Context | None = None
        attrs: dict[str, Any] = {"db.operation.name": name}
        scope = current_run()
        if scope is not None:
            attrs["miniagent.run_id"] = scope.run_id
            attrs["miniagent.correlation_id"] = self._redact(scope.correlation_id)
            # The run's final save comes after its terminal event: keep it in the run's trace.
            if not trace.get_current_span().is_recording():
                ended = self._ended.get(scope.run_id)
                if ended is not None:
                    parent = trace.set_span_in_context(ended)
        else:
            correlation = current_correlation_id()
            if correlation is not None:
                attrs["miniagent.correlation_id"] = self._redact(correlation)
        for key, value in attributes.items():
            if value is None:
                continue
            attr = key if "." in key else f"miniagent.store.{key}"
            if isinstance(value, str):
                attrs[attr] = self._redact(value)
            elif isinstance(value, bool | int | float):
                attrs[attr] = value
            else:
                attrs[attr] = self._redact(str(value))
        return _StoreSpan(self._tracer, f"store.{name}", attrs, parent, self._redactor)

    def close(self) -> None:
        """End every span still open (when tracing is switched off)."""
        for run in self._runs.values():
            for span, _, _ in run.tools.values():
                span.end()
            if run.attempt is not None:
                run.attempt.span.end()
            run.span.end()
        self._runs.clear()
        self._ended.clear()

    def _json(self, value: Any) -> str:
        return self._redact(json.dumps(self._redactor.redact_value(value), ensure_ascii=False, default=str))


def _output_message(response: ModelResponse) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    for part in response.parts:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "content": part.content})
        elif isinstance(part, ThinkingPart):
            parts.append({"type": "reasoning", "content": part.content})
        elif isinstance(part, ToolCallPart):
            parts.append({"type": "tool_call", "id": part.tool_call_id, "name": part.tool_name, "arguments": part.args})
    message: dict[str, Any] = {"role": "assistant", "parts": parts}
    if response.finish_reason:
        message["finish_reason"] = response.finish_reason
    return message


class _StoreSpan:
    """A span around one store operation; an exception marks it failed with its (redacted) message."""

    __slots__ = ("_attributes", "_name", "_parent", "_redactor", "_span", "_token", "_tracer")

    def __init__(
        self, tracer: Tracer, name: str, attributes: dict[str, Any], parent: Context | None, redactor: Redactor
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._attributes = attributes
        self._parent = parent
        self._redactor = redactor
        self._span: Span | None = None
        self._token: object = None

    def __enter__(self) -> Span:
        span = self._tracer.start_span(
            self._name, context=self._parent, kind=SpanKind.CLIENT, attributes=self._attributes
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span, self._parent))
        return span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        span = self._span
        assert span is not None
        if exc is not None:
            message = self._redactor.redact(str(exc))
            _error(span, type(exc).__name__, message)
            span.add_event("exception", {"exception.type": type(exc).__name__, "exception.message": message})
        otel_context.detach(self._token)  # type: ignore[arg-type]  # the token attach() returned
        span.end()
