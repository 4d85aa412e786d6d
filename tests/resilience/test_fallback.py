from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from miniagent import Agent, AgentEvent, ModelResponse, RunFinished, TextDelta, ToolCallPart
from miniagent.errors import (
    AllModelsFailed,
    ContentFiltered,
    ContextLengthExceeded,
    ModelAPIError,
    ModelAuthError,
    ModelOverloaded,
    ModelRateLimited,
    UserError,
)
from miniagent.events import FallbackUsed, RetryScheduled, StreamRestarted
from miniagent.messages import ModelMessage, TextPart
from miniagent.models import Model, ModelRequestParameters, StreamDone
from miniagent.resilience import BreakerRegistry, FallbackModel, InvalidModelResponse, ResilientModel, RetryPolicy
from miniagent.testing import AgentInfo, FunctionModel, RecordingClock, ScriptedModel, tool_call_response

pytestmark = pytest.mark.anyio


def auth(name: str) -> ModelAuthError:
    return ModelAuthError("Invalid key.", model_name=name, status_code=401)


def overloaded(name: str) -> ModelOverloaded:
    return ModelOverloaded("Overloaded.", model_name=name, status_code=503)


async def run_events(agent: Agent[None, str], *, stream: bool = False) -> tuple[list[AgentEvent], str]:
    events: list[AgentEvent] = []
    if stream:
        async for event in agent.run_stream_events("hi"):
            events.append(event)
    else:

        async def sink(event: AgentEvent) -> None:
            events.append(event)

        await agent.run("hi", event_sink=sink)
    final = events[-1]
    assert isinstance(final, RunFinished)
    return events, str(final.output)


async def test_moves_on_when_a_model_fails_for_good_and_records_who_answered() -> None:
    clock = RecordingClock()
    primary = ScriptedModel([overloaded("primary")] * 4, name="primary")
    backup = ScriptedModel(["From the backup.", "Again from the backup."], name="backup")
    chain = FallbackModel([primary, backup], retry=RetryPolicy(max_attempts=2), breakers=False, clock=clock)
    agent = Agent(model=chain, clock=clock)
    events, output = await run_events(agent)
    assert output == "From the backup."
    assert len(primary.calls) == 2  # retried per member first
    moves = [e for e in events if isinstance(e, FallbackUsed)]
    assert [(m.from_model, m.to_model, m.error_type, m.after_stream_start) for m in moves] == [
        ("primary", "backup", "ModelOverloaded", False)
    ]
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("RetryScheduled") < kinds.index("FallbackUsed")
    result = await Agent(model=chain, clock=clock).run("again")  # the chain is reused: the primary still fails
    assert result.model_name == "backup"


async def test_a_model_that_answers_first_is_named() -> None:
    chain = FallbackModel([ScriptedModel(["Hi."], name="first"), ScriptedModel([], name="second")])
    result = await Agent(model=chain).run("hi")
    assert (result.output, result.model_name, chain.name) == ("Hi.", "first", "first")
    assert chain.upstream == "fallback:first,second"


async def test_every_model_failing_names_each_upstream_and_why() -> None:
    chain = FallbackModel(
        [ScriptedModel([auth("a")], name="a"), ScriptedModel([RuntimeError("boom")], name="b")], breakers=False
    )
    with pytest.raises(AllModelsFailed) as info:
        await Agent(model=chain).run("hi")
    message = str(info.value)
    assert message.splitlines()[:3] == [
        "Every model of the fallback chain failed:",
        "- a: ModelAuthError: Invalid key.",
        "- b: RuntimeError: boom",
    ]
    assert [name for name, _ in info.value.failures] == ["a", "b"]
    assert not info.value.retryable


async def test_an_open_breaker_moves_on_at_once() -> None:
    clock = RecordingClock()
    registry = BreakerRegistry(min_calls=1, window=1, clock=clock)
    primary = ScriptedModel([], name="primary")
    await registry.get(primary.upstream).record_failure()
    chain = FallbackModel([primary, ScriptedModel(["ok"], name="backup")], breakers=registry, clock=clock)
    events, output = await run_events(Agent(model=chain, clock=clock))
    assert output == "ok" and primary.calls == [] and clock.sleeps == []
    moves = [e for e in events if isinstance(e, FallbackUsed)]
    assert [m.error_type for m in moves] == ["CircuitOpen"]


async def test_routes_choose_the_next_model_per_error_class() -> None:
    small = ScriptedModel([ContextLengthExceeded("Too long.", model_name="small", status_code=400)], name="small")
    filtered = ScriptedModel([ContentFiltered("Refused.", model_name="small", status_code=400)], name="filtered")
    long_context = ScriptedModel(["Long answer."], name="long")
    other_provider = ScriptedModel(["Other answer."], name="other")
    never = ScriptedModel([], name="never")
    routes: dict[type[ModelAPIError], list[Model | str]] = {
        ContextLengthExceeded: [long_context],
        ContentFiltered: [other_provider],
    }
    result = await Agent(model=FallbackModel([small, never], routes=routes)).run("hi")
    assert (result.output, result.model_name) == ("Long answer.", "long")
    result = await Agent(model=FallbackModel([filtered, never], routes=routes)).run("hi")
    assert (result.output, result.model_name) == ("Other answer.", "other")
    assert never.calls == []


async def test_a_route_is_matched_by_the_most_specific_class() -> None:
    limited = ScriptedModel([ModelRateLimited("Slow down.", model_name="m", retry_after_s=999.0)], name="limited")
    for_rate = ScriptedModel(["rate route"], name="rate")
    for_any = ScriptedModel([], name="any")
    chain = FallbackModel([limited], routes={ModelAPIError: [for_any], ModelRateLimited: [for_rate]}, breakers=False)
    assert (await Agent(model=chain).run("hi")).output == "rate route"


async def test_strings_are_resolved_through_the_registry() -> None:
    chain = FallbackModel([ScriptedModel([auth("p")], name="p"), "test"])
    result = await Agent(model=chain).run("ping")
    assert result.output == "echo: ping" and result.model_name == "test"
    with pytest.raises(AllModelsFailed, match="- nope:unknown: ModelNotFoundError: Unknown model"):
        await Agent(model=FallbackModel(["nope:unknown"])).run("hi")


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (tool_call_response(("no_such_tool", {})), "called the tool 'no_such_tool', which was not offered"),
        (ModelResponse([ToolCallPart("lookup", "[1, 2]", "c1")]), "arguments for the tool 'lookup' are not a JSON"),
        (ModelResponse([TextPart("  ")]), "the response was empty"),
    ],
)
async def test_an_unusable_response_moves_on(bad: ModelResponse, problem: str) -> None:
    primary = ScriptedModel([bad], name="primary")
    backup = ScriptedModel(["Fine."], name="backup")
    agent = Agent(model=FallbackModel([primary, backup]))

    @agent.tool
    def lookup(key: str) -> str:
        return key

    events, output = await run_events(agent)
    assert output == "Fine."
    move = next(e for e in events if isinstance(e, FallbackUsed))
    assert move.error_type == "InvalidModelResponse" and problem in move.message


async def test_the_last_models_unusable_response_stands_for_the_agent_to_correct() -> None:
    only = ScriptedModel([tool_call_response(("no_such_tool", {})), "Corrected."], name="only")
    result = await Agent(model=FallbackModel([only])).run("hi")
    assert result.output == "Corrected."  # the agent's unknown-tool retry prompt did its work
    first = ScriptedModel([ModelResponse([TextPart("")])], name="first")
    second = ScriptedModel([auth("second")], name="second")
    chain = FallbackModel([first, second], breakers=False)
    response = await chain.request([], None, ModelRequestParameters())
    assert response.text == "" and response.model_name == "first"  # kept, since nothing better came


async def test_fallback_after_the_stream_started_never_mixes_models() -> None:
    async def cut(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "Partial answer from the pri"
        raise ModelAPIError("The stream was cut.", model_name="primary", retryable=False)

    primary = FunctionModel(stream_function=cut, name="primary")
    backup = ScriptedModel([["Whole ", "answer."]], name="backup")
    events, output = await run_events(Agent(model=FallbackModel([primary, backup])), stream=True)
    assert output == "Whole answer."
    trace = [
        (type(e).__name__, getattr(e, "delta", None) or getattr(e, "to_model", None) or getattr(e, "model_name", None))
        for e in events
        if isinstance(e, TextDelta | FallbackUsed | StreamRestarted | RetryScheduled)
    ]
    assert trace == [
        ("TextDelta", "Partial answer from the pri"),
        ("FallbackUsed", "backup"),
        ("StreamRestarted", "backup"),
        ("TextDelta", "Whole "),
        ("TextDelta", "answer."),
    ]
    move = next(e for e in events if isinstance(e, FallbackUsed))
    assert move.after_stream_start
    restart = next(e for e in events if isinstance(e, StreamRestarted))
    assert restart.discarded_chars == len("Partial answer from the pri")
    finished = events[-1]
    assert isinstance(finished, RunFinished)


async def test_streamed_answer_records_the_member() -> None:
    async def no_name(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | StreamDone]:
        yield "Hi."
        yield StreamDone()

    async with Agent(model=FallbackModel([FunctionModel(stream_function=no_name, name="member")])).run_stream(
        "hi"
    ) as run:
        result = await run.get_result()
    response = result.messages[-1]
    assert isinstance(response, ModelResponse) and response.model_name == "member"


async def test_an_unusable_streamed_response_falls_back_and_is_replayed_if_nothing_better_comes() -> None:
    bad = ScriptedModel([tool_call_response(("no_such_tool", {}))], name="bad")
    down = ScriptedModel([auth("down")], name="down")
    chain = FallbackModel([bad, down], breakers=False)
    chunks = [c async for c in chain.request_stream([], None, ModelRequestParameters())]
    kinds = [type(c).__name__ for c in chunks]
    # bad's call streamed, then the chain moved to `down`, which failed: bad's response is replayed after a reset
    assert kinds == ["ToolCallChunk", "StreamDone", "StreamReset", "ToolCallChunk", "StreamDone"]


async def test_members_are_protected_once() -> None:
    inner = ScriptedModel(["ok"], name="inner")
    resilient = ResilientModel(inner, breaker=False)
    chain = FallbackModel([resilient, "test"])
    await chain.request([], None, ModelRequestParameters())
    assert chain.models == [resilient, "test"]
    assert chain._chain[0].resolved is resilient
    assert repr(chain) == "FallbackModel(['inner', 'test'])"
    assert chain.supports_streaming
    await chain.aclose()


def test_bad_chains_are_rejected() -> None:
    with pytest.raises(UserError, match="non-empty list"):
        FallbackModel([])
    with pytest.raises(UserError, match="non-empty list"):
        FallbackModel("local")
    with pytest.raises(UserError, match="model #2"):
        FallbackModel(["local", 3])  # type: ignore[list-item]
    with pytest.raises(UserError, match="error class"):
        FallbackModel(["local"], routes={"429": ["test"]})  # type: ignore[dict-item]
    with pytest.raises(UserError, match="ContextLengthExceeded must be a non-empty list"):
        FallbackModel(["local"], routes={ContextLengthExceeded: []})
    with pytest.raises(UserError, match="RetryPolicy"):
        FallbackModel(["local"], retry=1)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="BreakerRegistry"):
        FallbackModel(["local"], breakers=True)  # type: ignore[arg-type]
    assert issubclass(InvalidModelResponse, ModelAPIError)


async def test_a_streamed_chain_that_fails_entirely_raises_all_models_failed() -> None:
    down = ScriptedModel([auth("down")], name="down")
    chain = FallbackModel(["nope:unknown", down], breakers=False)
    with pytest.raises(AllModelsFailed) as info:
        async for _ in chain.request_stream([], None, ModelRequestParameters()):
            pass
    assert [name for name, _ in info.value.failures] == ["nope:unknown", "down"]


async def test_unusable_responses_can_be_kept_as_they_are() -> None:
    bad = ScriptedModel([ModelResponse([TextPart("")])] * 2, name="bad")
    never = ScriptedModel([], name="never")
    chain = FallbackModel([bad, never], fallback_on_invalid=False)
    assert (await chain.request([], None, ModelRequestParameters())).text == ""
    chunks = [c async for c in chain.request_stream([], None, ModelRequestParameters())]
    assert [type(c).__name__ for c in chunks] == ["TextChunk", "StreamDone"] and never.calls == []
