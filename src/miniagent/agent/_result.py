"""What a finished run returns."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Generic, TypeVar

from ..messages import ModelMessage, ModelResponse, ToolCallPart
from ..usage import Usage

OutputT = TypeVar("OutputT")

__all__ = ["ExternalToolCalls", "RunResult"]


@dataclass(slots=True)
class ExternalToolCalls:
    """The output of a run that ended because the model called tools its caller runs itself (external tools).

    The run stops at the model's response instead of executing anything: the caller runs `calls` and continues the
    conversation with their results (the OpenAI-compatible server hands them to its client as `tool_calls`). Calls
    to the agent's own tools in that same response are not executed either; the model asks again if it still needs
    them.
    """

    calls: list[ToolCallPart]
    """The model's calls to external tools, in order, with their ids."""


@dataclass(slots=True)
class RunResult(Generic[OutputT]):
    """The outcome of a run: its validated output, its messages and what it consumed."""

    output: OutputT
    """The final answer: text, or an instance of the agent's `output_type`."""
    _: KW_ONLY
    run_id: str
    """The run's id, as on its events."""
    messages: list[ModelMessage]
    """The whole history: what was passed in as `message_history` plus this run's messages."""
    new_message_index: int
    """Where this run's own messages start in `messages`."""
    usage: Usage
    """What the run consumed."""
    model_name: str
    """The model that produced the answer."""
    thread_id: str | None = None
    """The store thread the run was saved in (`None` for runs kept in memory)."""

    def all_messages(self) -> list[ModelMessage]:
        """Every message, to pass as `message_history` to continue the conversation."""
        return list(self.messages)

    def new_messages(self) -> list[ModelMessage]:
        """Only this run's messages."""
        return self.messages[self.new_message_index :]

    @property
    def response(self) -> ModelResponse:
        """The model's last response."""
        for message in reversed(self.messages):
            if isinstance(message, ModelResponse):
                return message
        raise LookupError("the run has no model response")
