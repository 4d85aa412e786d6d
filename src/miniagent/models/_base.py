"""The `Model` contract every provider implements, and the stream pieces providers produce."""

from __future__ import annotations

import itertools
from abc import ABC
from collections.abc import AsyncIterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal, TypeAlias

from ..messages import (
    FinishReason,
    ModelMessage,
    ModelResponse,
    ModelResponsePart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
)
from ..usage import Usage

__all__ = [
    "Model",
    "ModelRequestParameters",
    "ModelSettings",
    "ResponseAssembler",
    "StreamChunk",
    "StreamDone",
    "StreamReset",
    "TextChunk",
    "ThinkingChunk",
    "ToolCallChunk",
    "ToolDefinition",
]


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """What a model is told about a tool."""

    name: str
    """The name the model calls it by."""
    description: str
    """What the tool does, for the model."""
    parameters_json_schema: dict[str, Any]
    """A JSON schema (an object) of the arguments."""
    _: KW_ONLY
    kind: Literal["function", "output", "external"] = "function"
    """`function` for a tool the agent runs; `output` for the tool that delivers the structured final answer;
    `external` for a tool the caller runs itself (a call to it ends the run and is handed over, see
    [`ExternalToolCalls`][miniagent.agent.ExternalToolCalls])."""


@dataclass(frozen=True, slots=True)
class ModelRequestParameters:
    """What a run allows the model to do in one request."""

    _: KW_ONLY
    function_tools: Sequence[ToolDefinition] = ()
    """Tools the model may call."""
    output_tools: Sequence[ToolDefinition] = ()
    """Tools that deliver the final structured output; calling one ends the run."""
    allow_text_output: bool = True
    """Whether plain text is an acceptable final answer."""

    @property
    def all_tools(self) -> list[ToolDefinition]:
        """Function tools then output tools."""
        return [*self.function_tools, *self.output_tools]


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """Sampling settings passed to a provider; `None` leaves the provider's default."""

    _: KW_ONLY
    max_tokens: int | None = None
    """Most tokens to generate in one response."""
    temperature: float | None = None
    """Sampling temperature."""
    top_p: float | None = None
    """Nucleus sampling mass."""
    seed: int | None = None
    """Seed for providers that support deterministic sampling."""
    timeout_s: float | None = None
    """Deadline of one request, in seconds."""

    def merged(self, override: ModelSettings | None) -> ModelSettings:
        """These settings with every field that `override` sets replaced."""
        if override is None:
            return self
        return ModelSettings(
            max_tokens=override.max_tokens if override.max_tokens is not None else self.max_tokens,
            temperature=override.temperature if override.temperature is not None else self.temperature,
            top_p=override.top_p if override.top_p is not None else self.top_p,
            seed=override.seed if override.seed is not None else self.seed,
            timeout_s=override.timeout_s if override.timeout_s is not None else self.timeout_s,
        )


@dataclass(slots=True)
class TextChunk:
    """New text for the text part at `index` of the response being streamed."""

    index: int
    """Position of the part in the response."""
    delta: str
    """The new text."""


@dataclass(slots=True)
class ThinkingChunk:
    """New reasoning for the thinking part at `index`."""

    index: int
    """Position of the part in the response."""
    delta: str
    """The new reasoning text."""
    _: KW_ONLY
    signature: str | None = None
    """A new piece of the provider's signature (or encrypted form) of this reasoning, appended to what came before."""
    provider: str | None = None
    """The provider that produced the reasoning, needed to send a signature back."""


@dataclass(slots=True)
class ToolCallChunk:
    """A new piece of the tool call at `index`: its name and id arrive first, arguments in pieces."""

    index: int
    """Position of the part in the response."""
    _: KW_ONLY
    tool_name: str | None = None
    """The tool name, when this chunk carries it."""
    tool_call_id: str | None = None
    """The call id, when this chunk carries it."""
    args_delta: str = ""
    """New JSON argument text."""


@dataclass(slots=True)
class StreamDone:
    """The end of a streamed response: usage and metadata."""

    _: KW_ONLY
    usage: Usage = field(default_factory=Usage)
    """What the response consumed."""
    model_name: str | None = None
    """The model that answered."""
    finish_reason: FinishReason | None = None
    """Why the model stopped."""
    provider_details: dict[str, Any] | None = None
    """Provider-specific metadata."""


@dataclass(slots=True)
class StreamReset:
    """Discard every chunk of this response so far: the stream broke off and starts again.

    Emitted by resilience wrappers (a retry, or the next model of a fallback chain); the loop turns it into a
    `StreamRestarted` event.
    """

    reason: str
    """Why (the error that cut the stream)."""
    _: KW_ONLY
    model_name: str | None = None
    """The model that streams the new attempt."""


StreamChunk: TypeAlias = TextChunk | ThinkingChunk | ToolCallChunk | StreamDone | StreamReset
"""One piece of a streamed model response."""

_call_ids = itertools.count(1)


def new_tool_call_id() -> str:
    """An id for a tool call whose provider gave none."""
    return f"call_{next(_call_ids):06d}"


class ResponseAssembler:
    """Folds stream chunks into a [`ModelResponse`][miniagent.messages.ModelResponse] (sans-I/O).

    Providers that stream and providers that answer at once share this, so both paths build identical responses.
    """

    __slots__ = ("_parts", "_done", "_model_name")

    def __init__(self, model_name: str | None = None) -> None:
        self._parts: dict[int, TextPart | ThinkingPart | _PendingCall] = {}
        self._done: StreamDone | None = None
        self._model_name = model_name

    def add(self, chunk: StreamChunk) -> None:
        """Fold one chunk in."""
        if isinstance(chunk, TextChunk):
            part = self._parts.get(chunk.index)
            if isinstance(part, TextPart):
                part.content += chunk.delta
            else:
                self._parts[chunk.index] = TextPart(chunk.delta)
        elif isinstance(chunk, ThinkingChunk):
            part = self._parts.get(chunk.index)
            if isinstance(part, ThinkingPart):
                part.content += chunk.delta
            else:
                part = self._parts[chunk.index] = ThinkingPart(chunk.delta)
            if chunk.signature:
                part.signature = (part.signature or "") + chunk.signature
            if chunk.provider:
                part.provider = chunk.provider
        elif isinstance(chunk, ToolCallChunk):
            part = self._parts.get(chunk.index)
            if not isinstance(part, _PendingCall):
                part = self._parts[chunk.index] = _PendingCall()
            if chunk.tool_name:
                part.name = chunk.tool_name
            if chunk.tool_call_id:
                part.call_id = chunk.tool_call_id
            if chunk.args_delta:
                part.args.append(chunk.args_delta)
        elif isinstance(chunk, StreamReset):
            self._parts.clear()
            self._done = None
            if chunk.model_name:
                self._model_name = chunk.model_name
        else:
            self._done = chunk

    def streamed_chars(self) -> int:
        """How many characters of text, thinking and tool arguments were folded in since the last reset."""
        total = 0
        for part in self._parts.values():
            total += sum(len(a) for a in part.args) if isinstance(part, _PendingCall) else len(part.content)
        return total

    def tool_name(self, index: int) -> str | None:
        """The tool name known so far for the call at `index`."""
        part = self._parts.get(index)
        return part.name if isinstance(part, _PendingCall) else None

    def tool_args(self, index: int) -> str:
        """The argument text received so far for the call at `index`."""
        part = self._parts.get(index)
        return "".join(part.args) if isinstance(part, _PendingCall) else ""

    def response(self) -> ModelResponse:
        """The response assembled from every chunk so far."""
        parts: list[ModelResponsePart] = []
        for index in sorted(self._parts):
            part = self._parts[index]
            if isinstance(part, _PendingCall):
                parts.append(ToolCallPart(part.name, "".join(part.args), part.call_id or new_tool_call_id()))
            elif part.content or (isinstance(part, ThinkingPart) and part.signature):
                parts.append(part)
        done = self._done or StreamDone()
        has_calls = any(isinstance(p, ToolCallPart) for p in parts)
        return ModelResponse(
            parts,
            usage=done.usage,
            model_name=done.model_name or self._model_name,
            finish_reason=done.finish_reason or ("tool_call" if has_calls else "stop"),
            provider_details=done.provider_details,
        )


@dataclass(slots=True)
class _PendingCall:
    name: str = ""
    call_id: str | None = None
    args: list[str] = field(default_factory=list)


def endpoint_upstream(name: str, base_url: str | None) -> str:
    """A model's `upstream` for an HTTP endpoint: its name and base URL, credentials and query removed."""
    if not base_url:
        return name
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{name}@{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def response_chunks(response: ModelResponse) -> list[StreamChunk]:
    """Split a complete response into the chunks that would have streamed it."""
    chunks: list[StreamChunk] = []
    for index, part in enumerate(response.parts):
        if isinstance(part, TextPart):
            chunks.append(TextChunk(index, part.content))
        elif isinstance(part, ThinkingPart):
            chunks.append(ThinkingChunk(index, part.content, signature=part.signature, provider=part.provider))
        else:
            chunks.append(
                ToolCallChunk(
                    index, tool_name=part.tool_name, tool_call_id=part.tool_call_id, args_delta=part.args_json()
                )
            )
    chunks.append(
        StreamDone(
            usage=response.usage,
            model_name=response.model_name,
            finish_reason=response.finish_reason,
            provider_details=response.provider_details,
        )
    )
    return chunks


# A provider overrides `request`, `request_stream` or both: neither alone is abstract.
class Model(ABC):  # noqa: B024
    """A language model the loop can ask for responses.

    A provider overrides `request`, `request_stream` or both; each has a default built on the other, so a provider
    that only streams (or only answers at once) still supports both. Optional abilities raise
    `NotImplementedError` naming the class.
    """

    @property
    def name(self) -> str:
        """The model's name as reported in events and responses."""
        return type(self).__name__

    @property
    def upstream(self) -> str:
        """What this model calls, for circuit breakers: models with the same upstream share one breaker.

        The name by default; HTTP providers add their endpoint (without credentials), so two servers serving the
        same model name fail separately.
        """
        return self.name

    @property
    def supports_streaming(self) -> bool:
        """Whether `request_stream` delivers pieces as they are produced (rather than the whole response at once)."""
        return type(self).request_stream is not Model.request_stream

    async def request(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse:
        """Ask the model for one complete response to `messages`."""
        if type(self).request_stream is Model.request_stream:
            raise NotImplementedError(f"{type(self).__name__} must implement `request` or `request_stream`.")
        assembler = ResponseAssembler(self.name)
        async for chunk in self.request_stream(messages, settings, params):
            assembler.add(chunk)
        return assembler.response()

    async def request_stream(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> AsyncIterator[StreamChunk]:
        """Ask the model for one response to `messages`, streamed as chunks ending with a `StreamDone`."""
        if type(self).request is Model.request:
            raise NotImplementedError(f"{type(self).__name__} must implement `request` or `request_stream`.")
        response = await self.request(messages, settings, params)
        for chunk in response_chunks(response):
            yield chunk

    def count_tokens(self, messages: list[ModelMessage]) -> int:
        """How many tokens `messages` take for this model."""
        raise NotImplementedError(f"{type(self).__name__} does not count tokens.")

    async def aclose(self) -> None:  # noqa: B027 (an optional hook: most models hold nothing to close)
        """Release what the model holds (connections, weights)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
