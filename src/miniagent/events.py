"""The typed events a run emits, one discriminated union for every consumer.

The CLI, the server's streams, logs, traces and metrics all read the same stream: a run produces
[`AgentEvent`][miniagent.events.AgentEvent]s in order, starting with `RunStarted` and ending with exactly one of
`RunFinished`, `RunFailed` or `RunCancelled`. Serialize them with [`event_to_json`][miniagent.events.event_to_json].
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from ._utils import KIND
from .messages import ModelResponse, ToolOutcome
from .usage import Usage

if TYPE_CHECKING:
    from pydantic import TypeAdapter

__all__ = [
    "AgentEvent",
    "CircuitState",
    "CircuitStateChanged",
    "EventHandler",
    "FallbackUsed",
    "HistoryFitted",
    "ModelRequestStarted",
    "ModelResponseReceived",
    "RetryCause",
    "RetryScheduled",
    "RunCancelled",
    "RunFailed",
    "RunFinished",
    "RunStarted",
    "StreamRestarted",
    "TextDelta",
    "ThinkingDelta",
    "ToolCallArgsDelta",
    "ToolCallFinished",
    "ToolCallStarted",
    "UsageUpdated",
    "add_event_handler",
    "event_from_json",
    "event_to_json",
]


@dataclass(slots=True)
class RunStarted:
    """A run began."""

    run_id: str
    """The run's id, on every event of the run."""
    agent_name: str
    """The agent that runs."""
    prompt: str | None
    """The user's prompt, if the run was started with one."""
    _: KW_ONLY
    kind: Literal["run-started"] = "run-started"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class ModelRequestStarted:
    """A model request (one step of the loop) began."""

    run_id: str
    """The run's id."""
    step: int
    """The step number, from 1."""
    model_name: str
    """The model being asked."""
    _: KW_ONLY
    kind: Literal["model-request-started"] = "model-request-started"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class HistoryFitted:
    """The history sent with a model request was fitted to the token budget of the agent's working memory.

    Emitted after `ModelRequestStarted` when messages were replaced by a summary; the fitted messages themselves
    are in the working memory's `last_fit`.
    """

    run_id: str
    """The run's id."""
    step: int
    """The step whose request was fitted."""
    kept: int
    """Messages of the history sent verbatim."""
    evicted: int
    """Messages of the history replaced by the summary."""
    tokens_before: int
    """Tokens of the full history."""
    tokens_after: int
    """Tokens of the history as sent."""
    budget: int
    """The token budget."""
    _: KW_ONLY
    summary: str | None = None
    """The summary sent at the start of the history."""
    summary_requests: int = 0
    """Requests made to the summary model for this fit (0 when the stored summary was reused)."""
    kind: Literal["history-fitted"] = "history-fitted"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class TextDelta:
    """A piece of the model's text, as it streams."""

    run_id: str
    """The run's id."""
    step: int
    """The step that produces the text."""
    delta: str
    """The new text."""
    _: KW_ONLY
    kind: Literal["text-delta"] = "text-delta"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class ThinkingDelta:
    """A piece of the model's reasoning, as it streams."""

    run_id: str
    """The run's id."""
    step: int
    """The step that produces the reasoning."""
    delta: str
    """The new reasoning text."""
    _: KW_ONLY
    kind: Literal["thinking-delta"] = "thinking-delta"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class ToolCallArgsDelta:
    """A piece of a tool call's JSON arguments, as the model streams them."""

    run_id: str
    """The run's id."""
    step: int
    """The step that produces the call."""
    index: int
    """The position of the call's part in the response."""
    tool_name: str | None
    """The tool's name, once known."""
    delta: str
    """The new argument text."""
    _: KW_ONLY
    kind: Literal["tool-call-args-delta"] = "tool-call-args-delta"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class ModelResponseReceived:
    """A model response is complete."""

    run_id: str
    """The run's id."""
    step: int
    """The step it answers."""
    response: ModelResponse
    """The whole response."""
    _: KW_ONLY
    kind: Literal["model-response-received"] = "model-response-received"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class ToolCallStarted:
    """A tool call began."""

    run_id: str
    """The run's id."""
    step: int
    """The step whose response asked for the call."""
    tool_name: str
    """The tool."""
    tool_call_id: str
    """The call's id."""
    args: dict[str, Any]
    """The validated arguments."""
    _: KW_ONLY
    kind: Literal["tool-call-started"] = "tool-call-started"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class ToolCallFinished:
    """A tool call ended, however it ended."""

    run_id: str
    """The run's id."""
    step: int
    """The step whose response asked for the call."""
    tool_name: str
    """The tool."""
    tool_call_id: str
    """The call's id."""
    outcome: ToolOutcome
    """`success` (it returned), `error` (it raised), `timeout` (it ran past its timeout) or `fallback` (it failed and
    its fallback answered: another tool, or its last good result with its age; a usable, degraded answer)."""
    duration_s: float
    """How long the call ran, in seconds of the run's clock."""
    result: Any
    """What the tool returned, or the error text the model will read."""
    _: KW_ONLY
    kind: Literal["tool-call-finished"] = "tool-call-finished"
    """Tag that identifies this event type."""


RetryCause: TypeAlias = Literal["tool-args", "tool-retry", "output", "unknown-tool", "model-error", "tool-error"]
"""What failed: the model's tool arguments, a tool's `ModelRetry`, the final output, an unknown tool name (all
answered by the model trying again), or an upstream failure (a model request or a tool call, tried again by the
retry policy after `delay_s`)."""


@dataclass(slots=True)
class RetryScheduled:
    """Something is tried again.

    The model's tool arguments or output failed validation, a tool asked for it (the model tries again), or a model
    request or tool call failed and the retry policy repeats it after `delay_s`.
    """

    run_id: str
    """The run's id."""
    step: int
    """The step whose output is retried."""
    cause: RetryCause
    """What failed."""
    attempt: int
    """Which retry this is, from 1."""
    delay_s: float
    """How long before the retry, in seconds."""
    message: str
    """The error the model will be shown, or the upstream error that is retried."""
    _: KW_ONLY
    tool_name: str | None = None
    """The tool concerned, if any."""
    error_type: str | None = None
    """The class name of the error retried (for `model-error` and `tool-error`)."""
    upstream: str | None = None
    """The upstream retried: a model's name or `tool:<name>`."""
    kind: Literal["retry-scheduled"] = "retry-scheduled"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class StreamRestarted:
    """The response being streamed for `step` broke off and starts again.

    Discard the partial text, thinking and tool-call arguments of this step received so far: the final response
    never mixes two attempts.
    """

    run_id: str
    """The run's id."""
    step: int
    """The step whose partial output is discarded."""
    model_name: str
    """The model that streams the new attempt."""
    reason: str
    """Why the stream restarted (the error that cut it)."""
    _: KW_ONLY
    discarded_chars: int = 0
    """How many characters of partial output were streamed and are now void."""
    kind: Literal["stream-restarted"] = "stream-restarted"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class FallbackUsed:
    """A model of a fallback chain failed (or its breaker was open), and the request moves to the next one."""

    run_id: str
    """The run's id."""
    step: int
    """The step whose request moves on."""
    from_model: str
    """The model that failed."""
    to_model: str
    """The model tried next."""
    error_type: str
    """The class name of the error that made the chain move on."""
    message: str
    """That error's message."""
    _: KW_ONLY
    after_stream_start: bool = False
    """Whether part of a response had already been streamed (a `StreamRestarted` event follows)."""
    kind: Literal["fallback-used"] = "fallback-used"
    """Tag that identifies this event type."""


CircuitState: TypeAlias = Literal["closed", "open", "half-open"]
"""A circuit breaker's state: calls flow, calls fail fast, or a few probe calls test the upstream."""


@dataclass(slots=True)
class CircuitStateChanged:
    """An upstream's circuit breaker changed state."""

    run_id: str | None
    """The run whose call changed it, or `None` outside a run."""
    upstream: str
    """The upstream (a model's name or `tool:<name>`)."""
    from_state: CircuitState
    """The state before."""
    to_state: CircuitState
    """The state now."""
    reason: str
    """Why (failure rate over the window, a probe's result, the open duration passed)."""
    _: KW_ONLY
    kind: Literal["circuit-state-changed"] = "circuit-state-changed"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class UsageUpdated:
    """The run's usage changed (after a model response or a batch of tool calls)."""

    run_id: str
    """The run's id."""
    usage: Usage
    """A snapshot of the run's usage so far."""
    _: KW_ONLY
    kind: Literal["usage-updated"] = "usage-updated"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class RunFinished:
    """The run produced its final output."""

    run_id: str
    """The run's id."""
    output: Any
    """The validated output."""
    usage: Usage
    """What the run consumed."""
    duration_s: float
    """How long the run took, in seconds of the run's clock."""
    _: KW_ONLY
    kind: Literal["run-finished"] = "run-finished"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class RunFailed:
    """The run ended with an error."""

    run_id: str
    """The run's id."""
    error_type: str
    """The exception's class name."""
    message: str
    """What went wrong and what to do."""
    usage: Usage
    """What the run consumed before it failed."""
    _: KW_ONLY
    kind: Literal["run-failed"] = "run-failed"
    """Tag that identifies this event type."""


@dataclass(slots=True)
class RunCancelled:
    """The run was cancelled (by its caller or a consumer) before it finished."""

    run_id: str
    """The run's id."""
    usage: Usage
    """What the run consumed before it stopped."""
    _: KW_ONLY
    kind: Literal["run-cancelled"] = "run-cancelled"
    """Tag that identifies this event type."""


AgentEvent: TypeAlias = Annotated[
    RunStarted
    | ModelRequestStarted
    | HistoryFitted
    | TextDelta
    | ThinkingDelta
    | ToolCallArgsDelta
    | ModelResponseReceived
    | ToolCallStarted
    | ToolCallFinished
    | RetryScheduled
    | StreamRestarted
    | FallbackUsed
    | CircuitStateChanged
    | UsageUpdated
    | RunFinished
    | RunFailed
    | RunCancelled,
    KIND,
]
"""Every event a run can emit."""


@cache
def _event_adapter() -> TypeAdapter[AgentEvent]:
    from pydantic import TypeAdapter

    return TypeAdapter(AgentEvent)


def event_to_json(event: AgentEvent) -> bytes:
    """Serialize an event to JSON; outputs that are not JSON types are rendered with `str`."""
    return _event_adapter().dump_json(event, fallback=str)


def event_from_json(data: str | bytes) -> AgentEvent:
    """Load an event serialized by [`event_to_json`][miniagent.events.event_to_json]."""
    return _event_adapter().validate_json(data)


EventHandler: TypeAlias = Callable[[AgentEvent], None]
"""A synchronous observer of every event of every run (logs, traces and metrics are handlers).

Called in the task that emits the event, so context variables (the correlation id, the current run from
[`current_run`][miniagent.context.current_run], an OpenTelemetry context) are those of the run at that point. A
handler must be quick and must not raise; an exception it raises is logged and swallowed, never the run's problem.
"""

_handlers: tuple[EventHandler, ...] = ()
_log = logging.getLogger("miniagent.events")


def add_event_handler(handler: EventHandler) -> Callable[[], None]:
    """Call `handler` with every event of every run in this process, from now on; returns a function removing it."""
    global _handlers
    _handlers = (*_handlers, handler)

    def remove() -> None:
        global _handlers
        _handlers = tuple(h for h in _handlers if h is not handler)

    return remove


def event_handlers() -> tuple[EventHandler, ...]:
    """The handlers added by [`add_event_handler`][miniagent.events.add_event_handler], in order."""
    return _handlers


def dispatch(event: AgentEvent) -> None:
    """Give `event` to every process-wide handler; a handler's exception is logged, never raised."""
    for handler in _handlers:
        try:
            handler(event)
        except Exception:
            _log.exception("event handler %r failed on %s", handler, type(event).__name__)
