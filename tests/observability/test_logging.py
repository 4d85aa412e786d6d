"""Structured logs: JSON lines or console, the correlation id and run ids on every line, configure/unconfigure."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from miniagent import Agent
from miniagent.context import correlation_scope, current_correlation_id
from miniagent.errors import UserError
from miniagent.events import event_handlers
from miniagent.observability import configure, configured, hash_user_id, unconfigure
from miniagent.settings import Settings
from miniagent.testing import ManualClock, ScriptedModel, tool_call_response

from .conftest import Observed, tracer_provider

pytestmark = pytest.mark.anyio


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_every_line_and_span_of_a_run_carries_one_correlation_id(observed: Observed) -> None:
    agent = Agent(model=ScriptedModel([tool_call_response(("lookup", {"key": "a"})), "found"]), name="finder")

    @agent.tool
    def lookup(key: str) -> str:
        """Looks up."""
        logging.getLogger("app.tools").info("looking up %s", key)  # a stdlib line from inside the run
        structlog.get_logger("app").info("custom_line", key=key)  # and a structlog one
        return "value"

    start = len(observed.out.getvalue())
    with correlation_scope("corr-7") as correlation:
        result = await agent.run("find a")
    lines = _lines(observed.out.getvalue()[start:])

    events = [line["event"] for line in lines]
    for expected in ("run_started", "model_request_started", "model_response", "tool_call_started"):
        assert expected in events
    assert events[-1] == "run_finished"
    assert "looking up a" in events and "custom_line" in events
    assert {line["correlation_id"] for line in lines} == {correlation} == {"corr-7"}
    assert {line["run_id"] for line in lines} == {result.run_id}
    assert {line["agent"] for line in lines} == {"finder"}
    assert all(isinstance(line["step"], int) for line in lines)
    assert {s.attributes["miniagent.correlation_id"] for s in observed.spans() if s.attributes} == {"corr-7"}


async def test_a_run_outside_any_scope_gets_a_generated_correlation_id(observed: Observed) -> None:
    assert current_correlation_id() is None
    start = len(observed.out.getvalue())
    await Agent(model=ScriptedModel(["x"]), name="a").run("hi")
    ids = {line.get("correlation_id") for line in _lines(observed.out.getvalue()[start:])}
    assert len(ids) == 1 and None not in ids


async def test_log_lines_have_the_run_details(observed: Observed) -> None:
    start = len(observed.out.getvalue())
    result = await Agent(model=ScriptedModel(["hello there"]), name="a").run("hi")
    lines = {line["event"]: line for line in _lines(observed.out.getvalue()[start:])}
    response = lines["model_response"]
    assert response["model"] == "scripted" and response["finish_reason"] == "stop"
    assert response["output_tokens"] == result.usage.output_tokens
    finished = lines["run_finished"]
    assert finished["requests"] == 1 and finished["level"] == "info" and "timestamp" in finished
    assert "prompt" not in lines["run_started"] and "text" not in response  # content is off by default


async def test_failures_retries_and_tool_errors_are_logged_at_warning_and_error() -> None:
    out = io.StringIO()
    configure(log_format="json", log_level="WARNING", stream=out, tracing=False, metrics=False)
    agent = Agent(model=ScriptedModel([tool_call_response(("boom", {})), tool_call_response(("nope", {}))]), retries=0)

    @agent.tool
    def boom() -> str:
        """Fails."""
        raise ValueError("it broke")

    with pytest.raises(Exception, match="nope"):
        await agent.run("go")
    lines = _lines(out.getvalue())
    levels = {line["event"]: line["level"] for line in lines}
    assert levels == {"tool_call_finished": "warning", "run_failed": "error"}
    tool = next(line for line in lines if line["event"] == "tool_call_finished")
    assert tool["outcome"] == "error" and "it broke" in tool["result"]


async def test_user_ids_are_hashed_raw_or_omitted(tmp_path: Any) -> None:
    from miniagent.store import SQLStore

    store = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'u.db'}")
    seen: dict[str, Any] = {}
    try:
        for mode in ("hash", "raw", "omit"):
            out = io.StringIO()
            configure(log_format="json", stream=out, tracing=False, metrics=False, user_id=mode)
            await Agent(model=ScriptedModel(["hi"]), name="u", store=store).run("hello", user_id="alice@example.com")
            seen[mode] = {line.get("user_id") for line in _lines(out.getvalue()) if "run_id" in line}
    finally:
        await store.close()
    assert seen["hash"] == {hash_user_id("alice@example.com")}
    assert seen["raw"] == {"alice@example.com"}
    assert seen["omit"] == {None}
    salted = Settings(user_id_salt="pepper-pepper")
    assert hash_user_id("alice@example.com", salted.user_id_salt.get_secret_value().encode()) != hash_user_id(  # type: ignore[union-attr]
        "alice@example.com"
    )


def test_console_format_renders_key_values() -> None:
    out = io.StringIO()
    configure(log_format="console", stream=out, tracing=False, metrics=False)
    Agent(model=ScriptedModel(["hi"]), name="pretty").run_sync("hello")
    text = out.getvalue()
    assert "run_finished" in text and "agent=pretty" in text and not text.lstrip().startswith("{")


def test_auto_format_is_json_when_the_stream_is_not_a_terminal() -> None:
    handle = configure(stream=io.StringIO(), tracing=False, metrics=False)
    assert handle.log_format == "json"
    assert handle.log_level == logging.INFO


def test_settings_give_the_defaults() -> None:
    settings = Settings(log_format="console", log_level="ERROR", trace_content=True)
    handle = configure(stream=io.StringIO(), tracing=False, metrics=False, settings=settings)
    assert (handle.log_format, handle.log_level, handle.record_content) == ("console", logging.ERROR, True)


def test_info_is_two_lines_per_run_and_details_are_debug() -> None:
    out = io.StringIO()
    configure(log_format="json", log_level="INFO", stream=out, tracing=False, metrics=False)
    agent = Agent(model=ScriptedModel([tool_call_response(("t", {})), "hi"]))

    @agent.tool
    def t() -> str:
        """T."""
        return "ok"

    agent.run_sync("hello")
    assert [line["event"] for line in _lines(out.getvalue())] == ["run_started", "run_finished"]


def test_configure_is_idempotent_and_reversible() -> None:
    before_handlers = event_handlers()
    before_root = list(logging.root.handlers)
    before_config = structlog.get_config()
    registry = CollectorRegistry()
    provider, _ = tracer_provider()
    for _ in range(3):  # configuring again replaces, never stacks
        handle = configure(stream=io.StringIO(), tracer_provider=provider, registry=registry)
        assert configured() is handle
        assert len(event_handlers()) == len(before_handlers) + 3
        assert len(logging.root.handlers) == len(before_root) + 1
    assert registry.get_sample_value("miniagent_runs_active", {"agent": "x"}) is None
    unconfigure()
    assert configured() is None
    assert event_handlers() == before_handlers
    assert logging.root.handlers == before_root
    assert structlog.get_config() == before_config
    assert list(registry.collect()) == []  # the collectors were unregistered
    unconfigure()  # harmless when nothing is configured
    handle.close()  # and closing twice too


def test_a_clock_times_the_logged_model_request() -> None:
    clock = ManualClock()
    out = io.StringIO()
    configure(log_format="json", log_level="DEBUG", stream=out, tracing=False, metrics=False, clock=clock)
    Agent(model=ScriptedModel(["hi"])).run_sync("hello")
    response = next(line for line in _lines(out.getvalue()) if line["event"] == "model_response")
    assert response["duration_s"] == 0.0  # the manual clock never moved


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"log_format": "xml"}, "not a log format"),
        ({"log_level": "LOUD"}, "not a level"),
        ({"user_id": "scramble"}, "not a mode"),
        ({"stream": 42}, "text stream"),
        ({"secrets": "one-secret"}, "list of secret strings"),
        ({"secrets": [b"bytes"]}, "must be strings"),
        ({"clock": 3}, "an object with"),
        ({"tracing": False, "tracer_provider": object()}, "contradictory"),
    ],
)
def test_invalid_arguments_are_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        configure(metrics=False, **kwargs)
    assert configured() is None
