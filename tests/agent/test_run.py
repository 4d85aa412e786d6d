from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import anyio
import pytest
from pydantic import BaseModel

from miniagent import (
    Agent,
    AgentEvent,
    ModelRequest,
    ModelResponse,
    ModelRetry,
    RetryPromptPart,
    RunContext,
    RunTimeout,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UnexpectedModelBehavior,
    Usage,
    UsageLimitExceeded,
    UsageLimits,
    UserError,
    UserPromptPart,
)
from miniagent.errors import OutputTypeError, ToolRetriesExceeded
from miniagent.events import RetryScheduled, RunCancelled, ToolCallFinished, ToolCallStarted
from miniagent.messages import ModelMessage
from miniagent.testing import AgentInfo, FunctionModel, ManualClock, ScriptedModel, tool_call_response

pytestmark = pytest.mark.anyio


def weather_agent(model: ScriptedModel | FunctionModel, *, max_steps: int | None = None) -> Agent[None, str]:
    agent = Agent(model=model, instructions="You are helpful.", max_steps=max_steps)

    @agent.tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"Sunny in {city}"

    return agent


async def test_text_answer_and_history() -> None:
    model = ScriptedModel(["Hello there."])
    agent = Agent(model=model, instructions="Be brief.")
    result = await agent.run("Hi")
    assert result.output == "Hello there."
    assert result.usage.requests == 1
    assert result.messages[0] == ModelRequest([SystemPromptPart("Be brief."), UserPromptPart("Hi")])
    assert isinstance(result.messages[1], ModelResponse)
    assert result.messages[1].parts == [TextPart("Hello there.")]
    model.assert_consumed()


async def test_tool_call_round_trip_records_everything() -> None:
    model = ScriptedModel([tool_call_response(("get_weather", {"city": "Paris"})), "It is sunny in Paris."])
    agent = weather_agent(model)
    result = await agent.run("Weather in Paris?")
    assert result.output == "It is sunny in Paris."
    assert result.usage.requests == 2
    assert result.usage.tool_calls == 1
    returned = result.messages[2]
    assert isinstance(returned, ModelRequest)
    first = result.messages[1]
    assert isinstance(first, ModelResponse)
    call_id = first.tool_calls[0].tool_call_id
    assert returned.parts == [ToolReturnPart("get_weather", "Sunny in Paris", call_id)]
    # the second model call saw the tool's result
    second_call = model.calls[1].messages
    assert isinstance(second_call[-1], ModelRequest)
    assert isinstance(second_call[-1].parts[0], ToolReturnPart)
    assert [t.name for t in model.calls[0].params.function_tools] == ["get_weather"]


async def test_continue_from_message_history() -> None:
    model = ScriptedModel(["first", "second"])
    agent = Agent(model=model, instructions="sys")
    first = await agent.run("one")
    second = await agent.run("two", message_history=first.all_messages())
    assert second.output == "second"
    assert len(second.new_messages()) == 2
    seen = model.calls[1].messages
    assert sum(isinstance(p, SystemPromptPart) for m in seen if isinstance(m, ModelRequest) for p in m.parts) == 1
    assert len(seen) == 3


async def test_independent_sync_tool_calls_run_in_parallel() -> None:
    # Both tools must reach the barrier before either can pass: only possible if they run at the same time.
    barrier = threading.Barrier(2, timeout=30)
    model = ScriptedModel([tool_call_response(("left", {}), ("right", {})), "done"])
    agent = Agent(model=model)

    @agent.tool
    def left() -> str:
        barrier.wait()
        return "L"

    @agent.tool
    def right() -> str:
        barrier.wait()
        return "R"

    result = await agent.run("go")
    returns = result.messages[2]
    assert isinstance(returns, ModelRequest)
    assert [(p.content, p.outcome) for p in returns.parts if isinstance(p, ToolReturnPart)] == [
        ("L", "success"),
        ("R", "success"),
    ]


async def test_independent_async_tool_calls_run_in_parallel() -> None:
    a_started, b_started = anyio.Event(), anyio.Event()
    model = ScriptedModel([tool_call_response(("a", {}), ("b", {})), "done"])
    agent = Agent(model=model)

    @agent.tool
    async def a() -> str:
        a_started.set()
        await b_started.wait()
        return "A"

    @agent.tool
    async def b() -> str:
        b_started.set()
        await a_started.wait()
        return "B"

    result = await agent.run("go")
    assert result.output == "done"
    assert result.usage.tool_calls == 2


async def test_hung_tool_times_out_on_the_injected_clock() -> None:
    clock = ManualClock()
    started = anyio.Event()
    model = ScriptedModel([tool_call_response(("hang", {})), "recovered"])
    agent = Agent(model=model, clock=clock, tool_timeout=5.0)
    cancelled = anyio.Event()

    @agent.tool
    async def hang() -> str:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return "never"

    events: list[AgentEvent] = []

    async def sink(event: AgentEvent) -> None:
        events.append(event)

    result_box: list[str] = []

    async def run() -> None:
        result_box.append((await agent.run("go", event_sink=sink)).output)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await started.wait()
        clock.advance(4.9)
        assert not cancelled.is_set()
        clock.advance(0.2)
    assert cancelled.is_set()
    assert result_box == ["recovered"]
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert finished[0].outcome == "timeout"
    assert finished[0].duration_s == pytest.approx(5.1)
    last_request = model.calls[1].messages[-1]
    assert isinstance(last_request, ModelRequest)
    part = last_request.parts[0]
    assert isinstance(part, ToolReturnPart)
    assert part.outcome == "timeout"
    assert "timeout of 5.0 s" in part.content


async def test_per_tool_timeout_overrides_the_default() -> None:
    clock = ManualClock()
    started = anyio.Event()
    model = ScriptedModel([tool_call_response(("slow", {})), "ok"])
    agent = Agent(model=model, clock=clock, tool_timeout=100.0)

    @agent.tool(timeout=1.0)
    async def slow() -> str:
        started.set()
        await anyio.sleep_forever()
        return "never"

    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.run, "go")
        await started.wait()
        clock.advance(1.0)
    part = model.calls[1].messages[-1].parts[0]
    assert isinstance(part, ToolReturnPart)
    assert part.outcome == "timeout"


async def test_tool_that_raises_becomes_an_error_result() -> None:
    model = ScriptedModel([tool_call_response(("boom", {})), "handled"])
    agent = Agent(model=model)

    @agent.tool
    def boom() -> str:
        raise ConnectionError("upstream down")

    result = await agent.run("go")
    assert result.output == "handled"
    part = model.calls[1].messages[-1].parts[0]
    assert isinstance(part, ToolReturnPart)
    assert part.outcome == "error"
    assert "ConnectionError: upstream down" in part.content


async def test_invalid_arguments_are_sent_back_as_a_retry_prompt() -> None:
    model = ScriptedModel(
        [
            tool_call_response(("add", {"a": "one", "b": 2})),
            tool_call_response(("add", {"a": 1, "b": 2})),
            "3",
        ]
    )
    agent = Agent(model=model)
    events: list[AgentEvent] = []

    @agent.tool
    def add(a: int, b: int) -> int:
        return a + b

    async def sink(event: AgentEvent) -> None:
        events.append(event)

    result = await agent.run("1+2", event_sink=sink)
    assert result.output == "3"
    retry = model.calls[1].messages[-1].parts[0]
    assert isinstance(retry, RetryPromptPart)
    assert retry.tool_name == "add"
    assert "a: Input should be a valid integer" in retry.content
    retries = [e for e in events if isinstance(e, RetryScheduled)]
    assert [(r.cause, r.attempt, r.tool_name) for r in retries] == [("tool-args", 1, "add")]


async def test_validation_retries_are_bounded() -> None:
    bad = tool_call_response(("add", {"a": "x", "b": 1}))
    model = ScriptedModel([bad, bad, bad])
    agent = Agent(model=model, retries=2)

    @agent.tool
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(ToolRetriesExceeded, match=r"'add' was called with invalid arguments 3 times") as info:
        await agent.run("go")
    assert info.value.usage is not None and info.value.usage.requests == 3
    assert len(info.value.messages) == 6


async def test_model_retry_from_a_tool() -> None:
    model = ScriptedModel(
        [tool_call_response(("lookup", {"key": "a"})), tool_call_response(("lookup", {"key": "b"})), "b!"]
    )
    agent = Agent(model=model)

    @agent.tool
    def lookup(key: str) -> str:
        if key != "b":
            raise ModelRetry(f"no such key {key!r}; try 'b'")
        return "found"

    result = await agent.run("go")
    assert result.output == "b!"
    retry = model.calls[1].messages[-1].parts[0]
    assert isinstance(retry, RetryPromptPart)
    assert retry.content == "no such key 'a'; try 'b'"


async def test_unknown_tool_is_a_retry_naming_the_known_tools() -> None:
    model = ScriptedModel([tool_call_response(("nope", {})), "ok"])
    agent = weather_agent(model)
    await agent.run("go")
    retry = model.calls[1].messages[-1].parts[0]
    assert isinstance(retry, RetryPromptPart)
    assert "Unknown tool 'nope'. Available tools: get_weather." in retry.content


async def test_run_context_carries_typed_deps() -> None:
    @dataclass
    class Db:
        rows: dict[str, int]

    model = ScriptedModel([tool_call_response(("count", {"name": "x"})), "done"])
    agent = Agent(model=model, deps_type=Db)
    seen: list[tuple[str | None, int]] = []

    @agent.tool
    def count(ctx: RunContext[Db], name: str) -> int:
        seen.append((ctx.tool_name, ctx.step))
        return ctx.deps.rows[name]

    result = await agent.run("go", deps=Db({"x": 7}))
    assert result.output == "done"
    assert seen == [("count", 1)]
    part = model.calls[1].messages[-1].parts[0]
    assert isinstance(part, ToolReturnPart) and part.content == 7
    assert "ctx" not in agent.tools[0].definition.parameters_json_schema["properties"]


class City(BaseModel):
    name: str
    population: int


async def test_structured_output_with_retry_on_invalid() -> None:
    model = ScriptedModel(
        [
            tool_call_response(("final_result", {"name": "Paris", "population": "many"})),
            tool_call_response(("final_result", {"name": "Paris", "population": 2100000})),
        ]
    )
    agent = Agent(model=model, output_type=City)
    result = await agent.run("Biggest French city?")
    assert result.output == City(name="Paris", population=2100000)
    params = model.calls[0].params
    assert not params.allow_text_output
    assert params.output_tools[0].parameters_json_schema["required"] == ["name", "population"]
    retry = model.calls[1].messages[-1].parts[0]
    assert isinstance(retry, RetryPromptPart)
    assert "population: Input should be a valid integer" in retry.content


async def test_structured_output_from_json_text() -> None:
    agent = Agent(model=ScriptedModel(['```json\n{"name": "Rome", "population": 2800000}\n```']), output_type=City)
    assert (await agent.run("?")).output.name == "Rome"


async def test_structured_output_of_a_non_object_type_is_wrapped() -> None:
    model = ScriptedModel([tool_call_response(("final_result", {"response": [1, 2, 3]}))])
    agent = Agent(model=model, output_type=list[int])
    assert (await agent.run("numbers")).output == [1, 2, 3]
    schema = model.calls[0].params.output_tools[0].parameters_json_schema
    assert schema["properties"]["response"]["type"] == "array"


async def test_plain_text_when_structured_output_expected_is_retried_then_fails() -> None:
    agent = Agent(model=ScriptedModel(["not json", "still not"]), output_type=City, output_retries=1)
    with pytest.raises(UnexpectedModelBehavior, match="final answer failed validation 2 times"):
        await agent.run("?")


async def test_step_limit_stops_a_looping_model() -> None:
    def always_tool(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return tool_call_response(("get_weather", {"city": "Paris"}))

    agent = weather_agent(FunctionModel(always_tool), max_steps=3)
    with pytest.raises(UsageLimitExceeded, match="limit of 3 model requests") as info:
        await agent.run("loop")
    assert info.value.usage is not None
    assert info.value.usage.requests == 3
    assert info.value.usage.tool_calls == 3


async def test_token_and_tool_call_limits() -> None:
    agent = weather_agent(ScriptedModel(["a b c d e f g h"]))
    with pytest.raises(UsageLimitExceeded, match="output_tokens_limit of 3"):
        await agent.run("go", usage_limits=UsageLimits(output_tokens_limit=3))
    model = ScriptedModel([tool_call_response(("get_weather", {"city": "a"}), ("get_weather", {"city": "b"}))])
    with pytest.raises(UsageLimitExceeded, match="tool_calls_limit is 1"):
        await weather_agent(model).run("go", usage_limits=UsageLimits(tool_calls_limit=1))


async def test_run_timeout_on_the_injected_clock() -> None:
    clock = ManualClock()
    requested = anyio.Event()

    async def slow_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        requested.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    agent = Agent(model=FunctionModel(slow_model), clock=clock)
    errors: list[BaseException] = []

    async def run() -> None:
        try:
            await agent.run("go", timeout=30)
        except RunTimeout as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await requested.wait()
        clock.advance(30)
    assert len(errors) == 1
    assert "timeout of 30 s" in str(errors[0])


async def test_cancelling_a_run_cancels_its_tools_and_keeps_partial_usage() -> None:
    tool_started = anyio.Event()
    tool_cancelled = anyio.Event()
    model = ScriptedModel([tool_call_response(("wait", {}), ("wait", {}))])
    agent = Agent(model=model)

    @agent.tool
    async def wait() -> str:
        tool_started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            tool_cancelled.set()
            raise
        return "never"

    usage = Usage()
    events: list[AgentEvent] = []

    async def sink(event: AgentEvent) -> None:
        events.append(event)

    before = asyncio.all_tasks()
    task = asyncio.create_task(agent.run("go", usage=usage, event_sink=sink))
    await tool_started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tool_cancelled.is_set()
    assert usage.requests == 1
    assert usage.tool_calls == 2
    assert isinstance(events[-1], RunCancelled)
    assert events[-1].usage.requests == 1
    assert asyncio.all_tasks() == before  # no dangling tasks


async def test_event_order_for_a_tool_run() -> None:
    model = ScriptedModel([tool_call_response(("get_weather", {"city": "Oslo"})), "Cold."])
    agent = weather_agent(model)
    events: list[AgentEvent] = []

    async def sink(event: AgentEvent) -> None:
        events.append(event)

    await agent.run("Oslo?", event_sink=sink)
    kinds = [e.kind for e in events]
    assert kinds == [
        "run-started",
        "model-request-started",
        "tool-call-args-delta",
        "model-response-received",
        "usage-updated",
        "tool-call-started",
        "tool-call-finished",
        "usage-updated",
        "model-request-started",
        "text-delta",
        "model-response-received",
        "usage-updated",
        "run-finished",
    ]
    started = next(e for e in events if isinstance(e, ToolCallStarted))
    assert started.args == {"city": "Oslo"}
    assert len({e.run_id for e in events}) == 1


async def test_run_sync_refuses_inside_an_event_loop() -> None:
    agent = Agent(model=ScriptedModel(["x"]))
    with pytest.raises(UserError, match=r"use `await run\(\)`"):
        agent.run_sync("hi")


def test_run_sync_outside_a_loop() -> None:
    assert Agent(model=ScriptedModel(["sync ok"])).run_sync("hi").output == "sync ok"


def test_bad_configuration_errors_name_the_fix() -> None:
    with pytest.raises(OutputTypeError, match="Pass the class itself"):
        Agent(model=ScriptedModel([]), output_type=City(name="x", population=1))  # type: ignore[call-overload]
    with pytest.raises(UserError, match="`max_steps` must be a positive integer"):
        Agent(model=ScriptedModel([]), max_steps=-1)
    with pytest.raises(UserError, match="`retries` must be >= 0"):
        Agent(model=ScriptedModel([]), retries=-1)
    with pytest.raises(UserError, match="`model` must be a Model"):
        Agent(model=42)  # type: ignore[call-overload]
    with pytest.raises(UserError, match="UsageLimits.request_limit must be a non-negative"):
        UsageLimits(request_limit=-2)


def test_duplicate_tool_names_are_refused() -> None:
    agent = Agent(model=ScriptedModel([]))

    @agent.tool
    def same() -> None: ...

    with pytest.raises(UserError, match="already has a tool named 'same'"):
        agent.tool(same)


def test_override_swaps_the_model() -> None:
    agent = Agent(model=ScriptedModel(["real"]))
    with agent.override(model=ScriptedModel(["fake"])):
        assert agent.run_sync("x").output == "fake"
    assert agent.run_sync("x").output == "real"


async def test_tool_call_args_as_text_json() -> None:
    model = ScriptedModel([ModelResponse([ToolCallPart("get_weather", '{"city": "Lima"}', "c1")]), "ok"])
    await weather_agent(model).run("go")
    part = model.calls[1].messages[-1].parts[0]
    assert isinstance(part, ToolReturnPart) and part.content == "Sunny in Lima"


async def test_structured_answer_closes_every_call_so_history_can_continue() -> None:
    model = ScriptedModel(
        [
            ModelResponse(
                [
                    ToolCallPart("get_weather", {"city": "Oslo"}, "c1"),
                    ToolCallPart("final_result", {"name": "Oslo", "population": 700000}, "c2"),
                ]
            )
        ]
    )
    agent = Agent(model=model, output_type=City)

    @agent.tool
    def get_weather(city: str) -> str:
        return "cold"

    result = await agent.run("?")
    assert result.output.name == "Oslo"
    closing = result.messages[-1]
    assert isinstance(closing, ModelRequest)
    assert [(p.tool_call_id, p.content) for p in closing.parts if isinstance(p, ToolReturnPart)] == [
        ("c2", "Final result processed."),
        ("c1", "Not executed: the final result was already given."),
    ]


async def test_invalid_output_call_still_runs_the_other_calls() -> None:
    model = ScriptedModel(
        [
            ModelResponse(
                [
                    ToolCallPart("get_weather", {"city": "Oslo"}, "c1"),
                    ToolCallPart("final_result", {"name": "Oslo"}, "c2"),
                ]
            ),
            tool_call_response(("final_result", {"name": "Oslo", "population": 1})),
        ]
    )
    agent = Agent(model=model, output_type=City)
    ran: list[str] = []

    @agent.tool
    def get_weather(city: str) -> str:
        ran.append(city)
        return "cold"

    await agent.run("?")
    assert ran == ["Oslo"]
    answers = model.calls[1].messages[-1].parts
    assert {type(p).__name__ for p in answers} == {"RetryPromptPart", "ToolReturnPart"}
