"""miniagent's own message format: what a run sends to a model and what comes back.

A conversation is a list of [`ModelMessage`][miniagent.messages.ModelMessage]: requests (parts we send) and
responses (parts the model produced). Providers translate these to and from their wire formats; nothing above
`miniagent.models` names a provider. Serialize histories with [`messages_to_json`][miniagent.messages.messages_to_json]
and load them back with [`messages_from_json`][miniagent.messages.messages_from_json].
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from ._utils import KIND
from .usage import Usage

if TYPE_CHECKING:
    from pydantic import TypeAdapter

__all__ = [
    "Attachment",
    "BinaryContent",
    "ImageUrl",
    "FinishReason",
    "ModelMessage",
    "ModelRequest",
    "ModelRequestPart",
    "ModelResponse",
    "ModelResponsePart",
    "Prompt",
    "RetryPromptPart",
    "SystemPromptPart",
    "TextPart",
    "ThinkingPart",
    "ToolCallPart",
    "ToolOutcome",
    "ToolReturnPart",
    "UserPromptPart",
    "messages_from_json",
    "prompt_part",
    "messages_to_json",
]

ToolOutcome: TypeAlias = Literal["success", "error", "timeout", "fallback"]
"""How a tool call ended: it returned, it raised, it ran past its timeout, or it failed and its fallback answered
(another tool, or its last good result)."""

FinishReason: TypeAlias = Literal["stop", "length", "tool_call", "content_filter", "error"]
"""Why the model stopped generating."""


@dataclass(slots=True)
class SystemPromptPart:
    """Instructions for the model, sent before the conversation."""

    content: str
    """The instructions."""
    _: KW_ONLY
    kind: Literal["system-prompt"] = "system-prompt"
    """Tag that identifies this part type."""


@dataclass(slots=True)
class ImageUrl:
    """An image the model should look at, by URL (`https://...` or a `data:` URL)."""

    url: str
    """Where the provider fetches the image."""
    _: KW_ONLY
    kind: Literal["image-url"] = "image-url"
    """Tag that identifies this attachment type."""


@dataclass(slots=True)
class BinaryContent:
    """Bytes the model should look at (an image today), with their media type."""

    data: bytes
    """The raw bytes (serialized as base64)."""
    media_type: str
    """The IANA media type, e.g. `image/png`."""
    _: KW_ONLY
    kind: Literal["binary"] = "binary"
    """Tag that identifies this attachment type."""

    @property
    def is_image(self) -> bool:
        """Whether the bytes are an image."""
        return self.media_type.startswith("image/")

    def data_url(self) -> str:
        """The bytes as a `data:` URL."""
        import base64

        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode()}"


Attachment: TypeAlias = Annotated[ImageUrl | BinaryContent, KIND]
"""Non-text content sent with a user prompt."""


@dataclass(slots=True)
class UserPromptPart:
    """What the user said: text, and optionally attachments such as images."""

    content: str
    """The user's text."""
    _: KW_ONLY
    attachments: list[Attachment] = field(default_factory=list)
    """Images (by URL or bytes) sent with the text, in order after it."""
    kind: Literal["user-prompt"] = "user-prompt"
    """Tag that identifies this part type."""


@dataclass(slots=True)
class ToolReturnPart:
    """The result of a tool call, sent back to the model."""

    tool_name: str
    """The tool that was called."""
    content: Any
    """What the tool returned, or a description of its error."""
    tool_call_id: str
    """The id of the [`ToolCallPart`][miniagent.messages.ToolCallPart] this answers."""
    _: KW_ONLY
    outcome: ToolOutcome = "success"
    """Whether the tool returned (`success`), raised (`error`), ran past its timeout (`timeout`), or failed and its
    fallback answered (`fallback`)."""
    kind: Literal["tool-return"] = "tool-return"
    """Tag that identifies this part type."""

    def content_text(self) -> str:
        """The content as text for a model: strings as they are, anything else as JSON."""
        if isinstance(self.content, str):
            return self.content
        return json.dumps(self.content, default=str, ensure_ascii=False)


@dataclass(slots=True)
class RetryPromptPart:
    """Asks the model to try again: its tool arguments or its output failed validation, or a tool asked for it."""

    content: str
    """What was wrong, for the model to read."""
    _: KW_ONLY
    tool_name: str | None = None
    """The tool whose call failed, or `None` when the final output failed."""
    tool_call_id: str | None = None
    """The id of the failed call, if any."""
    kind: Literal["retry-prompt"] = "retry-prompt"
    """Tag that identifies this part type."""

    def model_text(self) -> str:
        """The retry instruction as a model should read it."""
        return f"{self.content}\n\nFix the errors and try again."


Prompt: TypeAlias = "str | Sequence[str | ImageUrl | BinaryContent]"
"""What a run can be started with: text, or text and images in order."""


def prompt_part(prompt: Prompt) -> UserPromptPart:
    """The user part for a prompt: the text pieces joined by newlines, the rest as attachments."""
    if isinstance(prompt, str):
        return UserPromptPart(prompt)
    texts: list[str] = []
    attachments: list[Attachment] = []
    for item in prompt:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, ImageUrl | BinaryContent):
            attachments.append(item)
        else:
            raise TypeError(f"a prompt holds text, ImageUrl or BinaryContent items, got {type(item).__name__}")
    return UserPromptPart("\n".join(texts), attachments=attachments)


ModelRequestPart: TypeAlias = Annotated[SystemPromptPart | UserPromptPart | ToolReturnPart | RetryPromptPart, KIND]
"""A part of a message we send to the model."""


@dataclass(slots=True)
class TextPart:
    """Text the model produced."""

    content: str
    """The text."""
    _: KW_ONLY
    kind: Literal["text"] = "text"
    """Tag that identifies this part type."""


@dataclass(slots=True)
class ThinkingPart:
    """Reasoning the model produced before its answer, where the provider exposes it."""

    content: str
    """The reasoning text (may be empty when the provider returns only an encrypted form)."""
    _: KW_ONLY
    signature: str | None = None
    """The provider's signature or encrypted form of the reasoning, sent back unchanged on the next request."""
    provider: str | None = None
    """The provider that produced it: a signature is only meaningful to that provider."""
    kind: Literal["thinking"] = "thinking"
    """Tag that identifies this part type."""


@dataclass(slots=True)
class ToolCallPart:
    """The model asks for a tool to be called."""

    tool_name: str
    """The tool to call."""
    args: str | dict[str, Any]
    """The arguments: a JSON object as text (as most providers stream it) or already parsed."""
    tool_call_id: str
    """An id unique within the run, echoed by the matching [`ToolReturnPart`][miniagent.messages.ToolReturnPart]."""
    _: KW_ONLY
    kind: Literal["tool-call"] = "tool-call"
    """Tag that identifies this part type."""

    def args_dict(self) -> dict[str, Any]:
        """The arguments as a dict.

        Raises:
            ValueError: the arguments are not a JSON object.
        """
        if isinstance(self.args, dict):
            return self.args
        if not self.args.strip():
            return {}
        parsed = json.loads(self.args)
        if not isinstance(parsed, dict):
            raise ValueError(f"tool arguments must be a JSON object, got {type(parsed).__name__}")
        return parsed

    def args_json(self) -> str:
        """The arguments as JSON text."""
        if isinstance(self.args, str):
            return self.args or "{}"
        return json.dumps(self.args, ensure_ascii=False)


ModelResponsePart: TypeAlias = Annotated[TextPart | ThinkingPart | ToolCallPart, KIND]
"""A part of a model's response."""


@dataclass(slots=True)
class ModelRequest:
    """One message we send to the model: instructions, user text, tool results or retry prompts."""

    parts: list[ModelRequestPart]
    """The parts, in order."""
    _: KW_ONLY
    kind: Literal["request"] = "request"
    """Tag that identifies this message type."""


@dataclass(slots=True)
class ModelResponse:
    """One response from the model."""

    parts: list[ModelResponsePart]
    """The parts, in order: text, thinking and tool calls."""
    _: KW_ONLY
    usage: Usage = field(default_factory=Usage)
    """What this response consumed, as the provider reported it."""
    model_name: str | None = None
    """The model that produced the response."""
    finish_reason: FinishReason | None = None
    """Why the model stopped."""
    timestamp: float = field(default_factory=time.time)
    """When the response was complete, in seconds since the epoch."""
    provider_details: dict[str, Any] | None = None
    """Provider-specific data that has no place in the parts (ids, raw stop reasons)."""
    kind: Literal["response"] = "response"
    """Tag that identifies this message type."""

    @property
    def text(self) -> str:
        """All text parts joined."""
        return "".join(p.content for p in self.parts if isinstance(p, TextPart))

    @property
    def tool_calls(self) -> list[ToolCallPart]:
        """The tool calls in this response, in order."""
        return [p for p in self.parts if isinstance(p, ToolCallPart)]


ModelMessage: TypeAlias = Annotated[ModelRequest | ModelResponse, KIND]
"""A message in a conversation: a request we sent or a response we received."""


@cache
def _messages_adapter() -> TypeAdapter[list[ModelMessage]]:
    # Built on first use: a TypeAdapter costs a few milliseconds, and `import miniagent` stays light.
    from pydantic import TypeAdapter

    return TypeAdapter(list[ModelMessage])


def messages_to_json(messages: list[ModelMessage]) -> bytes:
    """Serialize a conversation to JSON bytes, which `messages_from_json` reads back."""
    return _messages_adapter().dump_json(messages)


def messages_from_json(data: str | bytes) -> list[ModelMessage]:
    """Load a conversation serialized by [`messages_to_json`][miniagent.messages.messages_to_json].

    Raises:
        pydantic.ValidationError: the data is not a valid conversation; the error names the bad entry.
    """
    return _messages_adapter().validate_json(data)
