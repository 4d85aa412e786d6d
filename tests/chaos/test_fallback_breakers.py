"""Fallback chains and circuit breakers against real fault servers: a down primary, every model down, a primary
that fails after its stream started, an unusable answer, and a breaker that opens, fails fast, probes and closes.
"""

from __future__ import annotations

import pytest

from miniagent.errors import AllModelsFailed, CircuitOpen, ModelAPIError, ModelHTTPError, ModelOverloaded
from miniagent.events import CircuitStateChanged, FallbackUsed, RunStarted, StreamRestarted
from miniagent.resilience import BreakerRegistry, FallbackModel, RetryPolicy
from miniagent.store import SQLStore
from miniagent.testing import RecordingClock

from ._fault_anthropic import ANTHROPIC
from ._fault_openai import OPENAI
from ._server import Call, Cut, FaultServer, Status, Text, ToolCalls, refused_url
from .conftest import (
    ANSWER,
    Outcome,
    after_words,
    anthropic_model,
    assert_failed,
    assert_recovered,
    chaos_agent,
    get_weather,
    openai_model,
    run_case,
    weather_then_answer,
)

pytestmark = pytest.mark.anyio

STREAMED = pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
PROMPT = "What is the weather in Paris?"
BACKUP = "Backup: it is sunny and 18 C in Paris today."
TWO = RetryPolicy(max_attempts=2)


def fallbacks(outcome: Outcome) -> list[FallbackUsed]:
    return [e for e in outcome.events if isinstance(e, FallbackUsed)]


def circuit(outcome: Outcome) -> list[tuple[str, str]]:
    return [(e.from_state, e.to_state) for e in outcome.events if isinstance(e, CircuitStateChanged)]


@STREAMED
async def test_down_primary_falls_back_to_a_good_model(
    streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    down = openai_model(refused_url("/v1"), name="primary")
    async with FaultServer(OPENAI, default=Text(BACKUP)) as server:
        good = openai_model(server, name="backup")
        chain = FallbackModel([down, good], retry=TWO, breakers=breakers, clock=clock)
        outcome = await run_case(chaos_agent(chain, clock, breakers), store, PROMPT, streamed=streamed)
    assert_recovered(outcome, BACKUP)
    assert outcome.model_name == good.name  # the answer records which model produced it
    [used] = fallbacks(outcome)
    assert (used.from_model, used.to_model, used.error_type) == (down.name, good.name, "ModelAPIError")
    assert "Could not connect" in used.message and not used.after_stream_start
    assert [r.upstream for r in outcome.retries] == [down.upstream]  # the primary was retried once first
    assert server.count == 1


@STREAMED
async def test_every_model_down_fails_with_all_models_failed_naming_each(
    streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    down = openai_model(refused_url("/v1"), name="primary")
    async with FaultServer(ANTHROPIC, [Status(529)] * 10) as server:
        overloaded = anthropic_model(server, name="claude-backup")
        chain = FallbackModel([down, overloaded], retry=TWO, breakers=breakers, clock=clock)
        outcome = await run_case(chaos_agent(chain, clock, breakers), store, PROMPT, streamed=streamed)
    error = assert_failed(outcome, AllModelsFailed, down.name, overloaded.name, "Could not connect", "529")
    assert isinstance(error, AllModelsFailed)
    assert [(name, type(exc)) for name, exc in error.failures] == [
        (down.name, ModelAPIError),
        (overloaded.name, ModelOverloaded),
    ]
    assert server.count == 2  # each member had its 2 attempts, no more
    assert len(outcome.retries) == 2


async def test_fallback_after_the_stream_started_never_mixes_two_models(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """The primary streams three words, then its connection breaks, every time; the backup answers whole."""
    async with (
        FaultServer(OPENAI, [Cut(after_words(OPENAI, 3))] * 2, default=Text(ANSWER)) as primary_server,
        FaultServer(ANTHROPIC, default=Text(BACKUP)) as backup_server,
    ):
        primary = openai_model(primary_server, name="primary")
        backup = anthropic_model(backup_server, name="claude-backup")
        chain = FallbackModel([primary, backup], retry=TWO, breakers=breakers, clock=clock)
        outcome = await run_case(chaos_agent(chain, clock, breakers), store, PROMPT, streamed=True)
    assert_recovered(outcome, BACKUP)  # incl. the consumer's text after the last restart == the backup's answer
    assert outcome.model_name == backup.name
    assert (primary_server.count, backup_server.count) == (2, 1)
    [used] = fallbacks(outcome)
    assert used.after_stream_start and used.to_model == backup.name
    restarts = outcome.restarts
    assert [r.model_name for r in restarts] == [primary.name, backup.name]  # its own retry, then the backup
    assert all(r.discarded_chars == len("It is sunny") for r in restarts)
    last = max(i for i, e in enumerate(outcome.consumed) if isinstance(e, StreamRestarted))
    assert "It is" not in outcome.final_step_text()
    assert outcome.consumed[last + 1 :]  # the backup's answer came after the restart


async def test_unusable_answer_moves_the_chain_on(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """The primary keeps calling a tool that does not exist; with `fallback_on_invalid` the backup answers."""
    wrong = ToolCalls((Call("get_wether", '{"city": "Paris"}'),))
    async with (
        FaultServer(OPENAI, default=wrong) as primary_server,
        FaultServer(OPENAI, default=weather_then_answer(OPENAI)) as backup_server,
    ):
        primary = openai_model(primary_server, name="primary")
        backup = openai_model(backup_server, name="backup")
        chain = FallbackModel([primary, backup], retry=TWO, breakers=breakers, clock=clock)
        agent = chaos_agent(chain, clock, breakers, tools=[get_weather])
        outcome = await run_case(agent, store, PROMPT, streamed=False)
    assert_recovered(outcome)
    assert [(f.from_model, f.error_type) for f in fallbacks(outcome)] == [(primary.name, "InvalidModelResponse")] * 2
    assert (primary_server.count, backup_server.count) == (2, 2)  # an unusable answer is not retried on the same model


async def test_breaker_opens_fails_fast_then_probes_and_closes(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    registry = BreakerRegistry(failure_rate=0.5, window=4, min_calls=2, open_s=30.0, clock=clock)
    async with FaultServer(OPENAI, [Status(500)] * 2, default=Text(ANSWER)) as server:
        agent = chaos_agent(openai_model(server), clock, registry, retry=TWO)

        first = await run_case(agent, store, PROMPT, streamed=False)
        assert_failed(first, ModelHTTPError, "500", "circuit breaker")
        assert server.count == 2 and circuit(first) == [("closed", "open")]

        second = await run_case(agent, store, PROMPT, streamed=True)
        error = assert_failed(second, CircuitOpen, "open", "30.0 s")
        assert isinstance(error, CircuitOpen) and error.retry_in_s == 30.0
        assert server.count == 2  # failed fast: the upstream was not called
        assert second.retries == []  # an open breaker is not retried against

        clock.advance(30.0)
        third = await run_case(agent, store, PROMPT, streamed=False)
        assert_recovered(third)
        assert server.count == 3
        assert circuit(third) == [("open", "half-open"), ("half-open", "closed")]
        assert all(e.run_id == next(r.run_id for r in third.events if isinstance(r, RunStarted)) for e in third.events)


async def test_open_breaker_moves_a_fallback_chain_on_without_calling_the_primary(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    registry = BreakerRegistry(failure_rate=0.5, window=4, min_calls=2, open_s=30.0, clock=clock)
    async with (
        FaultServer(OPENAI, [Status(503)] * 2, default=Text(ANSWER)) as primary_server,
        FaultServer(OPENAI, default=Text(BACKUP)) as backup_server,
    ):
        primary = openai_model(primary_server, name="primary")
        backup = openai_model(backup_server, name="backup")
        chain = FallbackModel([primary, backup], retry=TWO, breakers=registry, clock=clock)
        agent = chaos_agent(chain, clock, registry)
        first = await run_case(agent, store, PROMPT, streamed=False)  # the primary fails twice: its breaker opens
        second = await run_case(agent, store, PROMPT, streamed=True)
    assert_recovered(first, BACKUP)
    assert_recovered(second, BACKUP)
    assert [f.error_type for f in fallbacks(second)] == ["CircuitOpen"]
    assert primary_server.count == 2 and backup_server.count == 2
