"""[`RunContext`][miniagent.context.RunContext]: what a tool (or output validator) knows about the run calling it."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from .usage import Usage

if TYPE_CHECKING:
    from .messages import ModelMessage
    from .models import Model

__all__ = ["DepsT", "RunContext"]

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
