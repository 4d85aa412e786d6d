"""The running summary of evicted messages, and where it is kept between turns."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import KW_ONLY, dataclass
from typing import Protocol, runtime_checkable

from ..messages import (
    ModelMessage,
    ModelRequest,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
    messages_to_json,
)

__all__ = ["InMemorySummaryStore", "StoredSummary", "SummaryStore"]


@dataclass(frozen=True, slots=True)
class StoredSummary:
    """A summary of some messages of a conversation, with what it covers so it can be reused on later turns."""

    text: str
    """The summary, as the summary model wrote it."""
    _: KW_ONLY
    message_count: int
    """How many messages of the history (from the start) existed when the summary was made."""
    covered: tuple[int, ...]
    """The indices (into the history) of the messages the summary replaces, ascending, all below `message_count`."""
    fingerprint: str
    """A hash of the first `message_count` messages: a summary applies only to a history that still starts so."""


@runtime_checkable
class SummaryStore(Protocol):
    """Where [`WorkingMemory`][miniagent.memory.WorkingMemory] keeps its summaries: the latest one per conversation.

    Implement it to keep summaries elsewhere (the default store keeps them in its database). A summary read back is
    checked against the history (`fingerprint`) before it is used, so a store may return a stale one safely.
    """

    async def get(self, key: str) -> StoredSummary | None:
        """The latest summary put for the conversation `key`, or `None`."""
        ...

    async def put(self, key: str, summary: StoredSummary) -> None:
        """Keep `summary` as the latest for the conversation `key` (replacing the previous one)."""
        ...


class InMemorySummaryStore:
    """A [`SummaryStore`][miniagent.memory.SummaryStore] in a dict, bounded to the `max_entries` most recently used.

    Args:
        max_entries: Conversations remembered; the least recently used is forgotten first.
    """

    def __init__(self, *, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, StoredSummary] = OrderedDict()

    async def get(self, key: str) -> StoredSummary | None:
        """The latest summary of the conversation `key`, or `None`."""
        summary = self._entries.get(key)
        if summary is not None:
            self._entries.move_to_end(key)
        return summary

    async def put(self, key: str, summary: StoredSummary) -> None:
        """Keep `summary` as the latest of the conversation `key`."""
        self._entries[key] = summary
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def fingerprint(messages: list[ModelMessage]) -> str:
    """A hash of the messages' JSON form: equal for equal histories."""
    return hashlib.sha256(messages_to_json(messages)).hexdigest()


SUMMARY_INSTRUCTIONS = (
    "You condense the earlier part of a conversation between a user and an AI assistant, so the assistant can "
    "continue it without the full transcript. Keep what may matter later: the user's goals, facts and preferences, "
    "names, numbers, decisions, tool results and open tasks. Drop small talk and failed attempts. Write concise "
    "notes in the third person, with no preamble."
)
"""The default system prompt of the summary request."""

SUMMARY_NOTE = "Summary of the earlier conversation (older messages were condensed to fit the context window):\n\n"
"""What precedes the summary in the note the model sees at the start of the fitted history."""

_PART_CHARS = 4000


def render_transcript(messages: list[ModelMessage]) -> str:
    """The messages as a plain-text transcript for the summary model (each part cut at 4,000 characters)."""
    lines: list[str] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart):
                    images = f" [+{len(part.attachments)} image(s)]" if part.attachments else ""
                    lines.append(f"User: {_cut(part.content)}{images}")
                elif isinstance(part, ToolReturnPart):
                    lines.append(f"Tool {part.tool_name!r} returned ({part.outcome}): {_cut(part.content_text())}")
                elif isinstance(part, RetryPromptPart):
                    lines.append(f"Retry requested: {_cut(part.content)}")
                elif isinstance(part, SystemPromptPart):
                    lines.append(f"System: {_cut(part.content)}")
        else:
            for rpart in message.parts:
                if isinstance(rpart, TextPart):
                    lines.append(f"Assistant: {_cut(rpart.content)}")
                elif isinstance(rpart, ToolCallPart):
                    lines.append(f"Assistant called {rpart.tool_name!r} with {_cut(rpart.args_json())}")
                elif isinstance(rpart, ThinkingPart):
                    continue  # reasoning is the model's scratchpad, not part of the conversation
    return "\n".join(lines)


def _cut(text: str) -> str:
    return text if len(text) <= _PART_CHARS else text[:_PART_CHARS] + " [...]"


def summary_prompt(previous: str | None, transcript: str) -> str:
    """The user message of a summary request: the summary so far and the messages to fold in."""
    if previous:
        return (
            f"Summary so far:\n{previous}\n\nMore messages to fold into it:\n{transcript}\n\nWrite the updated summary."
        )
    return f"Messages to summarize:\n{transcript}\n\nWrite the summary."
