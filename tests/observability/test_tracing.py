"""Spans after the GenAI semantic conventions, from a run's events: names, attributes and the parent/child tree."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from miniagent import Agent
from miniagent._instrument import store_operation
from miniagent.context import correlation_scope
from miniagent.errors import ModelAPIError, ModelOverloaded, ModelRetry
from miniagent.messages import ModelMessage
from miniagent.models import StreamChunk
from miniagent.models.test import AgentInfo
from miniagent.observability import configure
from miniagent.resilience import FallbackModel, ResilientModel, RetryPolicy
from miniagent.testing import FunctionModel, RecordingClock, ScriptedModel, tool_call_response

from .conftest import Observed, tracer_provider

pytestmark = pytest.mark.anyio


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _attr(span: Any, key: str) -> Any:
    return dict(span.attributes or {})[key]


def _by_op(spans: list[ReadableSpan], op: str) -> list[ReadableSpan]:
    return [s for s in spans if (s.attributes or {}).get("gen_ai.operation.name") == op]


async def test_a_run_with_parallel_tool_calls_and_a_tool_retry_is_one_tree(observed: Observed) -> None:
    model = ScriptedModel(
        [
            tool_call_response(("weather", {"city": "Paris"}), ("clock", {"city": "Paris"}), ("flaky", {})),
            tool_call_response(("flaky", {})),
            "Sunny, 14:00, done.",
        ],
        name="scripted-model",
    )
    agent = Agent(model=model, name="planner")
    weather_started, clock_started = anyio.Event(), anyio.Event()
    flaky_calls = 0

    @agent.tool
    async def weather(city: str) -> str:
        """Weather."""
        weather_started.set()
        await clock_started.wait()  # both tools are in flight at once: they are parallel
        return f"Sunny in {city}"

    @agent.tool
    async def clock(city: str) -> str:
        """Time."""
        clock_started.set()
        await weather_started.wait()
        return f"14:00 in {city}"

    @agent.tool
    async def flaky() -> str:
        """Needs a second try."""
        nonlocal flaky_calls
        flaky_calls += 1
        if flaky_calls == 1:
            raise ModelRetry("try again please")
        return "ok"

    with correlation_scope("req-42"):
        result = await agent.run("Weather and time in Paris?")
    assert result.output == "Sunny, 14:00, done."

    spans = observed.spans()
    run = observed.span("invoke_agent planner")
    assert run.parent is None
    assert run.status.status_code is StatusCode.OK
    attrs = dict(run.attributes or {})
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.agent.name"] == "planner"
    assert attrs["miniagent.run_id"] == result.run_id
    assert attrs["gen_ai.usage.input_tokens"] == result.usage.input_tokens
    assert attrs["gen_ai.usage.output_tokens"] == result.usage.output_tokens

    chats = _by_op(spans, "chat")
    assert [s.name for s in chats] == ["chat scripted-model"] * 3
    assert [_attr(s, "miniagent.step") for s in chats] == [1, 2, 3]
    assert [_attr(s, "gen_ai.response.finish_reasons") for s in chats] == [
        ("tool_call",),
        ("tool_call",),
        ("stop",),
    ]
    for chat in chats:
        assert _attr(chat, "gen_ai.request.model") == "scripted-model"
        assert _attr(chat, "gen_ai.usage.input_tokens") > 0

    tools = _by_op(spans, "execute_tool")
    assert sorted(s.name for s in tools) == [
        "execute_tool clock",
        "execute_tool flaky",
        "execute_tool flaky",
        "execute_tool weather",
    ]
    first_calls = {p.tool_call_id for p in model.calls[1].messages[-1].parts if hasattr(p, "tool_call_id")}
    assert {_attr(s, "gen_ai.tool.call.id") for s in tools} >= first_calls
    # Every model request and tool call is a child of the run; the parallel calls are siblings that overlap.
    assert {_parent(s) for s in chats + tools} == {run.context.span_id}
    w, c = observed.span("execute_tool weather"), observed.span("execute_tool clock")
    assert w.start_time is not None and c.start_time is not None and w.end_time is not None and c.end_time is not None
    assert w.start_time < c.end_time and c.start_time < w.end_time
    # The tool's ModelRetry is an event of that tool's span.
    flaky_spans = sorted((s for s in tools if s.name == "execute_tool flaky"), key=lambda s: s.start_time or 0)
    retry_events = [e for e in flaky_spans[0].events if e.name == "retry_scheduled"]
    assert len(retry_events) == 1
    assert _attr(retry_events[0], "miniagent.retry.cause") == "tool-retry"
    assert not [e for e in flaky_spans[1].events if e.name == "retry_scheduled"]
    # One trace, one correlation id on every span.
    assert {s.context.trace_id for s in spans} == {run.context.trace_id}
    assert {_attr(s, "miniagent.correlation_id") for s in spans} == {"req-42"}
    assert not trace.get_current_span().is_recording()  # the run's context was detached


async def test_each_model_request_attempt_is_its_own_span() -> None:
    provider, exporter = tracer_provider()
    configure(logs=False, metrics=False, tracer_provider=provider)
    clock = RecordingClock()
    flaky = ScriptedModel(
        [
            ModelOverloaded("the upstream is overloaded (503)", model_name="m", status_code=503),
            ModelAPIError("connection reset", model_name="m"),
            "Hello!",
        ],
        name="m",
    )
    model = ResilientModel(flaky, retry=RetryPolicy(max_attempts=4), breaker=False, clock=clock)
    result = await Agent(model=model, name="a", clock=clock).run("Hi")
    assert result.output == "Hello!"

    spans = list(exporter.get_finished_spans())
    run = next(s for s in spans if s.name == "invoke_agent a")
    chats = sorted(_by_op(spans, "chat"), key=lambda s: _attr(s, "miniagent.attempt"))
    assert [s.name for s in chats] == ["chat m", "chat m", "chat m"]
    assert [_attr(s, "miniagent.attempt") for s in chats] == [1, 2, 3]
    assert {_parent(s) for s in chats} == {run.context.span_id}
    assert [s.status.status_code for s in chats] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    assert [(s.attributes or {}).get("error.type") for s in chats] == ["ModelOverloaded", "ModelAPIError", None]
    retry = next(e for e in chats[0].events if e.name == "retry_scheduled")
    assert _attr(retry, "miniagent.retry.cause") == "model-error"
    assert _attr(retry, "miniagent.retry.delay_s") == clock.sleeps[0]
    assert "gen_ai.usage.input_tokens" in (chats[2].attributes or {})
    assert "gen_ai.usage.input_tokens" not in (chats[0].attributes or {})


async def test_a_stream_cut_after_output_is_retried_in_a_new_attempt_span() -> None:
    provider, exporter = tracer_provider()
    configure(logs=False, metrics=False, tracer_provider=provider)
    attempts = 0

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[StreamChunk | str]:
        nonlocal attempts
        attempts += 1
        yield "Hel"
        if attempts == 1:
            raise ModelAPIError("the connection dropped", model_name="streamer")
        yield "lo!"

    clock = RecordingClock()
    model = ResilientModel(FunctionModel(stream_function=stream, name="streamer"), breaker=False, clock=clock)
    async with Agent(model=model, name="s", clock=clock).run_stream("Hi") as run:
        async for _ in run.events():
            pass
        result = await run.get_result()
    assert result.output == "Hello!"

    spans = list(exporter.get_finished_spans())
    chats = sorted(_by_op(spans, "chat"), key=lambda s: _attr(s, "miniagent.attempt"))
    # The retry and the stream restart report one failure: two attempts, not three.
    assert [_attr(s, "miniagent.attempt") for s in chats] == [1, 2]
    assert chats[0].status.status_code is StatusCode.ERROR
    assert {e.name for e in chats[0].events} >= {"retry_scheduled"}
    assert {e.name for e in chats[1].events} >= {"stream_restarted", "attempt_restarted"}
    assert "gen_ai.response.time_to_first_chunk" in (chats[0].attributes or {})
    assert chats[1].status.status_code is StatusCode.UNSET
    assert _attr(chats[1], "gen_ai.usage.output_tokens") > 0


async def test_a_fallback_opens_an_attempt_span_for_the_next_model() -> None:
    provider, exporter = tracer_provider()
    configure(logs=False, metrics=False, tracer_provider=provider)
    primary = ScriptedModel([ModelAPIError("bad gateway", model_name="primary", retryable=False)], name="primary")
    backup = ScriptedModel(["from the backup"], name="backup")
    model = FallbackModel([primary, backup], retry=None, breakers=False)
    result = await Agent(model=model, name="f").run("Hi")
    assert result.output == "from the backup"

    chats = sorted(_by_op(list(exporter.get_finished_spans()), "chat"), key=lambda s: _attr(s, "miniagent.attempt"))
    assert [s.name for s in chats][-1] == "chat backup"
    assert chats[0].status.status_code is StatusCode.ERROR
    assert _attr(chats[0], "error.type") == "ModelAPIError"
    fallback = next(e for s in chats for e in s.events if e.name == "fallback_used")
    assert _attr(fallback, "miniagent.fallback.to_model") == "backup"
    assert (chats[-1].attributes or {})["gen_ai.response.model"] == "backup"


async def test_a_failed_run_ends_its_spans_with_an_error_status() -> None:
    provider, exporter = tracer_provider()
    configure(logs=False, metrics=False, tracer_provider=provider)
    model = ScriptedModel([ModelAPIError("invalid request", model_name="m", retryable=False)], name="m")
    with pytest.raises(ModelAPIError):
        await Agent(model=model, name="doomed", retry=None).run("Hi")

    spans = {s.name: s for s in exporter.get_finished_spans()}
    run, chat = spans["invoke_agent doomed"], spans["chat m"]
    assert run.status.status_code is StatusCode.ERROR and chat.status.status_code is StatusCode.ERROR
    assert _attr(run, "error.type") == "ModelAPIError"
    assert "invalid request" in (run.status.description or "")
    assert [e.name for e in run.events] == ["exception"]
    assert _parent(chat) == run.context.span_id
    assert not trace.get_current_span().is_recording()


async def test_a_cancelled_run_ends_its_open_tool_span() -> None:
    provider, exporter = tracer_provider()
    configure(logs=False, metrics=False, tracer_provider=provider)
    agent = Agent(model=ScriptedModel([tool_call_response(("hang", {}))]), name="c")
    started = anyio.Event()

    @agent.tool
    async def hang() -> str:
        """Never returns."""
        started.set()
        await anyio.sleep_forever()
        return "never"

    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.run, "Go")
        await started.wait()
        tg.cancel_scope.cancel()

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["invoke_agent c"].status.status_code is StatusCode.ERROR
    assert (spans["invoke_agent c"].attributes or {})["error.type"] == "cancelled"
    assert spans["execute_tool hang"].status.status_code is StatusCode.ERROR
    assert _parent(spans["execute_tool hang"]) == spans["invoke_agent c"].context.span_id


async def test_content_is_recorded_only_when_enabled() -> None:
    async def run(record: bool) -> dict[str, ReadableSpan]:
        provider, exporter = tracer_provider()
        with configure(logs=False, metrics=False, tracer_provider=provider, record_content=record):
            agent = Agent(model=ScriptedModel([tool_call_response(("echo", {"text": "ping"})), "pong"]), name="e")

            @agent.tool
            def echo(text: str) -> str:
                """Echo."""
                return f"echo {text}"

            await agent.run("say ping")
        return {s.name: s for s in exporter.get_finished_spans()}

    content_keys = {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
    }
    off = await run(False)
    assert not any(content_keys & set(s.attributes or {}) for s in off.values())
    on = await run(True)
    run_attrs = on["invoke_agent e"].attributes or {}
    assert json.loads(str(run_attrs["gen_ai.input.messages"]))[0]["parts"][0]["content"] == "say ping"
    assert "pong" in str(run_attrs["gen_ai.output.messages"])
    tool_attrs = on["execute_tool echo"].attributes or {}
    assert json.loads(str(tool_attrs["gen_ai.tool.call.arguments"])) == {"text": "ping"}
    assert tool_attrs["gen_ai.tool.call.result"] == "echo ping"
    chats = [s for s in on.values() if s.name.startswith("chat")]
    assert chats and all("gen_ai.output.messages" in (s.attributes or {}) for s in chats)


async def test_store_operations_nest_under_the_current_span(observed: Observed) -> None:
    agent = Agent(model=ScriptedModel([tool_call_response(("save", {})), "saved"]), name="st")

    @agent.tool
    def save() -> str:
        """Writes."""
        with store_operation("append", thread_id="t-1", rows=2):
            pass
        return "ok"

    await agent.run("save it")
    store = observed.span("store.append")
    assert _parent(store) == observed.span("execute_tool save").context.span_id
    attrs = store.attributes or {}
    assert attrs["db.operation.name"] == "append"
    assert attrs["miniagent.store.thread_id"] == "t-1" and attrs["miniagent.store.rows"] == 2
    assert attrs["miniagent.run_id"] == (observed.span("invoke_agent st").attributes or {})["miniagent.run_id"]


async def test_a_failing_store_operation_marks_its_span(observed: Observed) -> None:
    with pytest.raises(RuntimeError), store_operation("load_thread"):
        raise RuntimeError("db down, password=hunter2hunter2")
    span = observed.span("store.load_thread")
    assert span.status.status_code is StatusCode.ERROR
    assert "hunter2" not in (span.status.description or "")
    assert _attr(span, "error.type") == "RuntimeError"


async def test_a_stored_run_traces_its_store_writes(observed: Observed, tmp_path: Any) -> None:
    from miniagent.store import SQLStore

    store = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    try:
        agent = Agent(model=ScriptedModel(["Hi!"]), name="persisted", store=store)
        result = await agent.run("Hello", thread_id=None, user_id="alice")
    finally:
        await store.close()
    run = observed.span("invoke_agent persisted")
    store_spans = [s for s in observed.spans() if s.name.startswith("store.")]
    in_run = [s for s in store_spans if (s.attributes or {}).get("miniagent.run_id") == result.run_id]
    assert in_run, [s.name for s in store_spans]
    assert {s.context.trace_id for s in in_run} == {run.context.trace_id}
    assert _attr(run, "gen_ai.conversation.id") == result.thread_id
    assert _attr(run, "miniagent.user_id") != "alice"  # hashed by default


async def test_an_agent_called_from_a_tool_nests_under_that_tool(observed: Observed) -> None:
    inner = Agent(model=ScriptedModel(["inner answer"]), name="inner")
    outer = Agent(model=ScriptedModel([tool_call_response(("ask", {})), "outer answer"]), name="outer")

    @outer.tool
    async def ask() -> str:
        """Delegates."""
        return (await inner.run("question")).output

    await outer.run("go")
    assert _parent(observed.span("invoke_agent inner")) == observed.span("execute_tool ask").context.span_id


def test_tracing_off_imports_no_opentelemetry() -> None:
    code = (
        "import sys, json\n"
        "from miniagent import Agent\n"
        "from miniagent.observability import configure\n"
        "from miniagent.testing import ScriptedModel\n"
        "h = configure(logs=False)\n"
        "Agent(model=ScriptedModel(['ok'])).run_sync('hi')\n"
        "print(json.dumps([h.tracing, sorted(m for m in sys.modules if m.startswith('opentelemetry'))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [False, []]
