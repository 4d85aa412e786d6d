"""Streams cut mid-way: the request starts again, the consumer is told (`StreamRestarted`), and what it then receives
is the whole answer, once: no duplicated or mixed deltas, and never a silently truncated answer.
"""

from __future__ import annotations

import pytest

from miniagent.errors import ModelAPIError
from miniagent.events import StreamRestarted, TextDelta, ToolCallArgsDelta, ToolCallFinished
from miniagent.messages import ModelResponse
from miniagent.resilience import BreakerRegistry, RetryPolicy
from miniagent.store import SQLStore
from miniagent.testing import RecordingClock

from ._fault_anthropic import ANTHROPIC
from ._fault_openai import OPENAI
from ._server import Cut, Dialect, FaultServer, Respond, Step, Text, ToolCalls, Truncated
from .conftest import (
    ANSWER,
    WEATHER_CALL,
    after_arg_pieces,
    after_words,
    assert_failed,
    assert_recovered,
    chaos_agent,
    model_for,
    run_case,
    weather_then_answer,
)

pytestmark = pytest.mark.anyio

DIALECTS = pytest.mark.parametrize("dialect", [OPENAI, ANTHROPIC], ids=lambda d: d.name)
PROMPT = "What is the weather in Paris?"
TOOL_STEP = Respond(ToolCalls((WEATHER_CALL,)))


class WeatherTool:
    """`get_weather`, counting its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def get_weather(self, city: str) -> str:
        """Current weather for a city."""
        self.calls.append(city)
        return f"Sunny, 18 C in {city}"


@DIALECTS
async def test_cut_during_the_final_answer_restarts_it_whole(
    dialect: Dialect, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    tool = WeatherTool()
    script: list[Step] = [TOOL_STEP, Cut(after_words(dialect, 3))]
    async with FaultServer(dialect, script, default=weather_then_answer(dialect)) as server:
        agent = chaos_agent(model_for(server), clock, breakers, tools=[tool.get_weather])
        outcome = await run_case(agent, store, PROMPT, streamed=True)
    assert_recovered(outcome)
    assert server.count == 3  # the tool step, the cut answer, the answer again
    assert tool.calls == ["Paris"]  # the tool step is not repeated
    [restart] = outcome.restarts
    assert restart.step == 2 and restart.discarded_chars == len("It is sunny")
    # The consumer saw the three words, the restart, then the whole answer: never the pieces of two attempts mixed.
    seen = [e for e in outcome.consumed if isinstance(e, TextDelta | StreamRestarted)]
    assert "".join(e.delta for e in seen[:3] if isinstance(e, TextDelta)) == "It is sunny"
    assert isinstance(seen[3], StreamRestarted)
    assert "".join(e.delta for e in seen[4:] if isinstance(e, TextDelta)) == ANSWER
    assert [r.error_type for r in outcome.retries] == ["ModelAPIError"]


@DIALECTS
async def test_cut_during_tool_call_arguments_restarts_the_step(
    dialect: Dialect, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    tool = WeatherTool()
    script: list[Step] = [Cut(after_arg_pieces(dialect, 2))]  # '{"city' and '": "Pa' arrived, then the cut
    async with FaultServer(dialect, script, default=weather_then_answer(dialect)) as server:
        agent = chaos_agent(model_for(server), clock, breakers, tools=[tool.get_weather])
        outcome = await run_case(agent, store, PROMPT, streamed=True)
    assert_recovered(outcome)
    assert server.count == 3
    assert tool.calls == ["Paris"]  # called once, with the arguments of the complete attempt
    [restart] = outcome.restarts
    assert restart.step == 1 and restart.discarded_chars == len('{"city": "Pa')
    args = [e for e in outcome.consumed if isinstance(e, ToolCallArgsDelta | StreamRestarted)]
    after = args[[i for i, e in enumerate(args) if isinstance(e, StreamRestarted)][0] + 1 :]
    assert "".join(e.delta for e in after if isinstance(e, ToolCallArgsDelta)) == WEATHER_CALL.arguments
    finished = [e for e in outcome.events if isinstance(e, ToolCallFinished)]
    assert [f.outcome for f in finished] == ["success"]


@DIALECTS
async def test_stream_that_ends_early_without_finishing_is_restarted(
    dialect: Dialect, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """A clean end of the body mid-answer (no finish reason, no end marker) is a cut, not an answer."""
    script: list[Step] = [Truncated(after_words(dialect, 4))]
    async with FaultServer(dialect, script, default=Text(ANSWER)) as server:
        outcome = await run_case(chaos_agent(model_for(server), clock, breakers), store, PROMPT, streamed=True)
    assert_recovered(outcome)
    assert server.count == 2
    assert len(outcome.restarts) == 1 and outcome.restarts[0].discarded_chars == len("It is sunny and")


async def test_anthropic_stream_without_message_stop_is_restarted(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """Every event but `message_stop`: the message never ended, so it is requested again."""
    async with FaultServer(ANTHROPIC, [Truncated()], default=Text(ANSWER)) as server:
        outcome = await run_case(chaos_agent(model_for(server), clock, breakers), store, PROMPT, streamed=True)
    assert_recovered(outcome)
    assert server.count == 2 and len(outcome.restarts) == 1


async def test_openai_stream_without_done_marker_after_its_finish_is_complete(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """A finish reason arrived, only `data: [DONE]` is missing: the answer is whole, and nothing is retried."""
    async with FaultServer(OPENAI, [Truncated()], default=Text(ANSWER)) as server:
        outcome = await run_case(chaos_agent(model_for(server), clock, breakers), store, PROMPT, streamed=True)
    assert_recovered(outcome)
    assert server.count == 1 and outcome.restarts == [] and outcome.retries == []


@DIALECTS
async def test_cut_whole_body_is_retried(
    dialect: Dialect, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """A response that was not streamed, cut half-way through its JSON body, is requested again."""
    async with FaultServer(dialect, [Cut(0)], default=Text(ANSWER)) as server:
        outcome = await run_case(chaos_agent(model_for(server), clock, breakers), store, PROMPT, streamed=False)
    assert_recovered(outcome)
    assert server.count == 2


@DIALECTS
async def test_stream_cut_every_time_fails_clearly_and_never_answers_truncated(
    dialect: Dialect, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    policy = RetryPolicy(max_attempts=3)
    script: list[Step] = [Cut(after_words(dialect, 3))] * 3
    async with FaultServer(dialect, script, default=Text(ANSWER)) as server:
        agent = chaos_agent(model_for(server), clock, breakers, retry=policy)
        outcome = await run_case(agent, store, PROMPT, streamed=True)
    assert_failed(outcome, ModelAPIError, "3 attempts")
    assert server.count == 3
    assert outcome.output is None
    # The consumer was told to discard each partial attempt; the last one's words are all it holds, and the run's
    # failure says the answer never came: no partial text is stored as if it were the answer.
    assert len(outcome.restarts) == 2
    assert outcome.final_step_text() == "It is sunny"
    assert not any(isinstance(m, ModelResponse) for m in outcome.stored)
