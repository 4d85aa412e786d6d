"""Tool faults, end to end against the fault servers: invalid arguments, unknown tools, tools that raise or hang.

The model is always told, in a structured tool result or a retry prompt, and can go on: the server's next scripted
response is the model fixing its call (or answering another way). A hung tool ends at the agent's default tool
timeout, on the agent's clock, with no configuration.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from miniagent import Tool
from miniagent.errors import ToolRetriesExceeded
from miniagent.events import AgentEvent, RetryScheduled, ToolCallFinished, ToolCallStarted, add_event_handler
from miniagent.resilience import BreakerRegistry, RetryPolicy
from miniagent.store import SQLStore
from miniagent.testing import RecordingClock

from ._fault_anthropic import ANTHROPIC
from ._fault_openai import OPENAI
from ._server import Call, Dialect, FaultServer, Respond, Text, ToolCalls
from .conftest import (
    ANSWER,
    WEATHER_CALL,
    Outcome,
    assert_failed,
    assert_recovered,
    chaos_agent,
    model_for,
    run_case,
)

pytestmark = pytest.mark.anyio

DIALECTS = pytest.mark.parametrize("dialect", [OPENAI, ANTHROPIC], ids=lambda d: d.name)
STREAMED = pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
PROMPT = "What is the weather in Paris?"
FIXED = Respond(ToolCalls((WEATHER_CALL,)))
FINAL = Respond(Text(ANSWER))


class WeatherTool:
    """`get_weather`, counting its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def get_weather(self, city: str) -> str:
        """Current weather for a city."""
        self.calls.append(city)
        return f"Sunny, 18 C in {city}"


def tool_results_sent(dialect: Dialect, body: Any) -> list[str]:
    """The tool results (and retry prompts answering a call) a request carried to the model, as text."""
    out: list[str] = []
    for message in body["messages"]:
        if dialect is OPENAI and message.get("role") == "tool":
            out.append(str(message["content"]))
        elif dialect is ANTHROPIC and isinstance(message.get("content"), list):
            for block in message["content"]:
                if block.get("type") == "tool_result":
                    content = block["content"]
                    out.append(content if isinstance(content, str) else " ".join(c["text"] for c in content))
    return out


def finished(outcome: Outcome) -> list[ToolCallFinished]:
    return [e for e in outcome.events if isinstance(e, ToolCallFinished)]


# ---- the model's own mistakes: a retry prompt, then the model fixes its call -----------------------------------


@DIALECTS
@STREAMED
async def test_invalid_json_arguments_get_a_retry_prompt_and_the_model_fixes_them(
    dialect: Dialect, streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    tool = WeatherTool()
    broken = Respond(ToolCalls((Call("get_weather", '{"city": "Par', id="call_bad"),)))
    async with FaultServer(dialect, [broken, FIXED, FINAL]) as server:
        agent = chaos_agent(model_for(server), clock, breakers, tools=[tool.get_weather])
        outcome = await run_case(agent, store, PROMPT, streamed=streamed)
    assert_recovered(outcome)
    assert server.count == 3
    assert tool.calls == ["Paris"]  # never called with the broken arguments
    [retry] = [e for e in outcome.events if isinstance(e, RetryScheduled)]
    assert retry.cause == "tool-args" and retry.tool_name == "get_weather"
    [prompt] = tool_results_sent(dialect, server.bodies[1])
    # The model reads what was wrong with its call. (Anthropic's whole responses carry arguments as an object, so
    # the fault server sends the broken text as a JSON string there, and the prompt says an object is expected.)
    expected = "Input should be an object" if dialect is ANTHROPIC and not streamed else "Invalid JSON"
    assert prompt.startswith("Validation failed") and expected in prompt


@DIALECTS
@STREAMED
async def test_unknown_tool_gets_a_retry_prompt_naming_the_tools(
    dialect: Dialect, streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    tool = WeatherTool()
    wrong = Respond(ToolCalls((Call("get_wether", '{"city": "Paris"}', id="call_typo"),)))
    async with FaultServer(dialect, [wrong, FIXED, FINAL]) as server:
        agent = chaos_agent(model_for(server), clock, breakers, tools=[tool.get_weather])
        outcome = await run_case(agent, store, PROMPT, streamed=streamed)
    assert_recovered(outcome)
    assert server.count == 3 and tool.calls == ["Paris"]
    [retry] = [e for e in outcome.events if isinstance(e, RetryScheduled)]
    assert retry.cause == "unknown-tool"
    [prompt] = tool_results_sent(dialect, server.bodies[1])
    assert "Unknown tool 'get_wether'. Available tools: get_weather." in prompt


async def test_invalid_arguments_every_time_end_in_a_typed_error_not_an_empty_answer(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    tool = WeatherTool()
    broken = Respond(ToolCalls((Call("get_weather", "{not json", id="call_bad"),)))
    async with FaultServer(OPENAI, [broken] * 3) as server:
        agent = chaos_agent(model_for(server), clock, breakers, tools=[tool.get_weather])  # retries=1 (default)
        outcome = await run_case(agent, store, PROMPT, streamed=False)
    assert_failed(outcome, ToolRetriesExceeded, "get_weather", "invalid arguments 2 times")
    assert server.count == 2 and tool.calls == []


# ---- tools that fail: the model gets a structured error and answers another way ---------------------------------


@DIALECTS
@STREAMED
async def test_tool_that_raises_returns_a_structured_error_to_the_model(
    dialect: Dialect, streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        raise RuntimeError(f"the weather service for {city} is down")

    answer = "I could not get the weather for Paris right now."
    async with FaultServer(dialect, [FIXED, Respond(Text(answer))]) as server:
        agent = chaos_agent(model_for(server), clock, breakers, tools=[get_weather])
        outcome = await run_case(agent, store, PROMPT, streamed=streamed)
    assert_recovered(outcome, answer)
    assert server.count == 2
    assert [f.outcome for f in finished(outcome)] == ["error"]
    assert tool_results_sent(dialect, server.bodies[1]) == [
        "Error: the tool raised RuntimeError: the weather service for Paris is down"
    ]
    if dialect is ANTHROPIC:  # flagged as an error result, not only worded as one
        [result] = [b for m in server.bodies[1]["messages"] for b in m["content"] if b.get("type") == "tool_result"]
        assert result["is_error"] is True


@STREAMED
async def test_async_tool_that_hangs_times_out_by_default(
    streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """No timeout configured: the agent's default tool timeout (on its clock) ends the call; the model is told."""
    never = anyio.Event()

    async def get_weather(city: str) -> str:
        """Current weather for a city."""
        await never.wait()
        return "unreachable"

    answer = "The weather service did not answer in time."
    async with FaultServer(OPENAI, [FIXED, Respond(Text(answer))]) as server:
        agent = chaos_agent(model_for(server), clock, breakers, tools=[get_weather])
        outcome = await run_with_clock_moved_on_tool_start(agent, store, clock, streamed=streamed)
    assert_recovered(outcome, answer)
    assert [f.outcome for f in finished(outcome)] == ["timeout"]
    assert tool_results_sent(OPENAI, server.bodies[1]) == [
        f"Error: the tool did not finish within its timeout of {agent.tool_timeout_s} s."
    ]
    assert agent.tool_timeout_s == 60.0  # the default: nothing was configured


async def test_sync_tool_that_hangs_times_out_by_default(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """A blocking function (run in a worker thread) that never returns: the run moves on at the default timeout."""
    never = threading.Event()

    def get_weather(city: str) -> str:
        """Current weather for a city."""
        never.wait()
        return "unreachable"

    try:
        async with FaultServer(ANTHROPIC, [FIXED, Respond(Text("No answer from the weather service."))]) as server:
            agent = chaos_agent(model_for(server), clock, breakers, tools=[get_weather])
            outcome = await run_with_clock_moved_on_tool_start(agent, store, clock, streamed=True)
    finally:
        never.set()  # free the abandoned worker thread
    assert_recovered(outcome, "No answer from the weather service.")
    assert [f.outcome for f in finished(outcome)] == ["timeout"]


async def run_with_clock_moved_on_tool_start(
    agent: Any, store: SQLStore, clock: RecordingClock, *, streamed: bool
) -> Outcome:
    """Run the case; once the tool has started, move the agent's clock past its default tool timeout."""
    started = anyio.Event()

    def on_event(event: AgentEvent) -> None:
        if isinstance(event, ToolCallStarted):
            started.set()

    remove = add_event_handler(on_event)
    result: list[Outcome] = []
    try:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                result.append(await run_case(agent, store, PROMPT, streamed=streamed))

            tg.start_soon(run)
            await started.wait()
            await anyio.wait_all_tasks_blocked()  # the tool is now waiting (on its event, or in its thread)
            clock.advance(agent.tool_timeout_s)
    finally:
        remove()
    return result[0]


# ---- tools that declare how they degrade -------------------------------------------------------------------------


async def test_flaky_idempotent_tool_is_retried_by_its_policy(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    failures = [ConnectionError("reset by peer"), ConnectionError("reset by peer")]
    calls: list[str] = []

    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        if failures:
            raise failures.pop(0)
        return f"Sunny, 18 C in {city}"

    policy = RetryPolicy(max_attempts=3, base_delay_s=0.2, max_delay_s=1.0)
    async with FaultServer(OPENAI, [FIXED, FINAL]) as server:
        agent = chaos_agent(model_for(server), clock, breakers, tools=[Tool(get_weather, retry=policy)])
        outcome = await run_case(agent, store, PROMPT, streamed=False)
    assert_recovered(outcome)
    assert calls == ["Paris"] * 3
    retries = [e for e in outcome.events if isinstance(e, RetryScheduled) and e.cause == "tool-error"]
    assert [r.attempt for r in retries] == [1, 2] and all(r.upstream == "tool:get_weather" for r in retries)
    assert clock.sleeps == [r.delay_s for r in retries] and all(0.2 <= d <= 1.0 for d in clock.sleeps)
    assert tool_results_sent(OPENAI, server.bodies[1]) == ["Sunny, 18 C in Paris"]
    assert server.count == 2  # tool retries never reach the model


async def test_tool_failing_for_good_falls_back_to_another_tool(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        raise TimeoutError("upstream weather API timed out")

    def get_weather_cached(city: str) -> str:
        """Yesterday's weather for a city."""
        return f"Yesterday: cloudy, 15 C in {city}"

    tools: list[Tool[None]] = [Tool(get_weather, fallback="get_weather_cached"), Tool(get_weather_cached)]
    async with FaultServer(OPENAI, [FIXED, FINAL]) as server:
        agent = chaos_agent(model_for(server), clock, breakers, tools=tools)
        outcome = await run_case(agent, store, PROMPT, streamed=True)
    assert_recovered(outcome)
    [result] = tool_results_sent(OPENAI, server.bodies[1])
    assert "Yesterday: cloudy, 15 C in Paris" in result and "get_weather_cached" in result
    assert [f.outcome for f in finished(outcome)] == ["fallback"]
