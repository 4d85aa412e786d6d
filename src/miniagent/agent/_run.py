"""The loop: model request -> tool calls -> results -> model request, until a final answer or a limit."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

import anyio
import anyio.lowlevel

from .. import events as _events
from .._utils import Clock
from ..context import RunContext, RunScope, correlation_id, handback_requested, run_scope
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
    StreamReset,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
)
from ..models._prices import price_response
from ..resilience import BreakerRegistry, LastGoodCache, args_key, default_breakers, describe_age
from ..resilience._resilient import one_line
from ..resilience._retry import Attempts
from ..tools import Tool
from ..usage import Usage, UsageLimits
from ._output import OutputSchema
from ._result import ExternalToolCalls, RunResult

if TYPE_CHECKING:
    from pydantic import ValidationError

    from . import Agent
    from ._persist import RunRecorder

DepsT = TypeVar("DepsT")
OutputT = TypeVar("OutputT")

RetryCause = Literal["tool-args", "tool-retry", "output", "unknown-tool"]

_log = logging.getLogger("miniagent.resilience")

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
        run_id: str | None = None,
    ) -> None:
        self.agent = agent
        self.model = model
        self.deps = deps
        self.run_id = run_id or uuid.uuid4().hex
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
        self.external_tools = frozenset(t.name for t in self.params.function_tools if t.kind == "external")
        self._tool_retries: dict[str, int] = {}
        self._output_retries = 0
        self.scope: RunScope
        self._step_model: str | None = None
        self.step_timeout_s: float | None = agent.step_timeout_s

    async def _emit(self, event: AgentEvent) -> None:
        if isinstance(event, FallbackUsed):
            self._step_model = event.to_model
        elif isinstance(event, ModelRequestStarted):
            self._step_model = None
        if _events.event_handlers():  # process-wide observers (logs, traces, metrics), in the emitting task
            _events.dispatch(event)
        if self.sink is not None:
            await self.sink(event)

    def _scope(self) -> RunScope:
        recorder = self.recorder
        return RunScope(
            self.run_id,
            self.agent.name,
            correlation_id(),
            self._emit,
            thread_id=recorder.thread_id if recorder is not None else None,
            user_id=recorder.user_id if recorder is not None else None,
            tenant_id=recorder.store.tenant_id if recorder is not None else None,
        )

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
        with run_scope(self._scope()) as self.scope:
            return await self._run(text)

    async def _run(self, text: str | None) -> RunResult[OutputT]:
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
                    "raise `timeout` or `usage_limits`, or check for a slow model or tool.",
                    stage="run",
                    timeout_s=self.timeout_s,
                )
        except (anyio.get_cancelled_exc_class(), KeyboardInterrupt):
            if not handback_requested():  # a hand-back to the job queue records nothing: another worker goes on
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
                await self.recorder.finish(self, "failed", f"{type(exc).__name__}: {exc}", exc=exc)
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
            model_name=self._answering_model(),
        )

    def _answering_model(self) -> str:
        """The configured name of the model that produced the final answer (a fallback chain's member).

        The last `FallbackUsed` of the final step names it; without one, the run's own model answered. (A response's
        `model_name` is what the provider reported, e.g. a dated snapshot, so it is not used here.)
        """
        return self._step_model or self.model.name

    def _usage_snapshot(self) -> Usage:
        snapshot = Usage()
        snapshot.incr(self.usage)
        return snapshot

    async def _loop(self) -> OutputT:
        while True:
            # Store writes are shielded from cancellation: a run whose model and tools never yield still stops here.
            await anyio.lowlevel.checkpoint_if_cancelled()
            self.limits.check_before_request(self.usage)
            self.step += 1
            self.scope.step = self.step
            with self.clock.deadline_scope(self.step_timeout_s) as step_scope:
                outcome = await self._step()
            if step_scope.cancelled_caught:
                raise RunTimeout(
                    f"Step {self.step} (a model request and its tool calls) did not finish within the step timeout of "
                    f"{self.step_timeout_s} s; raise `step_timeout`, or check for a slow model or tool.",
                    stage="step",
                    timeout_s=self.step_timeout_s,
                )
            if isinstance(outcome, _Final):
                return outcome.output
            self.messages.append(ModelRequest(outcome))
            if self.recorder is not None:  # the step (response + tool results) in one transaction
                await self.recorder.checkpoint(self)

    async def _step(self) -> _Final[OutputT] | list[ModelRequestPart]:
        """One model request and the tool calls it asks for."""
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
        return await self._handle(response)

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
                if isinstance(chunk, StreamReset):  # a resilience wrapper restarts the stream: void this step so far
                    discarded = assembler.streamed_chars()
                    assembler.add(chunk)
                    await self._emit(
                        StreamRestarted(
                            self.run_id,
                            self.step,
                            chunk.model_name or self.model.name,
                            chunk.reason,
                            discarded_chars=discarded,
                        )
                    )
                    continue
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
            external = [c for c in calls if c.tool_name in self.external_tools]
            if external:  # the caller runs these: the run ends here and hands them over, executing nothing
                return _Final(cast(OutputT, ExternalToolCalls(external)))
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
        if not tool.idempotent and self.recorder is not None:  # committed before it runs: a takeover will know
            await self.recorder.tool_intent(self, tool.name, call.tool_call_id)
        await self._emit(ToolCallStarted(self.run_id, self.step, tool.name, call.tool_call_id, kwargs))
        started = self.clock.now()
        part = await self._tool_attempts(tool, call, kwargs)
        if isinstance(part, ToolReturnPart):
            if part.outcome != "success" and tool.fallback is not None:
                part = await self._tool_fallback(tool, call, kwargs, part)
            elif part.outcome == "success" and tool.fallback == "last-good":
                await self._remember(tool, kwargs, part.content)
        await self._emit(
            ToolCallFinished(
                self.run_id,
                self.step,
                tool.name,
                call.tool_call_id,
                part.outcome if isinstance(part, ToolReturnPart) else "error",
                self.clock.now() - started,
                part.content,
            )
        )
        return part

    async def _tool_attempts(self, tool: Tool[DepsT], call: ToolCallPart, kwargs: dict[str, Any]) -> ModelRequestPart:
        """Call `tool` under its breaker, retrying per its policy (idempotent tools only); never raises its error."""
        policy = tool.retry if tool.idempotent else None
        attempts = Attempts(policy, self.clock.now()) if policy is not None else None
        breaker = self._breaker_registry().get(f"tool:{tool.name}") if tool.breaker else None
        while True:
            if attempts is not None:
                attempts.begin()
            if breaker is not None and not await breaker.allow():
                wait = breaker.retry_in_s()
                when = f"it may work again in about {wait:.0f} s" if wait > 0 else "it is being tested again now"
                return ToolReturnPart(
                    tool.name,
                    f"Error: the tool {tool.name!r} is unavailable: it failed too often recently, so it was not "
                    f"called (circuit breaker open); {when}. Do without it or try another way.",
                    call.tool_call_id,
                    outcome="error",
                )
            part, error = await self._tool_once(tool, call, kwargs)
            if breaker is not None:
                await (breaker.record_success() if error is None else breaker.record_failure())
            if error is None or attempts is None or policy is None:
                return part
            retry_on = policy.retry_on
            delay = attempts.retry_delay(
                error, self.clock.now(), retryable=retry_on(error) if retry_on is not None else True
            )
            if delay is None:
                return part
            await self._emit(
                RetryScheduled(
                    self.run_id,
                    self.step,
                    "tool-error",
                    attempts.attempt,
                    delay,
                    one_line(str(part.content)),
                    tool_name=tool.name,
                    error_type=type(error).__name__,
                    upstream=f"tool:{tool.name}",
                )
            )
            await self.clock.sleep(delay)

    def _breaker_registry(self) -> BreakerRegistry:
        breakers = self.agent.breakers
        return breakers if isinstance(breakers, BreakerRegistry) else default_breakers()

    async def _tool_once(
        self, tool: Tool[DepsT], call: ToolCallPart, kwargs: dict[str, Any]
    ) -> tuple[ModelRequestPart, Exception | None]:
        """One call of `tool`, with its timeout: the part for the model, and the error if it failed."""
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
        part: ModelRequestPart
        error: Exception | None = None
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
                error = exc
                part = ToolReturnPart(
                    tool.name,
                    f"Error: the tool raised {type(exc).__name__}: {exc}",
                    call.tool_call_id,
                    outcome="error",
                )
        if scope.cancelled_caught:
            error = TimeoutError(f"the tool {tool.name!r} did not finish within its timeout of {timeout} s")
            part = ToolReturnPart(
                tool.name,
                f"Error: the tool did not finish within its timeout of {timeout} s.",
                call.tool_call_id,
                outcome="timeout",
            )
        return part, error

    # ---- graceful degradation of tools -------------------------------------------------------------------

    def _last_good(self) -> LastGoodCache:
        """The store's cache of last good tool results for a stored run, else the agent's in-process one."""
        if self.recorder is not None:
            results = getattr(self.recorder.store, "tool_results", None)
            if results is not None:
                cache: LastGoodCache = results()
                return cache
        return self.agent._last_good_cache()

    async def _remember(self, tool: Tool[DepsT], kwargs: dict[str, Any], value: Any) -> None:
        try:
            await self._last_good().put(
                tool.name,
                args_key(kwargs),
                value,
                tenant_id=self.scope.tenant_id,
                user_id=self.scope.user_id,
                stored_at=time.time(),
            )
        except Exception:  # losing a fallback value must not fail the call that produced it
            _log.exception("could not keep the last good result of tool %r", tool.name)

    async def _tool_fallback(
        self, tool: Tool[DepsT], call: ToolCallPart, kwargs: dict[str, Any], failed: ToolReturnPart
    ) -> ToolReturnPart:
        """What answers for a tool that failed for good: its last good result, or its fallback tool."""
        from pydantic import ValidationError

        reason = str(failed.content).removeprefix("Error: ").rstrip(".")
        if tool.fallback == "last-good":
            found = await self._last_good().get(
                tool.name, args_key(kwargs), tenant_id=self.scope.tenant_id, user_id=self.scope.user_id
            )
            if found is None:
                return failed
            value, stored_at = found
            return ToolReturnPart(
                tool.name,
                f"The tool {tool.name!r} failed just now ({reason}). This is its last good result for the same "
                f"arguments, from {describe_age(time.time() - stored_at)} ago (it may be out of date): "
                f"{_as_text(value)}",
                call.tool_call_id,
                outcome="fallback",
            )
        other = self.tools.get(tool.fallback or "")
        if other is None:  # the agent checks fallbacks before a run; a tool removed since is reported, not raised
            return failed
        try:
            other_kwargs = other.validate_args(call.args)
        except ValidationError:
            return ToolReturnPart(
                tool.name,
                f"{failed.content} Its fallback tool {other.name!r} does not accept the same arguments, so it was "
                "not called.",
                call.tool_call_id,
                outcome=failed.outcome,
            )
        part = await self._tool_attempts(other, call, other_kwargs)
        if isinstance(part, ToolReturnPart) and part.outcome == "success":
            return ToolReturnPart(
                tool.name,
                f"The tool {tool.name!r} failed ({reason}); its fallback tool {other.name!r} answered: "
                f"{_as_text(part.content)}",
                call.tool_call_id,
                outcome="fallback",
            )
        return ToolReturnPart(
            tool.name,
            f"{failed.content} Its fallback tool {other.name!r} failed too: {part.content}",
            call.tool_call_id,
            outcome=failed.outcome,
        )


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
