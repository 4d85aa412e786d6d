"""Models for tests: no network, no weights, fully scripted. Users get them from `miniagent.testing`."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from ..messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from ..usage import Usage
from ._base import (
    Model,
    ModelRequestParameters,
    ModelSettings,
    ResponseAssembler,
    StreamChunk,
    StreamDone,
    TextChunk,
    new_tool_call_id,
    response_chunks,
)

__all__ = [
    "AgentInfo",
    "EchoModel",
    "FunctionModel",
    "ScriptedModel",
    "ScriptedStep",
    "UnconsumedModelSteps",
    "UnexpectedModelCall",
    "estimate_usage",
    "text_response",
    "tool_call_response",
]


class UnexpectedModelCall(AssertionError):
    """A [`ScriptedModel`][miniagent.testing.ScriptedModel] was asked for more responses than it was given."""


class UnconsumedModelSteps(AssertionError):
    """A [`ScriptedModel`][miniagent.testing.ScriptedModel] finished with responses nobody asked for."""


ScriptedStep: TypeAlias = ModelResponse | str | BaseException | Sequence[StreamChunk | str]
"""One scripted answer: a response, plain text, an exception to raise, or the chunks of a streamed response."""


def text_response(text: str) -> ModelResponse:
    """A response with one text part."""
    return ModelResponse([TextPart(text)], finish_reason="stop")


def tool_call_response(*calls: tuple[str, dict[str, Any] | str]) -> ModelResponse:
    """A response that calls tools, e.g. `tool_call_response(("get_weather", {"city": "Paris"}))`."""
    return ModelResponse(
        [ToolCallPart(name, args, new_tool_call_id()) for name, args in calls],
        finish_reason="tool_call",
    )


def _words(text: str) -> int:
    return len(text.split())


def estimate_usage(messages: Iterable[ModelMessage], response: ModelResponse) -> Usage:
    """Token counts that test models report: one token per whitespace-separated word."""
    input_tokens = 0
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, SystemPromptPart | UserPromptPart | RetryPromptPart):
                    input_tokens += _words(part.content)
                else:
                    input_tokens += _words(part.content_text())
        else:
            for rpart in message.parts:
                input_tokens += _words(rpart.args_json() if isinstance(rpart, ToolCallPart) else rpart.content)
    output_tokens = sum(_words(p.args_json() if isinstance(p, ToolCallPart) else p.content) for p in response.parts)
    return Usage(input_tokens=input_tokens + 1, output_tokens=output_tokens)


@dataclass(slots=True)
class ModelCall:
    """What a test model was asked: the messages and what the run allowed."""

    messages: list[ModelMessage]
    """The history the model saw."""
    params: ModelRequestParameters
    """The tools and output the run offered."""
    settings: ModelSettings | None
    """The sampling settings."""


class ScriptedModel(Model):
    """Answers each request with the next scripted step, and records every call.

    Example:
        ```python
        from miniagent import Agent
        from miniagent.testing import ScriptedModel, tool_call_response

        model = ScriptedModel([tool_call_response(("add", {"a": 1, "b": 2})), "3"])
        agent = Agent(model=model)

        @agent.tool
        def add(a: int, b: int) -> int:
            return a + b

        assert agent.run_sync("1 + 2?").output == "3"
        model.assert_consumed()
        ```
    """

    def __init__(self, steps: Iterable[ScriptedStep], *, name: str = "scripted") -> None:
        self._steps = list(steps)
        self._name = name
        self.calls: list[ModelCall] = []
        """Every request made, in order."""

    @property
    def name(self) -> str:
        """The model's name."""
        return self._name

    @property
    def upstream(self) -> str:
        """This instance: a test model's failures never open the circuit breaker of another test's model."""
        return f"{self._name}#{id(self):x}"

    @property
    def supports_streaming(self) -> bool:
        """Scripted chunks stream one at a time."""
        return True

    def _next(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse | Sequence[StreamChunk | str]:
        self.calls.append(ModelCall(list(messages), params, settings))
        if not self._steps:
            raise UnexpectedModelCall(
                f"ScriptedModel {self._name!r} was asked for response #{len(self.calls)} but only "
                f"{len(self.calls) - 1} were scripted; add more steps."
            )
        step = self._steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, str):
            return text_response(step)
        return step

    async def request(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse:
        """The next scripted step, as a complete response."""
        step = self._next(messages, settings, params)
        if isinstance(step, ModelResponse):
            return _with_usage(step, messages, self._name)
        assembler = ResponseAssembler(self._name)
        for chunk in _normalize_chunks(step):
            assembler.add(chunk)
        return _with_usage(assembler.response(), messages, self._name)

    async def request_stream(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> AsyncIterator[StreamChunk]:
        """The next scripted step, chunk by chunk."""
        step = self._next(messages, settings, params)
        if isinstance(step, ModelResponse):
            chunks = response_chunks(_with_usage(step, messages, self._name))
        else:
            chunks = list(_normalize_chunks(step))
            if not isinstance(chunks[-1], StreamDone):
                assembler = ResponseAssembler(self._name)
                for chunk in chunks:
                    assembler.add(chunk)
                response = assembler.response()
                chunks.append(
                    StreamDone(usage=estimate_usage(messages, response), model_name=self._name, finish_reason=None)
                )
        for chunk in chunks:
            yield chunk

    @property
    def remaining(self) -> int:
        """Scripted steps not yet used."""
        return len(self._steps)

    def assert_consumed(self) -> None:
        """Raise [`UnconsumedModelSteps`][miniagent.testing.UnconsumedModelSteps] if any step was never used."""
        if self._steps:
            raise UnconsumedModelSteps(f"ScriptedModel {self._name!r} has {len(self._steps)} unused step(s).")


def _normalize_chunks(step: Sequence[StreamChunk | str]) -> Iterable[StreamChunk]:
    for chunk in step:
        yield TextChunk(0, chunk) if isinstance(chunk, str) else chunk


def _with_usage(response: ModelResponse, messages: list[ModelMessage], name: str) -> ModelResponse:
    if response.usage.input_tokens or response.usage.output_tokens:
        usage = response.usage
    else:
        usage = estimate_usage(messages, response)
    return ModelResponse(
        list(response.parts),
        usage=usage,
        model_name=response.model_name or name,
        finish_reason=response.finish_reason,
        provider_details=response.provider_details,
    )


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """What a [`FunctionModel`][miniagent.testing.FunctionModel]'s function is told besides the messages."""

    params: ModelRequestParameters
    """The tools and output the run offered."""
    settings: ModelSettings | None
    """The sampling settings."""
    step: int
    """How many requests this model has answered before this one, plus one."""


ModelFunction: TypeAlias = Callable[
    [list[ModelMessage], AgentInfo], ModelResponse | str | Awaitable[ModelResponse | str]
]
StreamFunction: TypeAlias = Callable[[list[ModelMessage], AgentInfo], AsyncIterator[StreamChunk | str]]


class FunctionModel(Model):
    """A Python function decides each response: `(messages, info) -> ModelResponse | str` (sync or async).

    Give `stream_function` (an async generator of chunks or strings) to control streaming too.
    """

    def __init__(
        self,
        function: ModelFunction | None = None,
        *,
        stream_function: StreamFunction | None = None,
        name: str = "function",
    ) -> None:
        if function is None and stream_function is None:
            raise TypeError("FunctionModel needs `function`, `stream_function` or both.")
        self._function = function
        self._stream_function = stream_function
        self._name = name
        self._step = 0

    @property
    def name(self) -> str:
        """The model's name."""
        return self._name

    @property
    def upstream(self) -> str:
        """This instance: a test model's failures never open the circuit breaker of another test's model."""
        return f"{self._name}#{id(self):x}"

    @property
    def supports_streaming(self) -> bool:
        """Whether a stream function was given."""
        return self._stream_function is not None

    def _info(self, settings: ModelSettings | None, params: ModelRequestParameters) -> AgentInfo:
        self._step += 1
        return AgentInfo(params, settings, self._step)

    async def request(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse:
        """Call the function for a complete response (or assemble the stream function's chunks)."""
        if self._function is None:
            assembler = ResponseAssembler(self._name)
            async for chunk in self.request_stream(messages, settings, params):
                assembler.add(chunk)
            return assembler.response()
        result = self._function(messages, self._info(settings, params))
        if inspect.isawaitable(result):
            result = await result
        response = text_response(result) if isinstance(result, str) else result
        return _with_usage(response, messages, self._name)

    async def request_stream(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> AsyncIterator[StreamChunk]:
        """Stream the stream function's chunks (or the function's whole response)."""
        if self._stream_function is None:
            response = await self.request(messages, settings, params)
            for chunk in response_chunks(response):
                yield chunk
            return
        assembler = ResponseAssembler(self._name)
        done = False
        async for item in self._stream_function(messages, self._info(settings, params)):
            chunk = TextChunk(0, item) if isinstance(item, str) else item
            done = done or isinstance(chunk, StreamDone)
            assembler.add(chunk)
            yield chunk
        if not done:
            yield StreamDone(usage=estimate_usage(messages, assembler.response()), model_name=self._name)


class EchoModel(Model):
    """Model string `'test'`: calls each offered tool once with schema-valid placeholder arguments, then echoes.

    Useful to smoke-test an agent's wiring with no weights and no network.
    """

    @property
    def name(self) -> str:
        """The model's name."""
        return "test"

    async def request(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse:
        """Call every function tool once, then answer (structured output gets placeholder values)."""
        last = messages[-1] if messages else None
        called = isinstance(last, ModelRequest) and any(isinstance(p, ToolReturnPart) for p in last.parts)
        if params.function_tools and not called:
            response = ModelResponse(
                [
                    ToolCallPart(t.name, _placeholder(t.parameters_json_schema), new_tool_call_id())
                    for t in params.function_tools
                ]
            )
        elif params.output_tools and not params.allow_text_output:
            tool = params.output_tools[0]
            response = ModelResponse([ToolCallPart(tool.name, _placeholder(tool.parameters_json_schema), "call_out")])
        else:
            prompts = [
                p.content
                for m in messages
                if isinstance(m, ModelRequest)
                for p in m.parts
                if isinstance(p, UserPromptPart)
            ]
            returns = [
                p.content_text()
                for m in messages
                if isinstance(m, ModelRequest)
                for p in m.parts
                if isinstance(p, ToolReturnPart)
            ]
            text = f"echo: {prompts[-1] if prompts else ''}"
            if returns:
                text += " | tools: " + json.dumps(returns)
            response = text_response(text)
        return _with_usage(response, messages, "test")


def _placeholder(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> Any:
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return _placeholder(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _placeholder(schema[key][0], defs)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):  # a union of types (`["string", "null"]`): the first one
        kind = kind[0] if kind else "object"
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        return {name: _placeholder(sub, defs) for name, sub in props.items()}
    if kind == "array":  # as few items as allowed, each a placeholder of the item schema
        items = schema.get("items")
        count = schema.get("minItems", 0)
        return [_placeholder(items, defs) if isinstance(items, dict) else "a" for _ in range(count)]
    if kind == "string":
        return "a" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = low + 1 if "exclusiveMinimum" in schema else low
        return int(value) if kind == "integer" else float(value)
    return {"boolean": False, "null": None}.get(kind, "a") if isinstance(kind, str) else "a"
