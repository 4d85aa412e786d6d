"""Prometheus metrics from a run's events, in a fresh registry; the endpoint on a real port and through the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from miniagent import Agent
from miniagent.errors import ModelAPIError, UserError
from miniagent.messages import ModelMessage
from miniagent.models import StreamChunk
from miniagent.models.test import AgentInfo
from miniagent.observability import configure, get_registry, metrics_app, start_metrics_server
from miniagent.resilience import CircuitBreaker, FallbackModel, ResilientModel
from miniagent.testing import FunctionModel, ManualClock, RecordingClock, ScriptedModel, tool_call_response

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def _setup(clock: ManualClock | None = None, **kwargs: object) -> CollectorRegistry:
    registry = CollectorRegistry()
    configure(logs=False, tracing=False, registry=registry, clock=clock, **kwargs)  # type: ignore[arg-type]
    return registry


async def test_a_run_updates_latency_token_cost_and_tool_metrics() -> None:
    clock = ManualClock()
    registry = _setup(clock)
    answers = iter([tool_call_response(("lookup", {"q": "a"}), ("broken", {})), "the answer"])
    active_during_tool: list[float | None] = []

    def respond(messages: list[ModelMessage], info: AgentInfo) -> object:
        clock.advance(0.25)  # each model request takes 0.25 s of the shared clock
        return next(answers)

    agent = Agent(model=FunctionModel(respond, name="gpt-4o-mini"), name="metered", clock=clock)  # type: ignore[arg-type]

    @agent.tool
    def lookup(q: str) -> str:
        """Looks up."""
        active_during_tool.append(registry.get_sample_value("miniagent_runs_active", {"agent": "metered"}))
        clock.advance(0.1)
        return "found"

    @agent.tool
    def broken() -> str:
        """Fails."""
        raise RuntimeError("no")

    result = await agent.run("question")
    value = registry.get_sample_value
    assert active_during_tool == [1.0]
    assert value("miniagent_runs_active", {"agent": "metered"}) == 0.0
    run_labels = {"agent": "metered", "outcome": "succeeded"}
    assert value("miniagent_run_duration_seconds_count", run_labels) == 1.0
    assert value("miniagent_run_duration_seconds_sum", run_labels) == pytest.approx(0.6)
    request_labels = {"model": "gpt-4o-mini", "outcome": "ok"}
    assert value("miniagent_model_request_duration_seconds_count", request_labels) == 2.0
    assert value("miniagent_model_request_duration_seconds_sum", request_labels) == pytest.approx(0.5)
    input_tokens = value("miniagent_model_tokens_total", {"model": "gpt-4o-mini", "type": "input"})
    assert input_tokens == result.usage.input_tokens
    assert value("miniagent_model_tokens_total", {"model": "gpt-4o-mini", "type": "output"}) == (
        result.usage.output_tokens
    )
    assert result.usage.cost_usd
    cost = value("miniagent_model_cost_usd_total", {"model": "gpt-4o-mini", "tenant": ""})
    assert cost == pytest.approx(result.usage.cost_usd)
    assert value("miniagent_tool_calls_total", {"tool": "lookup", "outcome": "success"}) == 1.0
    assert value("miniagent_tool_calls_total", {"tool": "broken", "outcome": "error"}) == 1.0
    assert value("miniagent_tool_call_duration_seconds_sum", {"tool": "lookup"}) == pytest.approx(0.1)


async def test_time_to_first_token_of_a_stream() -> None:
    clock = ManualClock()
    registry = _setup(clock)

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[StreamChunk | str]:
        clock.advance(0.3)
        yield "Hel"
        clock.advance(0.2)
        yield "lo"

    agent = Agent(model=FunctionModel(stream_function=stream, name="streamer"), clock=clock)
    async with agent.run_stream("hi") as run:
        await run.get_result()
    assert registry.get_sample_value("miniagent_model_time_to_first_token_seconds_sum", {"model": "streamer"}) == (
        pytest.approx(0.3)
    )
    assert registry.get_sample_value("miniagent_model_time_to_first_token_seconds_count", {"model": "streamer"}) == 1


async def test_retries_fallbacks_restarts_and_failures_are_counted() -> None:
    registry = _setup()
    clock = RecordingClock()
    attempts = 0

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[StreamChunk | str]:
        nonlocal attempts
        attempts += 1
        yield "par"
        if attempts == 1:
            raise ModelAPIError("cut", model_name="s")
        yield "tial"

    flaky = ResilientModel(FunctionModel(stream_function=stream, name="s"), breaker=False, clock=clock)
    async with Agent(model=flaky, name="r", clock=clock).run_stream("hi") as run:
        await run.get_result()
    primary = ScriptedModel([ModelAPIError("down", model_name="p", retryable=False)], name="p")
    chain = FallbackModel([primary, ScriptedModel(["ok"], name="b")], retry=None, breakers=False)
    await Agent(model=chain, name="f").run("hi")
    with pytest.raises(ModelAPIError):
        doomed = ScriptedModel([ModelAPIError("bad", model_name="d", retryable=False)], name="d")
        await Agent(model=doomed, name="d", retry=None).run("hi")

    value = registry.get_sample_value
    assert value("miniagent_retries_total", {"cause": "model-error", "upstream": "s#" + _upstream(flaky)}) == 1.0
    assert value("miniagent_stream_restarts_total", {"model": "s"}) == 1.0
    assert value("miniagent_fallbacks_total", {"from_model": "p", "to_model": "b"}) == 1.0
    assert value("miniagent_run_duration_seconds_count", {"agent": "d", "outcome": "failed"}) == 1.0
    assert value("miniagent_model_request_duration_seconds_count", {"model": "d", "outcome": "error"}) == 1.0
    assert value("miniagent_runs_active", {"agent": "d"}) == 0.0


def _upstream(model: ResilientModel) -> str:
    return model.upstream.split("#", 1)[1]


async def test_breaker_state_is_a_gauge_per_upstream() -> None:
    registry = _setup()
    clock = ManualClock()
    breaker = CircuitBreaker("api.example", failure_rate=0.5, window=4, min_calls=2, open_s=10.0, clock=clock)
    for _ in range(2):
        await breaker.allow()
        await breaker.record_failure()
    assert registry.get_sample_value("miniagent_circuit_state", {"upstream": "api.example"}) == 2.0
    clock.advance(10.0)
    assert await breaker.allow()
    assert registry.get_sample_value("miniagent_circuit_state", {"upstream": "api.example"}) == 1.0
    await breaker.record_success()
    assert registry.get_sample_value("miniagent_circuit_state", {"upstream": "api.example"}) == 0.0
    transitions = registry.get_sample_value
    assert transitions("miniagent_circuit_transitions_total", {"upstream": "api.example", "to_state": "open"}) == 1.0


async def test_the_user_label_is_opt_in_and_hashed(tmp_path: Path) -> None:
    from miniagent.observability import hash_user_id
    from miniagent.store import SQLStore

    registry = _setup(metrics_user_label=True)
    store = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    try:
        model = ScriptedModel(["hi"], name="gpt-4o-mini")
        await Agent(model=model, store=store).run("hello", user_id="bob")
    finally:
        await store.close()
    labels = {"model": "gpt-4o-mini", "tenant": "default", "user": hash_user_id("bob")}
    cost = registry.get_sample_value("miniagent_model_cost_usd_total", labels)
    assert cost is not None and cost > 0


async def test_metrics_app_serves_the_registry() -> None:
    registry = _setup()
    await Agent(model=ScriptedModel(["hi"]), name="served").run("hello")
    transport = httpx.ASGITransport(app=metrics_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert 'miniagent_run_duration_seconds_count{agent="served",outcome="succeeded"} 1.0' in response.text
    assert get_registry() is registry


def test_the_metrics_server_listens_on_a_real_port() -> None:
    registry = _setup()
    Agent(model=ScriptedModel(["hi"]), name="ported").run_sync("hello")
    with start_metrics_server(0) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        text = httpx.get(server.url, timeout=10).text
        assert 'miniagent_runs_active{agent="ported"} 0.0' in text
        with pytest.raises(UserError, match="pick another port"):
            start_metrics_server(server.port, registry=registry)
    for bad in (-1, 70000, "9090", True):
        with pytest.raises(UserError, match="from 0 to 65535"):
            start_metrics_server(bad)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="an address"):
        start_metrics_server(0, host="")


def test_chat_serves_metrics_while_it_runs() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "miniagent.cli", "chat", "--model", "test", "--metrics-port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        url = None
        for line in proc.stdout:
            match = re.search(r"metrics at (http://\S+/metrics)", line)
            if match:
                url = match.group(1)
                break
        assert url is not None
        proc.stdin.write("hello there\n")
        proc.stdin.flush()
        for line in proc.stdout:
            if "bot>" in line:
                break
        text = httpx.get(url, timeout=10).text
        assert 'miniagent_run_duration_seconds_count{agent="chat",outcome="succeeded"} 1.0' in text
        proc.stdin.write("/exit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stdin.close()
        if proc.stderr is not None:
            proc.stderr.close()
