"""[`Agent`][miniagent.agent.Agent]: instructions, tools, a model and an output type, run as a loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast, overload

from .._utils import SYSTEM_CLOCK, Clock, run_until_complete
from ..errors import UserError
from ..events import AgentEvent, HistoryFitted
from ..messages import ModelMessage, Prompt
from ..models import Model, ModelRequestParameters, ModelSettings, ToolDefinition, infer_model
from ..resilience import (
    DEFAULT_RETRY,
    BreakerRegistry,
    FallbackModel,
    InMemoryLastGoodCache,
    LastGoodCache,
    ResilientModel,
    RetryPolicy,
)
from ..tools import Tool, ToolFunc
from ..usage import Usage, UsageLimits
from ._output import OutputSchema, check_output_type
from ._result import ExternalToolCalls, RunResult
from ._run import AgentRun, EventSink
from ._stream import StreamedRun

if TYPE_CHECKING:
    from ..memory import LongTermMemory, WorkingMemory
    from ..store import SQLStore
    from ._persist import RunRecorder

__all__ = ["Agent", "ExternalToolCalls", "RunResult", "StreamedRun"]

DepsT = TypeVar("DepsT")
OutputT = TypeVar("OutputT")
F = TypeVar("F", bound=ToolFunc)

_DEFAULT_LIMITS = UsageLimits()


class Agent(Generic[DepsT, OutputT]):
    """An LLM agent: instructions, typed tools, a model and an output type.

    Construction is cheap (nothing is resolved or loaded until the first run), so agents can be made per request.

    Example:
        ```python
        from miniagent import Agent
        from miniagent.testing import ScriptedModel, tool_call_response

        agent = Agent(
            model=ScriptedModel([tool_call_response(("get_weather", {"city": "Paris"})), "Sunny in Paris."]),
            instructions="You are a helpful assistant.",
        )

        @agent.tool
        def get_weather(city: str) -> str:
            '''Current weather for a city.'''
            return f"Sunny in {city}"

        result = agent.run_sync("What's the weather in Paris?")
        assert result.output == "Sunny in Paris."
        ```

    Args:
        model: A [`Model`][miniagent.models.Model], a string such as `'openai:gpt-4o-mini'`, or `None` for the
            configured default (the bundled local model unless `MINIAGENT_DEFAULT_MODEL` says otherwise).
        instructions: The system prompt.
        name: A name for events and logs.
        tools: Functions or [`Tool`][miniagent.tools.Tool]s the model may call.
        output_type: `str` for text, or a type (pydantic model, dataclass, `list[int]`...) for validated output.
        deps_type: The type of `deps` passed to runs, for type checkers only.
        retries: How often a tool's invalid arguments are sent back to the model before the run fails.
        output_retries: How often an invalid final answer is sent back; defaults to `retries`.
        max_steps: Most model requests per run (a shortcut for `UsageLimits(request_limit=...)`).
        usage_limits: Limits on requests, tokens and tool calls per run.
        tool_timeout: Default timeout of a tool call in seconds; a hung tool never hangs a run.
        model_settings: Sampling settings for every request.
        clock: The clock for timeouts and durations (tests inject `ManualClock`).
        working_memory: Fits the history to a token budget before each model request, summarizing older
            messages (see [`WorkingMemory`][miniagent.memory.WorkingMemory]); `None` sends the whole history.
        store: Where runs with a `thread_id` or `user_id` are saved (default: the configured store,
            [`open_store()`][miniagent.store.open_store]).
        long_term_memory: Recalls the user's relevant memories before each stored run (one with a `user_id` or
            `thread_id`) and extracts new facts after it (see [`LongTermMemory`][miniagent.memory.LongTermMemory]).
        retry: How failed model requests are retried (default: 4 attempts with jittered backoff, honouring
            `Retry-After`; `None` never retries). The model is wrapped in a
            [`ResilientModel`][miniagent.resilience.ResilientModel] with it, unless it already is one or a
            [`FallbackModel`][miniagent.resilience.FallbackModel] (one retry layer, attempts counted once).
        step_timeout: Deadline of each step (a model request with its retries, and its tool calls) in seconds;
            exceeding it raises `RunTimeout` with `stage="step"`. `None`: no step deadline.
        breakers: Where the circuit breakers of the model and of tools with `breaker=True` come from (default: the
            process-wide [`default_breakers()`][miniagent.resilience.default_breakers]); `False` puts no breaker on
            the model.
        last_good_cache: Where tools with `fallback="last-good"` keep their last good results for runs that are not
            stored (default: in this process); stored runs use the store's.

    Raises:
        UserError: an invalid option, or options that contradict each other (a request timeout in `model_settings`
            longer than `step_timeout` or than the retry policy's deadline).
    """

    __slots__ = (
        "_model_spec",
        "_model",
        "_override_model",
        "instructions",
        "name",
        "output_type",
        "retries",
        "output_retries",
        "usage_limits",
        "tool_timeout_s",
        "model_settings",
        "clock",
        "_tools",
        "_schema",
        "_params",
        "_working_memory",
        "store",
        "long_term_memory",
        "retry",
        "step_timeout_s",
        "breakers",
        "_last_good",
        "_protected",
        "_external_tools",
    )

    @overload
    def __init__(
        self: Agent[None, str],
        model: Model | str | None = None,
        *,
        instructions: str | None = None,
        name: str = "agent",
        tools: Sequence[ToolFunc | Tool[Any]] = (),
        output_type: type[str] = str,
        deps_type: None = None,
        retries: int = 1,
        output_retries: int | None = None,
        max_steps: int | None = None,
        usage_limits: UsageLimits | None = None,
        tool_timeout: float = 60.0,
        model_settings: ModelSettings | None = None,
        clock: Clock | None = None,
        working_memory: WorkingMemory | None = None,
        store: SQLStore | None = None,
        long_term_memory: LongTermMemory | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        step_timeout: float | None = None,
        breakers: BreakerRegistry | Literal[False] | None = None,
        last_good_cache: LastGoodCache | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: Agent[None, OutputT],
        model: Model | str | None = None,
        *,
        instructions: str | None = None,
        name: str = "agent",
        tools: Sequence[ToolFunc | Tool[Any]] = (),
        output_type: type[OutputT],
        deps_type: None = None,
        retries: int = 1,
        output_retries: int | None = None,
        max_steps: int | None = None,
        usage_limits: UsageLimits | None = None,
        tool_timeout: float = 60.0,
        model_settings: ModelSettings | None = None,
        clock: Clock | None = None,
        working_memory: WorkingMemory | None = None,
        store: SQLStore | None = None,
        long_term_memory: LongTermMemory | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        step_timeout: float | None = None,
        breakers: BreakerRegistry | Literal[False] | None = None,
        last_good_cache: LastGoodCache | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: Agent[DepsT, str],
        model: Model | str | None = None,
        *,
        instructions: str | None = None,
        name: str = "agent",
        tools: Sequence[ToolFunc | Tool[Any]] = (),
        output_type: type[str] = str,
        deps_type: type[DepsT],
        retries: int = 1,
        output_retries: int | None = None,
        max_steps: int | None = None,
        usage_limits: UsageLimits | None = None,
        tool_timeout: float = 60.0,
        model_settings: ModelSettings | None = None,
        clock: Clock | None = None,
        working_memory: WorkingMemory | None = None,
        store: SQLStore | None = None,
        long_term_memory: LongTermMemory | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        step_timeout: float | None = None,
        breakers: BreakerRegistry | Literal[False] | None = None,
        last_good_cache: LastGoodCache | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: Agent[DepsT, OutputT],
        model: Model | str | None = None,
        *,
        instructions: str | None = None,
        name: str = "agent",
        tools: Sequence[ToolFunc | Tool[Any]] = (),
        output_type: type[OutputT],
        deps_type: type[DepsT],
        retries: int = 1,
        output_retries: int | None = None,
        max_steps: int | None = None,
        usage_limits: UsageLimits | None = None,
        tool_timeout: float = 60.0,
        model_settings: ModelSettings | None = None,
        clock: Clock | None = None,
        working_memory: WorkingMemory | None = None,
        store: SQLStore | None = None,
        long_term_memory: LongTermMemory | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        step_timeout: float | None = None,
        breakers: BreakerRegistry | Literal[False] | None = None,
        last_good_cache: LastGoodCache | None = None,
    ) -> None: ...

    def __init__(
        self,
        model: Model | str | None = None,
        *,
        instructions: str | None = None,
        name: str = "agent",
        tools: Sequence[ToolFunc | Tool[Any]] = (),
        output_type: Any = str,
        deps_type: Any = None,
        retries: int = 1,
        output_retries: int | None = None,
        max_steps: int | None = None,
        usage_limits: UsageLimits | None = None,
        tool_timeout: float = 60.0,
        model_settings: ModelSettings | None = None,
        clock: Clock | None = None,
        working_memory: WorkingMemory | None = None,
        store: SQLStore | None = None,
        long_term_memory: LongTermMemory | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        step_timeout: float | None = None,
        breakers: BreakerRegistry | Literal[False] | None = None,
        last_good_cache: LastGoodCache | None = None,
    ) -> None:
        if model is not None and not isinstance(cast(object, model), (Model, str)):
            raise UserError(
                f"`model` must be a Model, a string like 'openai:gpt-4o-mini', or None; got {type(model).__name__}."
            )
        if output_type is not str:
            check_output_type(output_type)
        if retries < 0:
            raise UserError(f"`retries` must be >= 0, got {retries!r}.")
        if output_retries is not None and output_retries < 0:
            raise UserError(f"`output_retries` must be >= 0, got {output_retries!r}.")
        if not tool_timeout > 0:
            raise UserError(f"`tool_timeout` must be a positive number of seconds, got {tool_timeout!r}.")
        _check_resilience(retry, step_timeout, breakers, last_good_cache, model_settings)
        if max_steps is not None:
            if not isinstance(cast(object, max_steps), int) or max_steps < 1:
                raise UserError(f"`max_steps` must be a positive integer (model requests per run), got {max_steps!r}.")
            base = usage_limits or _DEFAULT_LIMITS
            usage_limits = UsageLimits(
                request_limit=max_steps,
                tool_calls_limit=base.tool_calls_limit,
                input_tokens_limit=base.input_tokens_limit,
                output_tokens_limit=base.output_tokens_limit,
                total_tokens_limit=base.total_tokens_limit,
            )
        self._model_spec = model
        self._model: Model | None = model if isinstance(model, Model) else None
        self._override_model: Model | None = None
        self.instructions = instructions
        self.name = name
        self.output_type = output_type
        self.retries = retries
        self.output_retries = retries if output_retries is None else output_retries
        self.usage_limits = usage_limits or _DEFAULT_LIMITS
        self.tool_timeout_s = tool_timeout
        self.model_settings = model_settings
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._tools: dict[str, Tool[DepsT]] = {}
        self._schema: OutputSchema[OutputT] | None = None
        self._params: ModelRequestParameters | None = None
        self._working_memory = working_memory
        self.store = store
        self.long_term_memory = long_term_memory
        self.retry = retry
        self.step_timeout_s = step_timeout
        self.breakers = breakers
        self._last_good = last_good_cache
        self._protected: tuple[Model, Model] | None = None
        self._external_tools: tuple[ToolDefinition, ...] = ()
        for tool in tools:
            self._add_tool(tool if isinstance(tool, Tool) else Tool(tool))

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, model={self._model_spec!r}, tools={list(self._tools)!r})"

    def _last_good_cache(self) -> LastGoodCache:
        """The in-process cache of last good tool results (made on first use)."""
        if self._last_good is None:
            self._last_good = InMemoryLastGoodCache()
        return self._last_good

    def _protect(self, model: Model) -> Model:
        """`model` with the agent's retry policy and breaker: the one retry layer (not added twice)."""
        if isinstance(model, ResilientModel | FallbackModel):
            return model
        cached = self._protected
        if cached is not None and cached[0] is model:
            return cached[1]
        breakers = self.breakers
        wrapped = ResilientModel(
            model,
            retry=self.retry,
            breaker=breakers is not False,
            breakers=breakers or None,
            clock=self.clock,
        )
        self._protected = (model, wrapped)
        return wrapped

    # ---- tools -------------------------------------------------------------------------------------------

    def _add_tool(self, tool: Tool[Any]) -> None:
        if tool.name in self._tools:
            raise UserError(f"Agent {self.name!r} already has a tool named {tool.name!r}; pass `name=` to rename one.")
        if tool.name == "final_result" and self.output_type is not str:
            raise UserError("The tool name 'final_result' is reserved for structured output; rename the tool.")
        self._tools[tool.name] = tool
        self._params = None

    @overload
    def tool(self, func: F, /) -> F: ...

    @overload
    def tool(
        self,
        /,
        *,
        name: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        breaker: bool = False,
        fallback: str | Literal["last-good"] | None = None,
        idempotent: bool = True,
    ) -> Callable[[F], F]: ...

    def tool(
        self,
        func: F | None = None,
        /,
        *,
        name: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        breaker: bool = False,
        fallback: str | Literal["last-good"] | None = None,
        idempotent: bool = True,
    ) -> F | Callable[[F], F]:
        """Register a function as a tool: `@agent.tool` or `@agent.tool(name=..., retries=..., timeout=...)`.

        The function may be sync (run in a worker thread) or async, and may take a
        [`RunContext`][miniagent.context.RunContext] first. `retry`, `breaker`, `fallback` and `idempotent` are
        the tool's resilience options (see [`Tool`][miniagent.tools.Tool]).
        """

        def register(f: F) -> F:
            self._add_tool(
                Tool(
                    f,
                    name=name,
                    retries=retries,
                    timeout=timeout,
                    retry=retry,
                    breaker=breaker,
                    fallback=fallback,
                    idempotent=idempotent,
                )
            )
            return f

        return register(func) if func is not None else register

    @property
    def tools(self) -> list[Tool[DepsT]]:
        """The agent's tools."""
        return list(self._tools.values())

    # ---- resolution (lazy) -------------------------------------------------------------------------------

    def _output_schema(self) -> OutputSchema[OutputT]:
        if self._schema is None:
            self._schema = OutputSchema(self.output_type)
        return self._schema

    def _request_params(self) -> ModelRequestParameters:
        if self._params is None:
            schema = self._output_schema()
            for tool in self._tools.values():
                if tool.fallback is not None and tool.fallback != "last-good" and tool.fallback not in self._tools:
                    raise UserError(
                        f"Tool {tool.name!r} falls back to {tool.fallback!r}, which agent {self.name!r} does not "
                        f"have; register that tool too, or change `fallback`. Tools: {', '.join(sorted(self._tools))}."
                    )
            self._params = ModelRequestParameters(
                function_tools=[*(t.definition for t in self._tools.values()), *self._external_tools],
                output_tools=[schema.tool] if schema.tool else [],
                allow_text_output=schema.text,
            )
        return self._params

    def _variant(self, *, output_type: Any = str, external_tools: Sequence[ToolDefinition] = ()) -> Agent[DepsT, Any]:
        """A copy of this agent for one request, with another `output_type` and tools its caller runs itself.

        A call to an external tool ends the run with [`ExternalToolCalls`][miniagent.agent.ExternalToolCalls] as
        its output. The copy shares the model (with its retry layer and breaker), the tools and the caches, so
        making one per request is cheap. The OpenAI-compatible server uses it for its clients' `tools` and
        `response_format`.

        Raises:
            UserError: an external tool is not an `external` definition, or its name is taken by one of the agent's
                tools or by the structured-output tool.
            OutputTypeError: `output_type` cannot be used as structured output.
        """
        import copy

        if output_type is not str:
            check_output_type(output_type)
        names: set[str] = set()
        for definition in external_tools:
            if definition.kind != "external":
                raise UserError(f"Tool {definition.name!r} must be a ToolDefinition with kind='external'.")
            if definition.name in self._tools or definition.name in names:
                raise UserError(
                    f"The external tool {definition.name!r} has the name of another tool of agent {self.name!r}; "
                    "rename it."
                )
            if definition.name == "final_result" and output_type is not str:
                raise UserError("The tool name 'final_result' is reserved for structured output; rename the tool.")
            names.add(definition.name)
        self._protect(self.resolve_model())  # resolved once here, so every copy shares the model and its breaker
        self._last_good_cache()
        variant: Agent[DepsT, Any] = copy.copy(self)
        variant._tools = dict(self._tools)
        variant.output_type = output_type
        variant._schema = None
        variant._params = None
        variant._external_tools = tuple(external_tools)
        return variant

    def resolve_model(self, model: Model | str | None = None) -> Model:
        """The model a run would use: `model` if given, else an override, else the agent's (resolved once)."""
        if model is not None:
            return infer_model(model)
        if self._override_model is not None:
            return self._override_model
        if self._model is None:
            self._model = infer_model(self._model_spec)
        return self._model

    @contextmanager
    def override(self, *, model: Model | str) -> Iterator[None]:
        """Use `model` instead of the agent's model inside the block (for tests)."""
        previous = self._override_model
        self._override_model = infer_model(model)
        try:
            yield
        finally:
            self._override_model = previous

    @property
    def working_memory(self) -> WorkingMemory | None:
        """The working memory that fits each request's history, if any; its `last_fit` shows what was sent."""
        return self._working_memory

    async def _fit_history(self, run: AgentRun[DepsT, OutputT]) -> list[ModelMessage]:
        """The run's history fitted by the working memory; summary requests count in the run's usage."""
        memory = self._working_memory
        assert memory is not None
        key = run.recorder.thread_id if run.recorder is not None else None  # a stored thread keys its summary
        kept_in = run.recorder.summaries if run.recorder is not None else None  # ... and keeps it in the database
        fit = await memory.fit(run.messages, model=run.model, key=key, fallback_store=kept_in)
        if fit.evicted:
            run.usage.incr(fit.summary_usage)
            await run._emit(
                HistoryFitted(
                    run.run_id,
                    run.step,
                    fit.kept,
                    fit.evicted,
                    fit.tokens_before,
                    fit.tokens_after,
                    fit.budget,
                    summary=fit.summary,
                    summary_requests=fit.summary_requests,
                )
            )
        return fit.messages

    # ---- running -----------------------------------------------------------------------------------------

    def _new_run(
        self,
        *,
        deps: Any,
        message_history: list[ModelMessage] | None,
        model: Model | str | None,
        usage_limits: UsageLimits | None,
        usage: Usage | None,
        model_settings: ModelSettings | None,
        timeout: float | None,
        sink: EventSink | None,
        stream: bool,
        recorder: RunRecorder | None = None,
        run_id: str | None = None,
    ) -> AgentRun[DepsT, OutputT]:
        if timeout is not None and not timeout > 0:
            raise UserError(f"`timeout` must be a positive number of seconds or None, got {timeout!r}.")
        if timeout is not None and self.step_timeout_s is not None and timeout < self.step_timeout_s:
            raise UserError(
                f"The run's `timeout` ({timeout} s) is shorter than the agent's `step_timeout` ({self.step_timeout_s} "
                "s), so the step deadline could never apply: raise `timeout` or lower `step_timeout`."
            )
        settings = self.model_settings.merged(model_settings) if self.model_settings else model_settings
        return AgentRun(
            self,
            model=self._protect(self.resolve_model(model)),
            deps=deps,
            message_history=message_history,
            usage_limits=usage_limits or self.usage_limits,
            usage=usage if usage is not None else Usage(),
            model_settings=settings,
            sink=sink,
            stream=stream,
            timeout_s=timeout,
            clock=self.clock,
            recorder=recorder,
            run_id=run_id,
        )

    async def _execute(
        self,
        prompt: Prompt | None,
        *,
        sink: EventSink | None,
        stream: bool,
        store: SQLStore | None,
        thread_id: str | None,
        user_id: str | None,
        message_history: list[ModelMessage] | None,
        **run_args: Any,
    ) -> RunResult[OutputT]:
        if run_args.get("run_id") is not None and thread_id is None:
            raise UserError("`run_id` continues a run recorded in the store: pass its `thread_id` (and `store`) too.")
        if thread_id is None and user_id is None and store is None:
            run = self._new_run(message_history=message_history, sink=sink, stream=stream, **run_args)
            return await run.run(prompt)
        if message_history is not None:
            raise UserError(
                "Pass either `message_history` or `thread_id`/`user_id`/`store` (the history then comes from the "
                "store), not both."
            )
        from ._persist import open_recorder

        async with open_recorder(store or self.store, thread_id=thread_id, user_id=user_id) as (recorder, history):
            recorder.adopt = run_args.get("run_id") is not None
            memory = self.long_term_memory
            if memory is not None and isinstance(prompt, str):
                recalled = await memory.recall(recorder.store, user_id=recorder.user_id, query=prompt)
                recorder.memory_note = memory.note(recalled) if recalled else None
            run = self._new_run(
                message_history=history, sink=recorder.sink(sink), stream=stream, recorder=recorder, **run_args
            )
            result = await run.run(prompt)
            result.thread_id = recorder.thread_id
            if memory is not None:  # after the turn is committed: its new facts about the user
                await memory.remember(
                    recorder.store,
                    user_id=recorder.user_id,
                    model=run.model,
                    messages=result.new_messages(),
                    usage=result.usage,
                )
            return result

    async def run(
        self,
        prompt: Prompt | None = None,
        *,
        deps: DepsT = None,  # type: ignore[assignment]  # None is the default only for agents without deps
        message_history: list[ModelMessage] | None = None,
        model: Model | str | None = None,
        usage_limits: UsageLimits | None = None,
        usage: Usage | None = None,
        model_settings: ModelSettings | None = None,
        timeout: float | None = None,
        event_sink: EventSink | None = None,
        stream: bool | None = None,
        thread_id: str | None = None,
        user_id: str | None = None,
        store: SQLStore | None = None,
        run_id: str | None = None,
    ) -> RunResult[OutputT]:
        """Run the agent on `prompt` until it produces its final output.

        Args:
            prompt: The user's message.
            deps: Dependencies handed to tools through `RunContext.deps`.
            message_history: Earlier messages to continue from (e.g. `previous.all_messages()`).
            model: A model for this run only.
            usage_limits: Limits for this run (default: the agent's).
            usage: A `Usage` to accumulate into, readable even if the run is cancelled.
            model_settings: Sampling settings for this run, over the agent's.
            timeout: Deadline of the whole run in seconds; exceeding it raises `RunTimeout`.
            event_sink: An async callable receiving every event, in order.
            stream: Whether to ask the model for a streamed response, so the sink receives text as it is produced
                (default: when `event_sink` is given). `False` with a sink still gives it every other event, and
                spares a provider's per-chunk parsing when nobody reads the deltas.
            thread_id: Continue this stored thread: its history is loaded from the store, and the user's message,
                each step and the events are saved as the run goes (`ThreadNotFound` if it is not this user's).
            user_id: The user the thread belongs to; with no `thread_id`, a new thread is started
                (`result.thread_id`).
            store: The store for this run (default: the agent's, else the configured one).
            run_id: Record the run under this id. A run the store already holds under it, claimed by this caller
                (a queued background run a worker executes, `SQLStore.claim_run`), is continued: its steps, usage
                and events go on from where they were committed. Needs `thread_id`.

        Raises:
            RunError: the run failed; the error carries its messages and usage.
            StoreError: the store failed (`ThreadNotFound`, `ThreadConflict` when another run moved the thread).
        """
        return await self._execute(
            prompt,
            sink=event_sink,
            stream=event_sink is not None if stream is None else stream,
            store=store,
            thread_id=thread_id,
            user_id=user_id,
            message_history=message_history,
            deps=deps,
            model=model,
            usage_limits=usage_limits,
            usage=usage,
            model_settings=model_settings,
            timeout=timeout,
            run_id=run_id,
        )

    def run_sync(
        self,
        prompt: Prompt | None = None,
        *,
        deps: DepsT = None,  # type: ignore[assignment]  # see `run`
        message_history: list[ModelMessage] | None = None,
        model: Model | str | None = None,
        usage_limits: UsageLimits | None = None,
        usage: Usage | None = None,
        model_settings: ModelSettings | None = None,
        timeout: float | None = None,
        thread_id: str | None = None,
        user_id: str | None = None,
        store: SQLStore | None = None,
    ) -> RunResult[OutputT]:
        """[`run`][miniagent.agent.Agent.run] from synchronous code (not inside an event loop)."""
        return run_until_complete(
            self.run(
                prompt,
                deps=deps,
                message_history=message_history,
                model=model,
                usage_limits=usage_limits,
                usage=usage,
                model_settings=model_settings,
                timeout=timeout,
                thread_id=thread_id,
                user_id=user_id,
                store=store,
            ),
            method="run",
        )

    def run_stream(
        self,
        prompt: Prompt | None = None,
        *,
        deps: DepsT = None,  # type: ignore[assignment]  # see `run`
        message_history: list[ModelMessage] | None = None,
        model: Model | str | None = None,
        usage_limits: UsageLimits | None = None,
        usage: Usage | None = None,
        model_settings: ModelSettings | None = None,
        timeout: float | None = None,
        thread_id: str | None = None,
        user_id: str | None = None,
        store: SQLStore | None = None,
    ) -> StreamedRun[OutputT]:
        """Run the agent and stream it: `async with agent.run_stream(prompt) as run:` then `run.stream_text()`,
        `run.stream_output()` or `run.events()`.
        """  # noqa: D205 (the summary needs both lines)
        run_usage = usage if usage is not None else Usage()
        agent_run_args: dict[str, Any] = {
            "deps": deps,
            "message_history": message_history,
            "model": model,
            "usage_limits": usage_limits,
            "usage": run_usage,
            "model_settings": model_settings,
            "timeout": timeout,
        }

        async def start(sink: EventSink) -> RunResult[OutputT]:
            return await self._execute(
                prompt, sink=sink, stream=True, store=store, thread_id=thread_id, user_id=user_id, **agent_run_args
            )

        return StreamedRun(start, self._output_schema(), run_usage)

    async def run_stream_events(
        self,
        prompt: Prompt | None = None,
        *,
        deps: DepsT = None,  # type: ignore[assignment]  # see `run`
        message_history: list[ModelMessage] | None = None,
        model: Model | str | None = None,
        usage_limits: UsageLimits | None = None,
        usage: Usage | None = None,
        model_settings: ModelSettings | None = None,
        timeout: float | None = None,
        thread_id: str | None = None,
        user_id: str | None = None,
        store: SQLStore | None = None,
    ) -> AsyncIterator[AgentEvent]:
        """Every typed event of a run, in order: `async for event in agent.run_stream_events(prompt): ...`.

        The last event is `RunFinished` (its `output` is the result), `RunFailed` or `RunCancelled`; a failed
        run's exception is raised after its `RunFailed` event. Breaking out of the loop cancels the run.
        """
        async with self.run_stream(
            prompt,
            deps=deps,
            message_history=message_history,
            model=model,
            usage_limits=usage_limits,
            usage=usage,
            model_settings=model_settings,
            timeout=timeout,
            thread_id=thread_id,
            user_id=user_id,
            store=store,
        ) as streamed:
            async for event in streamed.events():
                yield event


def _check_resilience(
    retry: object, step_timeout: object, breakers: object, last_good_cache: object, settings: ModelSettings | None
) -> None:
    """Reject resilience options that are invalid or contradict each other, saying what to change."""
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise UserError(f"`retry` must be a RetryPolicy or None, got {type(retry).__name__}.")
    if step_timeout is not None and (
        isinstance(step_timeout, bool) or not isinstance(step_timeout, int | float) or not step_timeout > 0
    ):
        raise UserError(f"`step_timeout` must be a positive number of seconds or None, got {step_timeout!r}.")
    if breakers is not None and breakers is not False and not isinstance(breakers, BreakerRegistry):
        raise UserError(f"`breakers` must be a BreakerRegistry, False or None, got {type(breakers).__name__}.")
    if last_good_cache is not None and not isinstance(last_good_cache, LastGoodCache):
        raise UserError(
            f"`last_good_cache` must implement LastGoodCache (async get/put), got {type(last_good_cache).__name__}."
        )
    request_s = settings.timeout_s if settings is not None else None
    if request_s is None:
        return
    if isinstance(step_timeout, int | float) and request_s > step_timeout:
        raise UserError(
            f"The request timeout in `model_settings` ({request_s} s) is longer than `step_timeout` "
            f"({step_timeout} s): a slow request would always end the step first. Lower `timeout_s` or raise "
            "`step_timeout`."
        )
    deadline = retry.deadline_s if isinstance(retry, RetryPolicy) and retry.max_attempts > 1 else None
    if deadline is not None and deadline < request_s:
        raise UserError(
            f"The retry policy's `deadline_s` ({deadline} s) is shorter than one request's timeout in "
            f"`model_settings` ({request_s} s): a timed-out request could never be retried. Raise `deadline_s` "
            "or lower `timeout_s`."
        )
