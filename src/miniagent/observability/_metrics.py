"""Prometheus metrics, fed by a run's events: latencies, tokens, cost, tools, retries, breakers, active runs.

The collectors live in one `CollectorRegistry` (miniagent's own unless one is given), so an application mounts
[`metrics_app`][miniagent.observability.metrics_app] or serves it with
[`start_metrics_server`][miniagent.observability.start_metrics_server] without mixing in unrelated metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..context import current_run
from ..events import (
    AgentEvent,
    CircuitStateChanged,
    FallbackUsed,
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
)
from ._redact import Redactor

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["CIRCUIT_STATE_VALUES", "METRIC_NAMES", "MetricsSink"]

CIRCUIT_STATE_VALUES = {"closed": 0.0, "half-open": 1.0, "open": 2.0}
"""The value of `miniagent_circuit_state` for each breaker state."""

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_TOOL_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

METRIC_NAMES: dict[str, str] = {
    "miniagent_runs_active": "gauge",
    "miniagent_run_duration_seconds": "histogram",
    "miniagent_model_request_duration_seconds": "histogram",
    "miniagent_model_time_to_first_token_seconds": "histogram",
    "miniagent_model_tokens_total": "counter",
    "miniagent_model_cost_usd_total": "counter",
    "miniagent_tool_calls_total": "counter",
    "miniagent_tool_call_duration_seconds": "histogram",
    "miniagent_retries_total": "counter",
    "miniagent_fallbacks_total": "counter",
    "miniagent_stream_restarts_total": "counter",
    "miniagent_circuit_state": "gauge",
    "miniagent_circuit_transitions_total": "counter",
}
"""Every metric family miniagent exports, with its type (the sample names add `_bucket`, `_sum`, `_count`)."""


@dataclass(slots=True)
class _Request:
    model: str
    started: float
    attempt_started: float
    first_token: bool = False


class MetricsSink:
    """Updates the Prometheus collectors from a run's events.

    Args:
        registry: Where the collectors are registered (`remove()` unregisters them).
        clock: Seconds, monotonic: the source of run and model-request latencies.
        redactor: Hides secrets in label values (a model name that embeds a URL with a password).
        user_label: Add a `user` label (hashed as the logs) to the cost counter; off by default, since every
            user then makes a time series.
        user_id: Turns a run's user id into the label value.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float],
        redactor: Redactor,
        user_label: bool = False,
        user_id: Callable[[str | None], str | None] = lambda _: None,
    ) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        self._clock = clock
        self._redact = redactor.redact
        self._user_label = user_label
        self._user_id = user_id
        self._runs: dict[str, tuple[str, float]] = {}
        self._requests: dict[str, _Request] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = registry
        self.runs_active: Gauge = Gauge("miniagent_runs_active", "Runs in progress.", ["agent"], registry=r)
        self.run_duration: Histogram = Histogram(
            "miniagent_run_duration_seconds",
            "Run latency, from start to its end, by outcome (succeeded, failed, cancelled).",
            ["agent", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_duration: Histogram = Histogram(
            "miniagent_model_request_duration_seconds",
            "Model request latency (one step, retries and fallbacks included), by the model that answered.",
            ["model", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft: Histogram = Histogram(
            "miniagent_model_time_to_first_token_seconds",
            "Time from the start of a streamed request attempt to its first text, thinking or tool-call chunk.",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tokens: Counter = Counter(
            "miniagent_model_tokens",
            "Tokens reported by the model, by type (input, output).",
            ["model", "type"],
            registry=r,
        )
        self.cost: Counter = Counter(
            "miniagent_model_cost_usd",
            "Cost of model responses in USD from the price table (unpriced models add nothing).",
            ["model", "tenant", "user"] if user_label else ["model", "tenant"],
            registry=r,
        )
        self.tool_calls: Counter = Counter(
            "miniagent_tool_calls", "Tool calls by outcome (success, error, timeout).", ["tool", "outcome"], registry=r
        )
        self.tool_duration: Histogram = Histogram(
            "miniagent_tool_call_duration_seconds",
            "Tool call latency.",
            ["tool"],
            buckets=_TOOL_BUCKETS,
            registry=r,
        )
        self.retries: Counter = Counter(
            "miniagent_retries",
            "Retries by cause (model-error, tool-error, tool-args, tool-retry, output, unknown-tool) and upstream.",
            ["cause", "upstream"],
            registry=r,
        )
        self.fallbacks: Counter = Counter(
            "miniagent_fallbacks", "Fallback chain moves to the next model.", ["from_model", "to_model"], registry=r
        )
        self.stream_restarts: Counter = Counter(
            "miniagent_stream_restarts", "Streamed responses restarted after breaking off.", ["model"], registry=r
        )
        self.circuit_state: Gauge = Gauge(
            "miniagent_circuit_state",
            "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
            ["upstream"],
            registry=r,
        )
        self.circuit_transitions: Counter = Counter(
            "miniagent_circuit_transitions",
            "Circuit breaker state changes, by the state entered.",
            ["upstream", "to_state"],
            registry=r,
        )
        self._collectors: list[Any] = [
            self.runs_active,
            self.run_duration,
            self.request_duration,
            self.ttft,
            self.tokens,
            self.cost,
            self.tool_calls,
            self.tool_duration,
            self.retries,
            self.fallbacks,
            self.stream_restarts,
            self.circuit_state,
            self.circuit_transitions,
        ]
        # prometheus_client keeps a collector's name and labels private; both are fixed at creation.
        self.label_names: dict[str, tuple[str, ...]] = {
            c._name + ("_total" if isinstance(c, Counter) else ""): tuple(c._labelnames) for c in self._collectors
        }
        """Each metric family's exported name (counters end in `_total`) and its labels."""
        self._dispatch: dict[type[Any], Callable[[Any], None]] = {
            RunStarted: self._run_started,
            ModelRequestStarted: self._request_started,
            TextDelta: self._delta,
            ThinkingDelta: self._delta,
            ToolCallArgsDelta: self._delta,
            ModelResponseReceived: self._response,
            ToolCallFinished: self._tool_finished,
            RetryScheduled: self._retry,
            StreamRestarted: self._stream_restarted,
            FallbackUsed: self._fallback,
            CircuitStateChanged: self._circuit,
            RunFinished: self._run_finished,
            RunFailed: self._run_failed,
            RunCancelled: self._run_cancelled,
        }

    def _child(self, collector: Any, *values: str) -> Any:
        # `labels()` takes a lock and validates each time; a run touches the same few children again and again.
        key = (id(collector), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = collector.labels(*values)
        return child

    def __call__(self, event: AgentEvent) -> None:
        """Update the collectors for `event`."""
        method = self._dispatch.get(type(event))
        if method is not None:
            method(event)

    def remove(self) -> None:
        """Unregister the collectors from the registry."""
        for collector in self._collectors:
            self.registry.unregister(collector)
        self._collectors.clear()

    def _run_started(self, event: RunStarted) -> None:
        agent = self._redact(event.agent_name)
        self._runs[event.run_id] = (agent, self._clock())
        self._child(self.runs_active, agent).inc()

    def _end_run(self, run_id: str, outcome: str) -> None:
        request = self._requests.pop(run_id, None)
        if request is not None and outcome != "succeeded":  # the request in flight failed with the run
            self._child(self.request_duration, request.model, "error").observe(self._clock() - request.started)
        entry = self._runs.pop(run_id, None)
        if entry is None:
            return
        agent, started = entry
        self._child(self.runs_active, agent).dec()
        self._child(self.run_duration, agent, outcome).observe(self._clock() - started)

    def _run_finished(self, event: RunFinished) -> None:
        self._end_run(event.run_id, "succeeded")

    def _run_failed(self, event: RunFailed) -> None:
        self._end_run(event.run_id, "failed")

    def _run_cancelled(self, event: RunCancelled) -> None:
        self._end_run(event.run_id, "cancelled")

    def _request_started(self, event: ModelRequestStarted) -> None:
        now = self._clock()
        self._requests[event.run_id] = _Request(self._redact(event.model_name), now, now)

    def _delta(self, event: TextDelta | ThinkingDelta | ToolCallArgsDelta) -> None:
        request = self._requests.get(event.run_id)
        if request is not None and not request.first_token:
            request.first_token = True
            self._child(self.ttft, request.model).observe(self._clock() - request.attempt_started)

    def _new_attempt(self, run_id: str, model: str | None = None) -> None:
        request = self._requests.get(run_id)
        if request is not None:
            request.attempt_started = self._clock()
            request.first_token = False
            if model is not None:
                request.model = self._redact(model)

    def _response(self, event: ModelResponseReceived) -> None:
        response = event.response
        request = self._requests.pop(event.run_id, None)
        model = self._redact(response.model_name) if response.model_name else request.model if request else "unknown"
        if request is not None:
            self._child(self.request_duration, model, "ok").observe(self._clock() - request.started)
        usage = response.usage
        if usage.input_tokens:
            self._child(self.tokens, model, "input").inc(usage.input_tokens)
        if usage.output_tokens:
            self._child(self.tokens, model, "output").inc(usage.output_tokens)
        if usage.cost_usd:
            scope = current_run()
            tenant = (scope.tenant_id if scope is not None else None) or ""
            if self._user_label:
                user = self._user_id(scope.user_id if scope is not None else None) or ""
                self._child(self.cost, model, tenant, user).inc(usage.cost_usd)
            else:
                self._child(self.cost, model, tenant).inc(usage.cost_usd)

    def _tool_finished(self, event: ToolCallFinished) -> None:
        tool = self._redact(event.tool_name)
        self._child(self.tool_calls, tool, event.outcome).inc()
        self._child(self.tool_duration, tool).observe(max(event.duration_s, 0.0))

    def _retry(self, event: RetryScheduled) -> None:
        upstream = event.upstream or (f"tool:{event.tool_name}" if event.tool_name else "")
        self._child(self.retries, event.cause, self._redact(upstream)).inc()
        if event.cause == "model-error":
            self._new_attempt(event.run_id)

    def _stream_restarted(self, event: StreamRestarted) -> None:
        model = self._redact(event.model_name)
        self._child(self.stream_restarts, model).inc()
        self._new_attempt(event.run_id, event.model_name)

    def _fallback(self, event: FallbackUsed) -> None:
        self._child(self.fallbacks, self._redact(event.from_model), self._redact(event.to_model)).inc()
        self._new_attempt(event.run_id, event.to_model)

    def _circuit(self, event: CircuitStateChanged) -> None:
        upstream = self._redact(event.upstream)
        self._child(self.circuit_state, upstream).set(CIRCUIT_STATE_VALUES[event.to_state])
        self._child(self.circuit_transitions, upstream, event.to_state).inc()
