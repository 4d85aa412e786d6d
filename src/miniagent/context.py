"""What code running inside a run can know about it.

- [`RunContext`][miniagent.context.RunContext]: what a tool (or output validator) is passed.
- [`current_run`][miniagent.context.current_run]: the run executing in this task (for wrappers, event handlers and
  store writes that are not handed the run), and [`emit_event`][miniagent.context.emit_event] to add an event to it.
- The correlation id: one id per request, set at the edge (CLI, HTTP `X-Request-ID`, a worker's message) with
  [`correlation_scope`][miniagent.context.correlation_scope] and carried by every log line, span, event and row.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from .usage import Usage

if TYPE_CHECKING:
    from .events import AgentEvent
    from .messages import ModelMessage
    from .models import Model

__all__ = [
    "Handback",
    "handback_requested",
    "handback_scope",
    "DepsT",
    "RunContext",
    "RunScope",
    "correlation_id",
    "correlation_scope",
    "current_correlation_id",
    "current_run",
    "emit_event",
    "run_scope",
]

_correlation: ContextVar[str | None] = ContextVar("miniagent_correlation_id", default=None)
_run: ContextVar[RunScope | None] = ContextVar("miniagent_run", default=None)


def new_correlation_id() -> str:
    """A fresh correlation id (32 hex digits)."""
    return uuid.uuid4().hex


def current_correlation_id() -> str | None:
    """The correlation id of this task, or `None` when no edge set one."""
    return _correlation.get()


def correlation_id() -> str:
    """The correlation id of this task; one is generated and set for the rest of this context when absent."""
    value = _correlation.get()
    if value is None:
        value = new_correlation_id()
        _correlation.set(value)
    return value


@contextmanager
def correlation_scope(value: str | None = None) -> Iterator[str]:
    """Set the correlation id for the code inside (a new one when `value` is `None` or empty), restoring it after."""
    if value is not None and (not value.strip() or len(value) > 200):
        value = None  # an edge passes what it received: an empty or oversized header gets a fresh id
    token = _correlation.set(value or new_correlation_id())
    try:
        yield _correlation.get() or ""
    finally:
        _correlation.reset(token)


@dataclass(slots=True)
class RunScope:
    """The run executing in the current task, as code that is not handed the run sees it."""

    run_id: str
    """The run's id."""
    agent_name: str
    """The agent that runs."""
    correlation_id: str
    """The request's correlation id."""
    emit: Callable[[AgentEvent], Awaitable[None]]
    """Adds an event to the run's stream (and every handler)."""
    _: KW_ONLY
    thread_id: str | None = None
    """The stored thread, when the run is persisted."""
    user_id: str | None = None
    """The user the run is for, when known."""
    tenant_id: str | None = None
    """The tenant the run belongs to, when known."""
    step: int = 0
    """The current step (model request) number, kept up to date by the loop."""


def current_run() -> RunScope | None:
    """The run executing in this task, or `None` outside a run."""
    return _run.get()


@contextmanager
def run_scope(scope: RunScope) -> Iterator[RunScope]:
    """Make `scope` the current run for the code inside (the loop sets it; tests may too)."""
    token = _run.set(scope)
    try:
        yield scope
    finally:
        _run.reset(token)


async def emit_event(event: AgentEvent) -> None:
    """Add `event` to the current run's stream; outside a run, give it to the process-wide handlers only."""
    scope = _run.get()
    if scope is not None:
        await scope.emit(event)
    else:
        from .events import dispatch

        dispatch(event)


DepsT = TypeVar("DepsT")
"""The type of an agent's dependencies."""


@dataclass(slots=True)
class RunContext(Generic[DepsT]):
    """Passed as the first argument to tools that declare it, e.g. `def lookup(ctx: RunContext[Db], key: str)`."""

    deps: DepsT
    """The dependencies given to `agent.run(..., deps=...)`."""
    _: KW_ONLY
    run_id: str
    """The run's id."""
    model: Model
    """The model the run uses."""
    usage: Usage = field(default_factory=Usage)
    """The run's usage so far (live)."""
    messages: list[ModelMessage] = field(default_factory=list)
    """The run's history so far (live)."""
    step: int = 0
    """The current step (model request) number."""
    tool_name: str | None = None
    """The tool being called, inside a tool."""
    tool_call_id: str | None = None
    """The id of the call being made, inside a tool."""
    retry: int = 0
    """How many times the current tool (or output) has been retried so far."""


@dataclass
class Handback:
    """Set `requested` before cancelling a run's task to hand the run back to its job queue: the run then records
    nothing of its cancellation (no `run-cancelled` event, no `cancelled` state), and another worker continues it.
    """  # noqa: D205

    requested: bool = False
    """Whether the coming cancellation is a hand-back."""


_HANDBACK: ContextVar[Handback | None] = ContextVar("miniagent_handback", default=None)


@contextmanager
def handback_scope() -> Iterator[Handback]:
    """A `Handback` for the runs started inside the block (the run manager wraps each queued run in one)."""
    handback = Handback()
    token = _HANDBACK.set(handback)
    try:
        yield handback
    finally:
        _HANDBACK.reset(token)


def handback_requested() -> bool:
    """Whether the current run's cancellation hands it back to the queue (see `Handback`)."""
    handback = _HANDBACK.get()
    return handback is not None and handback.requested
