from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from miniagent import Agent, AgentEvent, ModelResponse, RunFailed, RunFinished, TextDelta
from miniagent.errors import (
    CircuitOpen,
    ModelAPIError,
    ModelAuthError,
    ModelOverloaded,
    ModelRateLimited,
    ModelTimeout,
    RunTimeout,
    UserError,
)
from miniagent.events import (
    CircuitStateChanged,
    ModelRequestStarted,
    RetryScheduled,
    StreamRestarted,
    add_event_handler,
)
from miniagent.messages import ModelMessage, TextPart
from miniagent.models import (
    Model,
    ModelRequestParameters,
    ModelSettings,
    StreamChunk,
    StreamDone,
    StreamReset,
    TextChunk,
)
from miniagent.resilience import BreakerRegistry, CircuitBreaker, FallbackModel, ResilientModel, RetryPolicy
from miniagent.testing import AgentInfo, FunctionModel, ManualClock, RecordingClock, ScriptedModel

pytestmark = pytest.mark.anyio


def overloaded() -> ModelOverloaded:
    return ModelOverloaded("The upstream is overloaded.", model_name="scripted", status_code=503)


async def collect(agent: Agent[None, str], prompt: str = "hi") -> list[AgentEvent]:
    events: list[AgentEvent] = []

    async def sink(event: AgentEvent) -> None:
        events.append(event)

    await agent.run(prompt, event_sink=sink)
    return events


async def test_agents_retry_transient_model_errors_by_default() -> None:
    clock = RecordingClock()
    model = ScriptedModel([overloaded(), ModelTimeout("Too slow.", model_name="scripted"), "Hello!"])
    events = await collect(Agent(model=model, clock=clock))
    assert isinstance(events[-1], RunFinished) and events[-1].output == "Hello!"
    assert len(model.calls) == 3
    retries = [e for e in events if isinstance(e, RetryScheduled)]
    assert [(r.cause, r.attempt, r.error_type, r.upstream, r.step) for r in retries] == [
        ("model-error", 1, "ModelOverloaded", model.upstream, 1),
        ("model-error", 2, "ModelTimeout", model.upstream, 1),
    ]
    assert [r.delay_s for r in retries] == clock.sleeps
    assert 0.5 <= clock.sleeps[0] <= 1.5  # the default policy's first decorrelated delay
    assert 0.5 <= clock.sleeps[1] <= 3 * clock.sleeps[0]
    assert retries[0].message == "The upstream is overloaded."
    # Each retry is announced before its wait, within the same step.
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("RetryScheduled") < kinds.index("ModelResponseReceived")
    assert kinds.count("ModelRequestStarted") == 1


async def test_attempts_are_counted_once_and_the_last_error_says_so() -> None:
    model = ScriptedModel([overloaded() for _ in range(4)])
    with pytest.raises(ModelOverloaded, match=r"gave up after 4 attempts") as info:
        await Agent(model=model, clock=RecordingClock()).run("hi")
    assert len(model.calls) == 4
    assert info.value.messages  # a run error keeps the run's messages


async def test_a_resilient_model_is_not_wrapped_twice() -> None:
    clock = RecordingClock()
    model = ScriptedModel([overloaded(), overloaded()])
    resilient = ResilientModel(model, retry=RetryPolicy(max_attempts=2), breaker=False, clock=clock)
    with pytest.raises(ModelOverloaded):
        await Agent(model=resilient, clock=clock).run("hi")
    assert len(model.calls) == 2  # not 2 x 4


async def test_what_is_not_retryable_fails_at_once() -> None:
    auth = ScriptedModel([ModelAuthError("Invalid key.", model_name="m", status_code=401)])
    with pytest.raises(ModelAuthError, match=r"^Invalid key\.$"):
        await Agent(model=auth, clock=RecordingClock()).run("hi")
    bug = ScriptedModel([RuntimeError("a bug in the model")])
    with pytest.raises(RuntimeError):
        await Agent(model=bug, clock=RecordingClock()).run("hi")
    assert len(auth.calls) == len(bug.calls) == 1


async def test_retry_after_is_honoured_and_a_too_long_one_is_not_waited_out() -> None:
    clock = RecordingClock()
    model = ScriptedModel([ModelRateLimited("Slow down.", model_name="m", retry_after_s=7.0), "ok"])
    assert (await Agent(model=model, clock=clock).run("hi")).output == "ok"
    assert clock.sleeps == [7.0]
    clock = RecordingClock()
    model = ScriptedModel([ModelRateLimited("Slow down.", model_name="m", retry_after_s=600.0)])
    with pytest.raises(ModelRateLimited, match="asked to wait 600.0 s, longer than `max_retry_after_s`"):
        await Agent(model=model, clock=clock).run("hi")
    assert clock.sleeps == [] and len(model.calls) == 1


async def test_the_retry_deadline_is_measured_on_the_injected_clock() -> None:
    clock = RecordingClock()
    policy = RetryPolicy(max_attempts=10, base_delay_s=0.6, max_delay_s=0.6, deadline_s=1.0)
    model = ScriptedModel([overloaded(), overloaded()])
    with pytest.raises(ModelOverloaded, match="retry deadline of 1 s"):
        await Agent(model=model, clock=clock, retry=policy).run("hi")
    assert clock.sleeps == [0.6] and len(model.calls) == 2


async def test_retry_none_disables_retries() -> None:
    model = ScriptedModel([overloaded()])
    with pytest.raises(ModelOverloaded, match=r"^The upstream is overloaded\.$"):
        await Agent(model=model, retry=None).run("hi")


def cut_then(*texts: str, cut_after: int = 1, cuts: int = 1) -> FunctionModel:
    """Streams `texts`; the first `cuts` attempts break off after `cut_after` pieces."""
    calls = 0

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        nonlocal calls
        calls += 1
        for i, text in enumerate(texts):
            if calls <= cuts and i == cut_after:
                raise ModelAPIError("The stream was cut after 1 event.", model_name="function")
            yield text

    return FunctionModel(stream_function=stream)


async def test_a_cut_stream_is_retried_and_the_consumer_never_sees_mixed_output() -> None:
    clock = RecordingClock()
    agent = Agent(model=cut_then("Hel", "lo ", "world"), clock=clock)
    seen: list[tuple[str, str]] = []
    async for event in agent.run_stream_events("hi"):
        if isinstance(event, TextDelta):
            seen.append(("delta", event.delta))
        elif isinstance(event, StreamRestarted):
            seen.append(("restart", f"{event.discarded_chars} {event.model_name} {event.reason}"))
        elif isinstance(event, RetryScheduled):
            seen.append(("retry", event.cause))
        elif isinstance(event, RunFinished):
            seen.append(("output", event.output))
    assert seen == [
        ("delta", "Hel"),
        ("retry", "model-error"),
        ("restart", "3 function The stream was cut after 1 event."),
        ("delta", "Hel"),
        ("delta", "lo "),
        ("delta", "world"),
        ("output", "Hello world"),
    ]
    assert len(clock.sleeps) == 1


async def test_stream_text_restarts_with_the_stream() -> None:
    agent = Agent(model=cut_then("Hel", "lo"), clock=RecordingClock())
    async with agent.run_stream("hi") as run:
        texts = [t async for t in run.stream_text(delta=False)]
        result = await run.get_result()
    assert texts == ["Hel", "Hel", "Hello"]
    assert result.output == "Hello"
    response = result.messages[-1]
    assert isinstance(response, ModelResponse) and response.parts == [TextPart("Hello")]


async def test_a_final_answer_cut_for_good_fails_the_run_instead_of_truncating_it() -> None:
    model = cut_then("The answer ", "is 42.", cuts=2)
    agent = Agent(model=model, clock=RecordingClock(), retry=RetryPolicy(max_attempts=2))
    events: list[AgentEvent] = []
    with pytest.raises(ModelAPIError, match="gave up after 2 attempts"):
        async for event in agent.run_stream_events("hi"):
            events.append(event)
    assert not any(isinstance(e, RunFinished) for e in events)
    assert isinstance(events[-1], RunFailed) and events[-1].error_type == "ModelAPIError"


class NoFinalChunk(Model):
    """Streams text and stops without its `StreamDone`, as a server that closes an SSE stream early."""

    def __init__(self, complete_from_attempt: int) -> None:
        self.attempts = 0
        self.complete_from_attempt = complete_from_attempt

    async def request_stream(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> AsyncIterator[StreamChunk]:
        self.attempts += 1
        yield TextChunk(0, "partial")
        if self.attempts >= self.complete_from_attempt:
            yield TextChunk(0, " and complete")
            yield StreamDone(model_name="no-final-chunk")


async def test_a_stream_that_ends_without_its_final_chunk_is_a_cut() -> None:
    model = NoFinalChunk(complete_from_attempt=2)
    result = await Agent(model=model, clock=RecordingClock()).run("hi", event_sink=_ignore)
    assert result.output == "partial and complete" and model.attempts == 2
    never = NoFinalChunk(complete_from_attempt=99)
    with pytest.raises(ModelAPIError, match="ended before the response was complete"):
        await Agent(model=never, clock=RecordingClock(), retry=RetryPolicy(max_attempts=2)).run(
            "hi", event_sink=_ignore
        )


async def _ignore(event: AgentEvent) -> None:
    return None


async def test_the_wrapper_yields_a_reset_before_the_retried_stream() -> None:
    model = ResilientModel(cut_then("a", "b"), breaker=False, clock=RecordingClock())
    chunks = [c async for c in model.request_stream([], None, ModelRequestParameters())]
    assert [type(c).__name__ for c in chunks] == ["TextChunk", "StreamReset", "TextChunk", "TextChunk", "StreamDone"]
    reset = chunks[1]
    assert isinstance(reset, StreamReset) and reset.model_name == "function"


async def test_an_open_breaker_fails_fast_without_calling_the_model() -> None:
    clock = RecordingClock()
    registry = BreakerRegistry(min_calls=2, window=2, open_s=30.0, clock=clock)
    model = ScriptedModel([overloaded(), overloaded(), "recovered"])
    agent = Agent(model=model, clock=clock, breakers=registry, retry=RetryPolicy(max_attempts=4))
    events: list[AgentEvent] = []

    async def sink(event: AgentEvent) -> None:
        events.append(event)

    with pytest.raises(ModelOverloaded, match="not retried: the circuit breaker of .* opened"):
        await agent.run("hi", event_sink=sink)
    assert len(model.calls) == 2  # the failure that opened the breaker is not retried
    opened = [e for e in events if isinstance(e, CircuitStateChanged)]
    assert [(e.to_state, e.run_id) for e in opened] == [("open", events[0].run_id)]
    with pytest.raises(CircuitOpen, match="circuit breaker of .* is open") as info:
        await agent.run("again")
    assert len(model.calls) == 2  # refused without a call
    assert info.value.upstream == model.upstream and info.value.retry_in_s == 30.0
    clock.advance(30.0)
    assert (await agent.run("later")).output == "recovered"  # the probe succeeds and closes it
    assert registry.get(model.upstream).state == "closed"


async def test_only_upstream_failures_count_against_the_breaker() -> None:
    breaker = CircuitBreaker("x", min_calls=1, window=1)
    model = ScriptedModel([ModelAuthError("Invalid key.", model_name="m", status_code=401)])
    with pytest.raises(ModelAuthError):
        await Agent(model=ResilientModel(model, breaker=breaker)).run("hi")
    assert breaker.state == "closed"


async def test_retries_outside_a_run_reach_the_process_handlers() -> None:
    seen: list[AgentEvent] = []
    remove = add_event_handler(seen.append)
    try:
        model = ResilientModel(ScriptedModel([overloaded(), "ok"]), breaker=False, clock=RecordingClock())
        response = await model.request([], None, ModelRequestParameters())
    finally:
        remove()
    assert response.text == "ok"
    assert [(type(e).__name__, getattr(e, "run_id", None)) for e in seen] == [("RetryScheduled", "")]


async def test_the_wrapper_delegates_the_model_contract() -> None:
    inner = ScriptedModel(["ok"], name="inner")
    model = ResilientModel(inner, breaker=False)
    assert (model.name, model.upstream, model.supports_streaming) == ("inner", inner.upstream, True)
    assert repr(model) == "ResilientModel(ScriptedModel('inner'))"
    with pytest.raises(NotImplementedError):
        model.count_tokens([])
    await model.aclose()
    with pytest.raises(UserError, match="wraps a Model"):
        ResilientModel("local")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="RetryPolicy"):
        ResilientModel(inner, retry=3)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="breaker"):
        ResilientModel(inner, breaker="yes")  # type: ignore[arg-type]


async def test_step_timeout_ends_the_run_with_the_step_stage() -> None:
    clock = ManualClock()
    requested = anyio.Event()

    async def slow(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        requested.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    agent = Agent(model=FunctionModel(slow), clock=clock, step_timeout=5.0)
    errors: list[RunTimeout] = []

    async def run() -> None:
        try:
            await agent.run("go", timeout=60)
        except RunTimeout as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await requested.wait()
        clock.advance(5.0)
    assert len(errors) == 1
    assert (errors[0].stage, errors[0].timeout_s) == ("step", 5.0)
    assert "Step 1" in str(errors[0]) and "step timeout of 5.0 s" in str(errors[0])


async def test_contradictory_timeouts_are_rejected_up_front() -> None:
    with pytest.raises(UserError, match="step_timeout"):
        Agent(model=ScriptedModel([]), step_timeout=0)
    with pytest.raises(UserError, match="longer than `step_timeout`"):
        Agent(model=ScriptedModel([]), step_timeout=10, model_settings=ModelSettings(timeout_s=30))
    with pytest.raises(UserError, match="shorter than one request's timeout"):
        Agent(model=ScriptedModel([]), retry=RetryPolicy(deadline_s=5), model_settings=ModelSettings(timeout_s=30))
    with pytest.raises(UserError, match="`retry` must be a RetryPolicy"):
        Agent(model=ScriptedModel([]), retry=3)  # type: ignore[call-overload]
    with pytest.raises(UserError, match="`breakers`"):
        Agent(model=ScriptedModel([]), breakers=True)  # type: ignore[call-overload]
    with pytest.raises(UserError, match="last_good_cache"):
        Agent(model=ScriptedModel([]), last_good_cache={})  # type: ignore[call-overload]
    agent = Agent(model=ScriptedModel([]), step_timeout=30)
    with pytest.raises(UserError, match="shorter than the agent's `step_timeout`"):
        await agent.run("hi", timeout=10)


async def test_the_run_reports_the_wrapped_models_name() -> None:
    model = ScriptedModel(["ok"], name="plain")
    events = await collect(Agent(model=model))
    started = [e for e in events if isinstance(e, ModelRequestStarted)]
    assert started[0].model_name == "plain"
    assert isinstance(events[-1], RunFinished)


async def test_a_fallback_chain_is_not_wrapped_again() -> None:
    clock = RecordingClock()
    model = ScriptedModel([overloaded(), overloaded()])
    chain = FallbackModel([model], retry=RetryPolicy(max_attempts=2), breakers=False, clock=clock)
    agent = Agent(model=chain, clock=clock)
    with pytest.raises(ModelAPIError):
        await agent.run("hi")
    assert len(model.calls) == 2
