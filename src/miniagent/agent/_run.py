"""The loop: model request -> tool calls -> results -> model request, until a final answer or a limit."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import anyio

from .._utils import Clock
from ..context import RunContext
from ..errors import (
    ModelRetry,
    RunError,
    RunTimeout,
    ToolRetriesExceeded,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
    UserError,
)
from ..events import (
    AgentEvent,
    ModelRequestStarted,
    ModelResponseReceived,
    RetryScheduled,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    TextDelta,
    ThinkingDelta,
    ToolCallArgsDelta,
    ToolCallFinished,
    ToolCallStarted,
    UsageUpdated,
)
from ..messages import (
    ModelMessage,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    Prompt,
    RetryPromptPart,
    SystemPromptPart,
    ToolCallPart,
    ToolReturnPart,
    prompt_part,
)
from ..models import (
    Model,
    ModelRequestParameters,
    ModelSettings,
    ResponseAssembler,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
)
from ..models._prices import price_response
from ..tools import Tool
from ..usage import Usage, UsageLimits
from ._output import OutputSchema
from ._result import RunResult

if TYPE_CHECKING:
    from pydantic import ValidationError

    from . import Agent
    from ._persist import RunRecorder

DepsT = TypeVar("DepsT")
OutputT = TypeVar("OutputT")

RetryCause = Literal["tool-args", "tool-retry", "output", "unknown-tool"]

EventSink = Callable[[AgentEvent], Awaitable[None]]
"""Receives each event of a run, in order."""


class _Final(Generic[OutputT]):
    __slots__ = ("output",)

    def __init__(self, output: OutputT) -> None:
        self.output = output


def _format_validation_error(exc: ValidationError) -> str:
    """The errors of a pydantic validation as lines a model can act on."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err["loc"]) or "(arguments)"
        lines.append(f"- {loc}: {err['msg']}")
    return "Validation failed:\n" + "\n".join(lines)


class AgentRun(Generic[DepsT, OutputT]):
    """One execution of an agent: the state of the loop. Created by `Agent.run*`; not for direct use."""

    def __init__(
        self,
        agent: Agent[DepsT, OutputT],
        *,
        model: Model,
        deps: DepsT,
        message_history: list[ModelMessage] | None,
        usage_limits: UsageLimits,
        usage: Usage,
        model_settings: ModelSettings | None,
        sink: EventSink | None,
        stream: bool,
        timeout_s: float | None,
        clock: Clock,
        recorder: RunRecorder | None = None,
    ) -> None:
        self.agent = agent
        self.model = model
        self.deps = deps
        self.run_id = uuid.uuid4().hex
        self.messages: list[ModelMessage] = list(message_history) if message_history else []
        self.new_message_index = len(self.messages)
        self.limits = usage_limits
        self.usage = usage
        self.model_settings = model_settings
        self.sink = sink
        self.stream = stream and model.supports_streaming
        self.timeout_s = timeout_s
        self.clock = clock
        self.recorder = recorder
        self.step = 0
        self.output_schema: OutputSchema[OutputT] = agent._output_schema()
        self.tools: dict[str, Tool[DepsT]] = agent._tools
        self.params: ModelRequestParameters = agent._request_params()
        self._tool_retries: dict[str, int] = {}
        self._output_retries = 0

    async def _emit(self, event: AgentEvent) -> None:
        if self.sink is not None:
            await self.sink(event)

    def _first_request(self, prompt: Prompt | None) -> ModelRequest | None:
        parts: list[ModelRequestPart] = []
        has_system = any(
            isinstance(p, SystemPromptPart) for m in self.messages if isinstance(m, ModelRequest) for p in m.parts
        )
        instructions = self.agent.instructions
        if instructions and not has_system:
            parts.append(SystemPromptPart(instructions))
        if prompt is not None:
            try:
                parts.append(prompt_part(prompt))
            except TypeError as exc:
                raise UserError(f"Invalid prompt: {exc}. Pass a string or a list of strings and images.") from exc
        return ModelRequest(parts) if parts else None

    async def run(self, prompt: Prompt | None) -> RunResult[OutputT]:
        """Execute the loop to its end and return the result; every exit emits exactly one terminal event."""
        first = self._first_request(prompt)
        if first is not None:
            self.messages.append(first)
        if not self.messages or not isinstance(self.messages[-1], ModelRequest):
            raise UnexpectedModelBehavior(
                "A run needs a prompt or a message history that ends with a request; pass `prompt`.",
            )
        text = prompt if isinstance(prompt, str) or prompt is None else prompt_part(prompt).content
        await self._emit(RunStarted(self.run_id, self.agent.name, text))
        started = self.clock.now()
        try:
            if self.recorder is not None:  # the user's message is committed before the model sees it
                await self.recorder.start(self)
            with self.clock.deadline_scope(self.timeout_s) as scope:
                output = await self._loop()
            if scope.cancelled_caught:
                raise RunTimeout(
                    f"The run did not finish within its timeout of {self.timeout_s} s (step {self.step}); "
                    "raise `timeout` or `usage_limits`, or check for a slow model or tool."
                )
        except (anyio.get_cancelled_exc_class(), KeyboardInterrupt):
            with anyio.CancelScope(shield=True):
                await self._emit(RunCancelled(self.run_id, self._usage_snapshot()))
                if self.recorder is not None:
                    await self.recorder.finish(self, "cancelled")
            raise
        except Exception as exc:
            if isinstance(exc, RunError):  # a run error carries the run's state, so nothing is lost
                exc.messages = self.messages
                exc.usage = self.usage
            await self._emit(RunFailed(self.run_id, type(exc).__name__, str(exc), self._usage_snapshot()))
            if self.recorder is not None:
                await self.recorder.finish(self, "failed", f"{type(exc).__name__}: {exc}")
            raise
        await self._emit(RunFinished(self.run_id, output, self._usage_snapshot(), self.clock.now() - started))
        if self.recorder is not None:
            await self.recorder.finish(self, "succeeded")
        return RunResult(
            output,
            run_id=self.run_id,
            messages=self.messages,
            new_message_index=self.new_message_index,
            usage=self.usage,
            model_name=self.model.name,
        )

    def _usage_snapshot(self) -> Usage:
        snapshot = Usage()
        snapshot.incr(self.usage)
        return snapshot

    async def _loop(self) -> OutputT:
        while True:
            self.limits.check_before_request(self.usage)
            self.step += 1
            await self._emit(ModelRequestStarted(self.run_id, self.step, self.model.name))
            response = await self._request()
            # The one place usage becomes cost, for streamed and whole responses alike (a cached lookup per model).
            cost = response.usage.cost_usd = price_response(response, self.model.name)
            self.usage.requests += 1
            self.usage.input_tokens += response.usage.input_tokens
            self.usage.output_tokens += response.usage.output_tokens
            self.usage.cache_read_tokens += response.usage.cache_read_tokens
            self.usage.reasoning_tokens += response.usage.reasoning_tokens
            self.usage.cost_usd = None if cost is None or self.usage.cost_usd is None else self.usage.cost_usd + cost
            self.messages.append(response)
            await self._emit(ModelResponseReceived(self.run_id, self.step, response))
            await self._emit(UsageUpdated(self.run_id, self._usage_snapshot()))
            self.limits.check_tokens(self.usage)
            outcome = await self._handle(response)
            if isinstance(outcome, _Final):
                return outcome.output
            self.messages.append(ModelRequest(outcome))
            if self.recorder is not None:  # the step (response + tool results) in one transaction
                await self.recorder.checkpoint(self)

    async def _request(self) -> ModelResponse:
        # With working memory, the model sees the history fitted to its token budget; `self.messages` stays whole.
        messages = self.messages if self.agent._working_memory is None else await self.agent._fit_history(self)
        if self.recorder is not None:  # the user's profile, as a system part after the agent's instructions
            messages = self.recorder.prepare(messages)
        if not self.stream:
            return await self.model.request(messages, self.model_settings, self.params)
        assembler = ResponseAssembler(self.model.name)
        chunks = self.model.request_stream(messages, self.model_settings, self.params)
        try:
            async for chunk in chunks:
                assembler.add(chunk)
                if isinstance(chunk, TextChunk):
                    if chunk.delta:
                        await self._emit(TextDelta(self.run_id, self.step, chunk.delta))
                elif isinstance(chunk, ThinkingChunk):
                    if chunk.delta:  # a chunk may carry only a signature piece
                        await self._emit(ThinkingDelta(self.run_id, self.step, chunk.delta))
                elif isinstance(chunk, ToolCallChunk) and chunk.args_delta:
                    name = assembler.tool_name(chunk.index)
                    await self._emit(ToolCallArgsDelta(self.run_id, self.step, chunk.index, name, chunk.args_delta))
        finally:
            # Close the provider's stream now (not at garbage collection), so a cancelled run stops generating.
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        return assembler.response()

    async def _handle(self, response: ModelResponse) -> _Final[OutputT] | list[ModelRequestPart]:
        from pydantic import ValidationError

        calls = response.tool_calls
        schema = self.output_schema
        if schema.tool is not None:
            output_call = next((c for c in calls if c.tool_name == schema.tool.name), None)
            if output_call is not None:
                return await self._handle_output_call(output_call, calls)
        if calls:
            return await self._run_tools(calls)
        if not response.parts or (not response.text.strip() and schema.text):
            return [await self._output_retry("The response was empty; answer the user.", None)]
        if schema.text:
            return _Final(schema.validate_text(response.text))
        try:
            return _Final(schema.validate_text(response.text))
        except (ValidationError, ValueError):
            return [
                await self._output_retry(
                    f"Plain text is not accepted: call the {schema.tool.name if schema.tool else 'output'!r} tool "
                    "with the final answer.",
                    None,
                )
            ]

    async def _handle_output_call(
        self, output_call: ToolCallPart, calls: list[ToolCallPart]
    ) -> _Final[OutputT] | list[ModelRequestPart]:
        from pydantic import ValidationError

        others = [c for c in calls if c is not output_call]
        try:
            output = self.output_schema.validate_tool_args(output_call.args)
        except (ValidationError, ValueError) as exc:
            detail = _format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
            retry = await self._output_retry(detail, output_call)
            # The other calls of this response still run: the model asked for them and every call needs an answer.
            return [retry, *(await self._run_tools(others))] if others else [retry]
        # Every call gets an answer, so the history stays valid for providers that require one per call
        # (a conversation can continue after a structured answer).
        closing: list[ModelRequestPart] = [
            ToolReturnPart(output_call.tool_name, "Final result processed.", output_call.tool_call_id)
        ]
        closing += [
            ToolReturnPart(c.tool_name, "Not executed: the final result was already given.", c.tool_call_id)
            for c in others
        ]
        self.messages.append(ModelRequest(closing))
        return _Final(output)

    async def _output_retry(self, message: str, call: ToolCallPart | None) -> RetryPromptPart:
        self._output_retries += 1
        allowed = self.agent.output_retries
        if self._output_retries > allowed:
            raise UnexpectedModelBehavior(
                f"The model's final answer failed validation {self._output_retries} times (allowed retries: "
                f"{allowed}). Last error: {message} Raise `output_retries`, simplify `output_type`, or use a "
                "stronger model."
            )
        await self._emit(RetryScheduled(self.run_id, self.step, "output", self._output_retries, 0.0, message))
        return RetryPromptPart(
            message,
            tool_name=call.tool_name if call else None,
            tool_call_id=call.tool_call_id if call else None,
        )

    async def _tool_retry(self, call: ToolCallPart, message: str, cause: RetryCause, limit: int) -> RetryPromptPart:
        count = self._tool_retries.get(call.tool_name, 0) + 1
        self._tool_retries[call.tool_name] = count
        if count > limit:
            raise ToolRetriesExceeded(
                f"Tool {call.tool_name!r} was called with invalid arguments {count} times (allowed retries: {limit}). "
                f"Last error: {message} Raise the tool's `retries`, simplify its parameters, or use a stronger model."
            )
        await self._emit(
            RetryScheduled(
                self.run_id,
                self.step,
                cause,
                count,
                0.0,
                message,
                tool_name=call.tool_name,
            )
        )
        return RetryPromptPart(message, tool_name=call.tool_name, tool_call_id=call.tool_call_id)

    async def _run_tools(self, calls: list[ToolCallPart]) -> list[ModelRequestPart]:
        from pydantic import ValidationError

        results: list[ModelRequestPart | None] = [None] * len(calls)
        runnable: list[tuple[int, Tool[DepsT], ToolCallPart, dict[str, Any]]] = []
        for i, call in enumerate(calls):
            tool = self.tools.get(call.tool_name)
            if tool is None:
                known = ", ".join(sorted(self.tools)) or "none"
                results[i] = await self._tool_retry(
                    call,
                    f"Unknown tool {call.tool_name!r}. Available tools: {known}.",
                    "unknown-tool",
                    self.agent.retries,
                )
                continue
            try:
                kwargs = tool.validate_args(call.args)
            except ValidationError as exc:
                limit = tool.retries if tool.retries is not None else self.agent.retries
                results[i] = await self._tool_retry(call, _format_validation_error(exc), "tool-args", limit)
                continue
            runnable.append((i, tool, call, kwargs))
        if runnable:
            self.limits.check_tool_calls(self.usage, len(runnable))
            if len(runnable) == 1:
                i, tool, call, kwargs = runnable[0]
                results[i] = await self._call_tool(tool, call, kwargs)
            else:

                async def run_one(i: int, tool: Tool[DepsT], call: ToolCallPart, kwargs: dict[str, Any]) -> None:
                    results[i] = await self._call_tool(tool, call, kwargs)

                async with anyio.create_task_group() as tg:
                    for i, tool, call, kwargs in runnable:
                        tg.start_soon(run_one, i, tool, call, kwargs)
            await self._emit(UsageUpdated(self.run_id, self._usage_snapshot()))
        parts: list[ModelRequestPart] = []
        for result in results:
            assert result is not None
            parts.append(result)
        return parts

    async def _call_tool(self, tool: Tool[DepsT], call: ToolCallPart, kwargs: dict[str, Any]) -> ModelRequestPart:
        self.usage.tool_calls += 1
        await self._emit(ToolCallStarted(self.run_id, self.step, tool.name, call.tool_call_id, kwargs))
        ctx = RunContext(
            self.deps,
            run_id=self.run_id,
            model=self.model,
            usage=self.usage,
            messages=self.messages,
            step=self.step,
            tool_name=tool.name,
            tool_call_id=call.tool_call_id,
            retry=self._tool_retries.get(tool.name, 0),
        )
        timeout = tool.timeout_s if tool.timeout_s is not None else self.agent.tool_timeout_s
        started = self.clock.now()
        part: ModelRequestPart
        with self.clock.deadline_scope(timeout) as scope:
            try:
                value = Tool.serialize_result(await tool.call(ctx, kwargs))
                part = ToolReturnPart(tool.name, value, call.tool_call_id)
            except ModelRetry as exc:
                limit = tool.retries if tool.retries is not None else self.agent.retries
                part = await self._tool_retry(call, exc.message, "tool-retry", limit)
            except (UsageLimitExceeded, RunError):
                raise
            except Exception as exc:
                part = ToolReturnPart(
                    tool.name,
                    f"Error: the tool raised {type(exc).__name__}: {exc}",
                    call.tool_call_id,
                    outcome="error",
                )
        if scope.cancelled_caught:
            part = ToolReturnPart(
                tool.name,
                f"Error: the tool did not finish within its timeout of {timeout} s.",
                call.tool_call_id,
                outcome="timeout",
            )
        if isinstance(part, ToolReturnPart):
            await self._emit(
                ToolCallFinished(
                    self.run_id,
                    self.step,
                    tool.name,
                    call.tool_call_id,
                    part.outcome,
                    self.clock.now() - started,
                    part.content,
                )
            )
        else:
            await self._emit(
                ToolCallFinished(
                    self.run_id,
                    self.step,
                    tool.name,
                    call.tool_call_id,
                    "error",
                    self.clock.now() - started,
                    part.content,
                )
            )
        return part
