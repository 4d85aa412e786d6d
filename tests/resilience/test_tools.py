from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from miniagent import Agent, AgentEvent, ModelResponse, Tool, ToolReturnPart
from miniagent.errors import ToolDefinitionError, UserError
from miniagent.events import CircuitStateChanged, RetryScheduled, ToolCallFinished
from miniagent.messages import ModelRequest
from miniagent.resilience import (
    BreakerRegistry,
    InMemoryLastGoodCache,
    LastGoodCache,
    RetryPolicy,
    args_key,
    describe_age,
)
from miniagent.testing import RecordingClock, ScriptedModel, tool_call_response

pytestmark = pytest.mark.anyio


def call(name: str, **args: object) -> ModelResponse:
    return tool_call_response((name, dict(args)))


async def run(agent: Agent[None, str], prompt: str = "go") -> tuple[list[AgentEvent], list[ToolReturnPart]]:
    events: list[AgentEvent] = []

    async def sink(event: AgentEvent) -> None:
        events.append(event)

    result = await agent.run(prompt, event_sink=sink)
    returns = [
        p for m in result.messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)
    ]
    return events, returns


async def test_an_idempotent_tool_is_retried_by_its_policy() -> None:
    clock = RecordingClock()
    failures = [ConnectionError("reset by peer"), ConnectionError("reset by peer")]
    agent = Agent(model=ScriptedModel([call("fetch", url="u"), "done"]), clock=clock)

    @agent.tool(retry=RetryPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=1.0))
    def fetch(url: str) -> str:
        if failures:
            raise failures.pop()
        return f"page at {url}"

    events, returns = await run(agent)
    assert returns[0].content == "page at u" and returns[0].outcome == "success"
    retries = [e for e in events if isinstance(e, RetryScheduled)]
    assert [(r.cause, r.attempt, r.tool_name, r.upstream, r.error_type) for r in retries] == [
        ("tool-error", 1, "fetch", "tool:fetch", "ConnectionError"),
        ("tool-error", 2, "fetch", "tool:fetch", "ConnectionError"),
    ]
    assert "reset by peer" in retries[0].message
    assert [r.delay_s for r in retries] == clock.sleeps
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [f.outcome for f in finished] == ["success"]  # one call, however many attempts


async def test_retries_exhausted_return_the_error_to_the_model() -> None:
    agent = Agent(model=ScriptedModel([call("fetch", url="u"), "done"]), clock=RecordingClock())

    @agent.tool(retry=RetryPolicy(max_attempts=2, base_delay_s=0.1, max_delay_s=1.0))
    def fetch(url: str) -> str:
        raise ConnectionError("down")

    events, returns = await run(agent)
    assert returns[0].outcome == "error"
    assert returns[0].content == "Error: the tool raised ConnectionError: down"
    assert sum(isinstance(e, RetryScheduled) for e in events) == 1


async def test_retry_on_chooses_which_tool_errors_are_retried() -> None:
    calls = 0
    agent = Agent(model=ScriptedModel([call("lookup", key="k"), "done"]), clock=RecordingClock())

    @agent.tool(retry=RetryPolicy(max_attempts=5, retry_on=lambda exc: isinstance(exc, TimeoutError)))
    def lookup(key: str) -> str:
        nonlocal calls
        calls += 1
        raise KeyError(key)

    _, returns = await run(agent)
    assert calls == 1 and returns[0].outcome == "error"


async def test_a_non_idempotent_tool_is_never_retried() -> None:
    with pytest.raises(ToolDefinitionError, match="not idempotent, so it is never retried"):
        Tool(lambda to: None, name="send_email", retry=RetryPolicy(), idempotent=False)
    calls = 0
    agent = Agent(model=ScriptedModel([call("send_email", to="a@b.c"), "done"]), clock=RecordingClock())

    @agent.tool(idempotent=False)
    def send_email(to: str) -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError("SMTP hiccup")

    _, returns = await run(agent)
    assert calls == 1 and returns[0].outcome == "error"


async def test_a_timed_out_attempt_is_retried() -> None:
    clock = RecordingClock()
    started = anyio.Event()
    attempts = 0
    agent = Agent(model=ScriptedModel([call("slow"), "done"]), clock=clock)

    @agent.tool(timeout=5.0, retry=RetryPolicy(max_attempts=2, base_delay_s=0.1, max_delay_s=0.1))
    async def slow() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            started.set()
            await anyio.sleep_forever()
        return "finally"

    outcome: list[list[ToolReturnPart]] = []

    async def go() -> None:
        outcome.append((await run(agent))[1])

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await started.wait()
        clock.advance(5.0)
    assert outcome[0][0].content == "finally" and attempts == 2
    assert clock.sleeps == [0.1]


async def test_an_open_tool_breaker_answers_without_calling_the_tool() -> None:
    clock = RecordingClock()
    registry = BreakerRegistry(min_calls=2, window=2, open_s=60.0, clock=clock)
    model = ScriptedModel([call("quote", symbol="X"), call("quote", symbol="X"), call("quote", symbol="X"), "done"])
    agent = Agent(model=model, clock=clock, breakers=registry)
    calls = 0

    @agent.tool(breaker=True)
    def quote(symbol: str) -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError("feed down")

    events, returns = await run(agent)
    assert calls == 2
    assert returns[2].outcome == "error"
    assert "'quote' is unavailable" in str(returns[2].content)
    assert "may work again in about 60 s" in str(returns[2].content)
    changes = [e for e in events if isinstance(e, CircuitStateChanged)]
    assert [(c.upstream, c.to_state) for c in changes] == [("tool:quote", "open")]


async def test_a_fallback_tool_answers_with_the_same_arguments() -> None:
    agent = Agent(model=ScriptedModel([call("weather", city="Paris"), "done"]), clock=RecordingClock())

    @agent.tool(fallback="weather_backup")
    def weather(city: str) -> str:
        raise ConnectionError("primary API down")

    @agent.tool
    def weather_backup(city: str) -> str:
        return f"18 C in {city}"

    events, returns = await run(agent)
    assert returns[0].outcome == "fallback" and returns[0].tool_name == "weather"
    assert returns[0].content == (
        "The tool 'weather' failed (the tool raised ConnectionError: primary API down); its fallback tool "
        "'weather_backup' answered: 18 C in Paris"
    )
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [(f.tool_name, f.outcome) for f in finished] == [("weather", "fallback")]


async def test_a_fallback_tool_that_cannot_take_the_arguments_is_not_called() -> None:
    agent = Agent(model=ScriptedModel([call("weather", city="Paris"), "done"]), clock=RecordingClock())

    @agent.tool(fallback="by_coordinates")
    def weather(city: str) -> str:
        raise ConnectionError("down")

    @agent.tool
    def by_coordinates(lat: float, lon: float) -> str:
        raise AssertionError("never called")

    _, returns = await run(agent)
    assert returns[0].outcome == "error"
    assert "does not accept the same arguments" in str(returns[0].content)


async def test_a_failing_fallback_tool_reports_both_failures() -> None:
    agent = Agent(model=ScriptedModel([call("a", x=1), "done"]), clock=RecordingClock())

    @agent.tool(fallback="b")
    def a(x: int) -> str:
        raise ConnectionError("a down")

    @agent.tool
    def b(x: int) -> str:
        raise ConnectionError("b down")

    _, returns = await run(agent)
    assert returns[0].outcome == "error"
    assert str(returns[0].content) == (
        "Error: the tool raised ConnectionError: a down Its fallback tool 'b' failed too: Error: the tool raised "
        "ConnectionError: b down"
    )


async def test_a_fallback_to_a_missing_tool_is_rejected_before_the_run() -> None:
    agent = Agent(model=ScriptedModel([]))

    @agent.tool(fallback="nowhere")
    def a(x: int) -> str:
        return "a"

    with pytest.raises(UserError, match="falls back to 'nowhere', which agent 'agent' does not have"):
        await agent.run("go")


async def test_last_good_answers_with_the_cached_result_and_its_age() -> None:
    cache = InMemoryLastGoodCache()
    up = True
    steps: list[ModelResponse | str] = [call("rates", base="EUR"), "first", call("rates", base="EUR"), "second"]
    steps += [call("rates", base="USD"), "third"]
    agent = Agent(model=ScriptedModel(steps), clock=RecordingClock(), last_good_cache=cache)

    @agent.tool(fallback="last-good")
    def rates(base: str) -> dict[str, float]:
        if not up:
            raise ConnectionError("rates API down")
        return {"USD": 1.08}

    _, returns = await run(agent)
    assert returns[0].outcome == "success" and len(cache) == 1
    # Age the cached value by ten minutes, as if the success had happened then.
    key = args_key({"base": "EUR"})
    found = await cache.get("rates", key, tenant_id=None, user_id=None)
    assert found is not None and found[0] == {"USD": 1.08}
    await cache.put("rates", key, found[0], tenant_id=None, user_id=None, stored_at=time.time() - 600)
    up = False
    events, returns = await run(agent)
    assert returns[0].outcome == "fallback"
    assert returns[0].content == (
        "The tool 'rates' failed just now (the tool raised ConnectionError: rates API down). This is its last good "
        'result for the same arguments, from 10 minutes ago (it may be out of date): {"USD": 1.08}'
    )
    assert [e.outcome for e in events if isinstance(e, ToolCallFinished)] == ["fallback"]
    _, returns = await run(agent)  # other arguments: nothing cached, the error stands
    assert returns[0].outcome == "error"


async def test_last_good_results_are_scoped_to_tenant_and_user() -> None:
    cache = InMemoryLastGoodCache(max_entries=2)
    assert isinstance(cache, LastGoodCache)
    await cache.put("t", "k", 1, tenant_id="a", user_id="u", stored_at=1.0)
    assert await cache.get("t", "k", tenant_id="a", user_id="other") is None
    assert await cache.get("t", "k", tenant_id="b", user_id="u") is None
    assert await cache.get("t", "k", tenant_id="a", user_id="u") == (1, 1.0)
    await cache.put("t", "k2", 2, tenant_id="a", user_id="u", stored_at=2.0)
    await cache.put("t", "k3", 3, tenant_id="a", user_id="u", stored_at=3.0)
    assert len(cache) == 2 and await cache.get("t", "k", tenant_id="a", user_id="u") is None
    with pytest.raises(UserError, match="max_entries"):
        InMemoryLastGoodCache(0)


def test_args_key_and_age() -> None:
    assert args_key({"a": 1, "b": [1, 2]}) == args_key({"b": [1, 2], "a": 1})
    assert args_key({"a": 1}) != args_key({"a": 2})
    assert len(args_key({"a": 1})) == 64
    assert [describe_age(s) for s in (0.4, 1, 59, 61, 3600, 5400, 86400 * 3)] == [
        "0 seconds",
        "1 second",
        "59 seconds",
        "1 minute",
        "1 hour",
        "2 hours",
        "3 days",
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fallback": "last-good", "idempotent": False}, "earlier result cannot stand in"),
        ({"fallback": "f"}, "cannot fall back to itself"),
        ({"fallback": "not a name"}, "another tool's name or 'last-good'"),
        ({"retry": 3}, "must be a RetryPolicy"),
        ({"breaker": "yes"}, "must be True or False"),
    ],
)
def test_bad_tool_policies_are_rejected(kwargs: dict[str, object], match: str) -> None:
    def f(x: int) -> int:
        return x

    with pytest.raises(ToolDefinitionError, match=match):
        Tool(f, **kwargs)  # type: ignore[arg-type]


async def test_a_stored_run_keeps_last_good_results_in_the_store(tmp_path: Path) -> None:
    from miniagent.store import SQLStore

    store = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", migrate=True)
    in_process = InMemoryLastGoodCache()
    up = True
    model = ScriptedModel([call("rates", base="EUR"), "first", call("rates", base="EUR"), "second"])
    agent = Agent(model=model, clock=RecordingClock(), store=store, last_good_cache=in_process)

    @agent.tool(fallback="last-good")
    def rates(base: str) -> dict[str, float]:
        if not up:
            raise ConnectionError("rates API down")
        return {"USD": 1.08}

    try:
        first = await agent.run("go", user_id="alice")
        assert first.output == "first" and len(in_process) == 0  # kept in the store, not in the process
        kept = await store.tool_results().get("rates", args_key({"base": "EUR"}), tenant_id=None, user_id="alice")
        assert kept is not None and kept[0] == {"USD": 1.08}
        up = False
        second = await agent.run("go", user_id="alice", thread_id=first.thread_id)
        returns = [
            p
            for m in second.new_messages()
            if isinstance(m, ModelRequest)
            for p in m.parts
            if isinstance(p, ToolReturnPart)
        ]
        assert returns[0].outcome == "fallback" and '{"USD": 1.08}' in str(returns[0].content)
    finally:
        await store.close()
