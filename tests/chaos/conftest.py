"""Chaos-suite fixtures: models pointed at fault servers, a SQLite store, and one helper that runs a case.

`run_case` runs an agent (streamed or not) under a hang guard and reads back what the store kept.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from miniagent import Agent, ModelSettings, Tool
from miniagent.events import (
    AgentEvent,
    RetryScheduled,
    RunStarted,
    StreamRestarted,
    TextDelta,
    add_event_handler,
)
from miniagent.messages import ModelMessage, ModelRequest, ModelResponse, UserPromptPart
from miniagent.models import Model
from miniagent.models.anthropic import AnthropicModel
from miniagent.models.openai_chat import OpenAIChatModel
from miniagent.resilience import DEFAULT_RETRY, BreakerRegistry, RetryPolicy
from miniagent.store import RunRecord, SQLStore
from miniagent.testing import RecordingClock
from miniagent.tools import ToolFunc

from ._fault_anthropic import ANTHROPIC
from ._fault_openai import OPENAI
from ._server import Call, Dialect, FaultServer, Reply, Text, ToolCalls

HANG_GUARD_S = 30.0
"""Outer limit of every case: a hang guard, not a performance assertion (cases take milliseconds)."""

ANSWER = "It is sunny and 18 C in Paris today."
"""The final answer the fault servers give by default."""

WEATHER_CALL = Call("get_weather", '{"city": "Paris"}', id="call_weather")


def weather_then_answer(dialect: Dialect, answer: str = ANSWER) -> Callable[[Any], Reply]:
    """A server default: a `get_weather` call first, then `answer` once the request carries the tool result."""

    def reply(body: Any) -> Reply:
        return Text(answer) if dialect.has_tool_results(body) else ToolCalls((WEATHER_CALL,))

    return reply


def after_words(dialect: Dialect, words: int) -> int:
    """How many stream events carry the first `words` words of a text answer (Anthropic opens with two more)."""
    return words if dialect is OPENAI else words + 2


def after_arg_pieces(dialect: Dialect, pieces: int) -> int:
    """How many stream events carry the first `pieces` argument pieces of one tool call (after its opening event)."""
    return 1 + pieces if dialect is OPENAI else 2 + pieces


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Sunny, 18 C in {city}"


def openai_model(server: FaultServer | str, *, timeout_s: float = 10.0, name: str = "fault-model") -> OpenAIChatModel:
    """A Chat Completions model pointed at a fault server (or at a URL such as `refused_url('/v1')`)."""
    base_url = server if isinstance(server, str) else server.url("/v1")
    return OpenAIChatModel(
        name, base_url=base_url, api_key="sk-chaos", provider="openai-compatible", timeout_s=timeout_s
    )


def anthropic_model(server: FaultServer | str, *, name: str = "claude-fault") -> AnthropicModel:
    """An Anthropic model pointed at a fault server."""
    base_url = server if isinstance(server, str) else server.url()
    return AnthropicModel(name, base_url=base_url, api_key="sk-ant-chaos")


def model_for(server: FaultServer, *, timeout_s: float = 10.0) -> Model:
    """The provider model that speaks `server`'s dialect (the Anthropic model's timeout comes from its settings)."""
    return openai_model(server, timeout_s=timeout_s) if server.dialect is OPENAI else anthropic_model(server)


@pytest.fixture
def clock() -> RecordingClock:
    """The agent's clock: retry delays are recorded (`clock.sleeps`) and pass at once."""
    return RecordingClock()


@pytest.fixture
def breakers(clock: RecordingClock) -> BreakerRegistry:
    """A breaker registry of the test's own (the process-wide one would carry state from test to test)."""
    return BreakerRegistry(clock=clock)


def chaos_agent(
    model: Model,
    clock: RecordingClock,
    breakers: BreakerRegistry,
    *,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    tools: Sequence[ToolFunc | Tool[Any]] = (),
    timeout_s: float | None = None,
    **options: Any,
) -> Agent[None, str]:
    """An agent on `model` with the test's clock and breakers; `timeout_s` sets each request's timeout."""
    settings = ModelSettings(timeout_s=timeout_s) if timeout_s is not None else None
    return Agent(
        model,
        instructions="Answer about the weather.",
        tools=tools,
        retry=retry,
        clock=clock,
        breakers=breakers,
        model_settings=settings,
        **options,
    )


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per session; each test gets a copy (migrating takes ~0.2 s, copying ~1 ms)."""
    path = tmp_path_factory.mktemp("chaos-template") / "template.db"

    async def migrate() -> None:
        opened = await SQLStore.open(f"sqlite+aiosqlite:///{path}", migrate=True)
        await opened.close()

    anyio.run(migrate)
    return path


@pytest.fixture
async def store(tmp_path: Path, migrated_db: Path) -> AsyncIterator[SQLStore]:
    """A migrated SQLite store of the test's own, in its temp dir."""
    path = tmp_path / "chaos.db"
    shutil.copyfile(migrated_db, path)
    opened = await SQLStore.open(f"sqlite+aiosqlite:///{path}", migrate=False)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def seen() -> Iterator[list[AgentEvent]]:
    """Every event of every run during the test, through the process-wide handlers (streamed or not)."""
    events: list[AgentEvent] = []
    remove = add_event_handler(events.append)
    try:
        yield events
    finally:
        remove()


@dataclass
class Outcome:
    """What a case ended with, and what the store kept of it."""

    prompt: str
    output: str | None
    error: BaseException | None
    events: list[AgentEvent]
    stored: list[ModelMessage]
    run: RunRecord | None
    streamed: bool
    consumed: list[AgentEvent] = field(default_factory=list)
    """The events the consumer read from the stream, in order (streamed runs)."""
    model_name: str | None = None
    """The model that produced the final answer (`RunResult.model_name`), when the run succeeded."""

    @property
    def deltas(self) -> list[TextDelta]:
        """The `TextDelta`s the consumer received."""
        return [e for e in self.consumed if isinstance(e, TextDelta)]

    @property
    def retries(self) -> list[RetryScheduled]:
        """The model-error retries scheduled."""
        return [e for e in self.events if isinstance(e, RetryScheduled) and e.cause == "model-error"]

    @property
    def delays(self) -> list[float]:
        """The delays of the model-error retries, in order."""
        return [e.delay_s for e in self.retries]

    @property
    def restarts(self) -> list[StreamRestarted]:
        """The stream restarts the consumer was told of."""
        return [e for e in self.events if isinstance(e, StreamRestarted)]

    def final_step_text(self) -> str:
        """The text the consumer received for the last step, after its last `StreamRestarted`."""
        if not self.deltas:
            return ""
        step = self.deltas[-1].step
        last_restart = max(
            (i for i, e in enumerate(self.consumed) if isinstance(e, StreamRestarted) and e.step == step), default=-1
        )
        return "".join(
            e.delta for e in self.consumed[last_restart + 1 :] if isinstance(e, TextDelta) and e.step == step
        )


async def run_case(agent: Agent[None, str], store: SQLStore, prompt: str, *, streamed: bool) -> Outcome:
    """Run `agent` on `prompt` in a new stored thread, under the hang guard; never raises the run's error.

    Streamed runs are read through `agent.run_stream(...).events()`, as a consumer would; the other runs use
    `agent.run`. The events of both come from a process-wide handler, so they are the same kind of record.
    """
    thread = await store.create_thread()
    events: list[AgentEvent] = []
    remove = add_event_handler(events.append)
    output: str | None = None
    model_name: str | None = None
    error: BaseException | None = None
    consumed: list[AgentEvent] = []
    try:
        with anyio.fail_after(HANG_GUARD_S):
            try:
                if streamed:
                    async with agent.run_stream(prompt, thread_id=thread.id, store=store) as run:
                        async for event in run.events():
                            consumed.append(event)
                        result = await run.get_result()
                else:
                    result = await agent.run(prompt, thread_id=thread.id, store=store)
                output, model_name = result.output, result.model_name
            except Exception as exc:  # the case's outcome, asserted by the test
                error = exc
    finally:
        remove()
    run_id = next((e.run_id for e in events if isinstance(e, RunStarted)), None)
    record = await store.get_run(run_id) if run_id is not None else None
    stored = await store.messages(thread.id)
    return Outcome(prompt, output, error, events, stored, record, streamed, consumed, model_name)


def assert_recovered(outcome: Outcome, answer: str = ANSWER) -> None:
    """The run gave `answer`, and the thread holds the user's message and that answer; the run is `succeeded`."""
    assert outcome.error is None, f"the run failed: {type(outcome.error).__name__}: {outcome.error}"
    assert outcome.output == answer
    assert_user_message_kept(outcome)
    last = outcome.stored[-1]
    assert isinstance(last, ModelResponse) and last.text == answer
    assert outcome.run is not None and outcome.run.status == "succeeded"
    if outcome.streamed:
        # No duplicated or mixed deltas: what the consumer got for the answer, after any restart, is the answer.
        assert outcome.final_step_text() == answer


def assert_failed(outcome: Outcome, error_type: type[BaseException], *needles: str) -> BaseException:
    """The run failed with `error_type` whose message names each of `needles`; the user's message was kept."""
    error = outcome.error
    assert error is not None, f"the run succeeded with {outcome.output!r}"
    assert isinstance(error, error_type), f"expected {error_type.__name__}, got {type(error).__name__}: {error}"
    text = str(error)
    for needle in needles:
        assert needle in text, f"{needle!r} not in the error: {text}"
    assert "JSONDecodeError" not in type(error).__name__
    assert text != "Connection error."
    assert_user_message_kept(outcome)
    assert outcome.run is not None and outcome.run.status == "failed"
    assert outcome.run.error is not None and type(error).__name__ in outcome.run.error
    return error


def assert_user_message_kept(outcome: Outcome) -> None:
    """The stored thread starts with the user's prompt."""
    prompts = [
        p.content
        for m in outcome.stored
        if isinstance(m, ModelRequest)
        for p in m.parts
        if isinstance(p, UserPromptPart)
    ]
    assert prompts[:1] == [outcome.prompt], f"the user's message is not in the thread: {outcome.stored!r}"


def assert_backoff(delays: list[float], *, base: float, cap: float) -> None:
    """Each delay is within decorrelated jitter's bounds: from `base` to three times the previous one, at most `cap`."""
    previous = base
    for delay in delays:
        assert base <= delay <= min(cap, 3 * previous) + 1e-9, f"delay {delay} outside [{base}, {3 * previous}]"
        previous = delay


__all__ = [
    "ANSWER",
    "ANTHROPIC",
    "HANG_GUARD_S",
    "OPENAI",
    "WEATHER_CALL",
    "after_arg_pieces",
    "after_words",
    "Outcome",
    "RecordingClock",
    "anthropic_model",
    "assert_backoff",
    "assert_failed",
    "assert_recovered",
    "assert_user_message_kept",
    "chaos_agent",
    "get_weather",
    "model_for",
    "openai_model",
    "run_case",
    "weather_then_answer",
]
