from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import pytest
from pydantic import BaseModel

from miniagent import Agent, AgentEvent, RunFailed, RunFinished, RunStarted, TextDelta, UnexpectedModelBehavior
from miniagent.events import RunCancelled, event_from_json, event_to_json
from miniagent.messages import ModelMessage, ModelResponse, messages_from_json, messages_to_json
from miniagent.models import StreamChunk, ToolCallChunk
from miniagent.testing import AgentInfo, FunctionModel, ScriptedModel, text_response, tool_call_response

pytestmark = pytest.mark.anyio


async def test_stream_text_yields_deltas_as_they_arrive() -> None:
    agent = Agent(model=ScriptedModel([["Hel", "lo ", "world"]]))
    async with agent.run_stream("hi") as run:
        deltas = [d async for d in run.stream_text()]
        assert deltas == ["Hel", "lo ", "world"]
        assert await run.get_output() == "Hello world"
        assert run.usage.requests == 1


async def test_stream_text_cumulative() -> None:
    agent = Agent(model=ScriptedModel([["a", "b", "c"]]))
    async with agent.run_stream("hi") as run:
        assert [t async for t in run.stream_text(delta=False)] == ["a", "ab", "abc"]


class Profile(BaseModel):
    name: str
    age: int
    city: str


async def test_stream_output_yields_partially_filled_typed_objects() -> None:
    pieces = ['{"na', 'me": "Ad', 'a", "age": 3', '6, "city": "Lon', 'don"}']
    chunks: list[StreamChunk | str] = [ToolCallChunk(0, tool_name="final_result", tool_call_id="c1")]
    chunks += [ToolCallChunk(0, args_delta=p) for p in pieces]
    agent = Agent(model=ScriptedModel([chunks]), output_type=Profile)
    async with agent.run_stream("who?") as run:
        outputs = [o async for o in run.stream_output()]
    assert all(isinstance(o, Profile) for o in outputs)
    assert outputs[0].name == "Ad"  # a partial string already
    first: object = outputs[0]
    assert vars(first)["age"] is None  # not received yet: partial objects hold None there
    assert any(o.name == "Ada" and o.age == 36 and o.city == "Lon" for o in outputs)
    assert outputs[-1] == Profile(name="Ada", age=36, city="London")


async def test_stream_output_for_text_is_the_text_so_far() -> None:
    agent = Agent(model=ScriptedModel([["x", "y"]]))
    async with agent.run_stream("hi") as run:
        assert [o async for o in run.stream_output()] == ["x", "xy", "xy"]


async def test_run_stream_events_covers_a_tool_run_in_order() -> None:
    model = ScriptedModel([tool_call_response(("echo", {"text": "hi"})), ["ec", "ho: hi"]])
    agent = Agent(model=model)

    @agent.tool
    def echo(text: str) -> str:
        return text

    events = [e async for e in agent.run_stream_events("say hi")]
    kinds = [e.kind for e in events]
    assert kinds[0] == "run-started"
    assert kinds[-1] == "run-finished"
    assert kinds.index("tool-call-started") < kinds.index("tool-call-finished") < kinds.index("text-delta")
    assert [e.delta for e in events if isinstance(e, TextDelta)] == ["ec", "ho: hi"]
    final = events[-1]
    assert isinstance(final, RunFinished)
    assert final.output == "echo: hi"
    assert final.usage.requests == 2


async def test_failed_stream_yields_run_failed_then_raises() -> None:
    agent = Agent(model=ScriptedModel(["", ""]), retries=0)
    seen: list[AgentEvent] = []
    with pytest.raises(UnexpectedModelBehavior):
        async for event in agent.run_stream_events("hi"):
            seen.append(event)
    assert isinstance(seen[-1], RunFailed)
    assert seen[-1].error_type == "UnexpectedModelBehavior"


async def test_leaving_the_stream_early_cancels_the_run_cleanly() -> None:
    gate = anyio.Event()
    cancelled = anyio.Event()

    async def endless(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "first"
        try:
            await gate.wait()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        yield "never"

    agent = Agent(model=FunctionModel(stream_function=endless))
    before = asyncio.all_tasks()
    async with agent.run_stream("hi") as run:
        async for delta in run.stream_text():
            assert delta == "first"
            break
    assert cancelled.is_set()
    assert run.usage.requests == 0  # cancelled before the response completed
    assert asyncio.all_tasks() == before


async def test_explicit_cancel_emits_run_cancelled_with_partial_usage() -> None:
    tool_started = anyio.Event()
    model = ScriptedModel([tool_call_response(("wait", {}))])
    agent = Agent(model=model)

    @agent.tool
    async def wait() -> None:
        tool_started.set()
        await anyio.sleep_forever()

    async with agent.run_stream("go") as run:
        await tool_started.wait()
        await run.cancel()
        events = [e async for e in run.events()]
    assert isinstance(events[-1], RunCancelled)
    assert events[-1].usage.requests == 1
    assert run.usage.tool_calls == 1


async def test_events_and_messages_serialize_round_trip() -> None:
    model = ScriptedModel([tool_call_response(("echo", {"text": "hi"})), "done"])
    agent = Agent(model=model)

    @agent.tool
    def echo(text: str) -> str:
        return text

    events = [e async for e in agent.run_stream_events("x")]
    for event in events:
        assert event_from_json(event_to_json(event)).kind == event.kind
    result = await Agent(model=ScriptedModel([tool_call_response(("echo", {"text": "a"})), "b"]), tools=[echo]).run("x")
    assert messages_from_json(messages_to_json(result.messages)) == result.messages


async def test_a_number_still_streaming_is_not_shown_early() -> None:
    pieces = ['{"name": "Ada", "age": 3', '6, "city": "Oslo"}']
    chunks: list[StreamChunk | str] = [ToolCallChunk(0, tool_name="final_result", tool_call_id="c1")]
    chunks += [ToolCallChunk(0, args_delta=p) for p in pieces]
    agent = Agent(model=ScriptedModel([chunks]), output_type=Profile)
    async with agent.run_stream("who?") as run:
        ages = [vars(o)["age"] for o in [o async for o in run.stream_output()]]
    assert 3 not in ages
    assert ages[-1] == 36


async def test_an_event_sink_streams_by_default_and_stream_false_asks_for_a_whole_response() -> None:
    calls: list[str] = []

    async def whole(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append("request")
        return text_response("whole answer")

    async def streamed(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        calls.append("request_stream")
        yield "streamed "
        yield "answer"

    agent = Agent(FunctionModel(whole, stream_function=streamed))
    seen: list[AgentEvent] = []

    async def sink(event: AgentEvent) -> None:
        seen.append(event)

    assert (await agent.run("hi", event_sink=sink)).output == "streamed answer"
    assert [e.delta for e in seen if isinstance(e, TextDelta)] == ["streamed ", "answer"]
    seen.clear()
    assert (await agent.run("hi", event_sink=sink, stream=False)).output == "whole answer"
    assert not any(isinstance(e, TextDelta) for e in seen)  # no deltas, every other event still arrives
    assert isinstance(seen[0], RunStarted) and isinstance(seen[-1], RunFinished)
    assert calls == ["request_stream", "request"]
