"""Runs over the real app under uvicorn: background runs, SSE with `Last-Event-ID` resume (live events not stored
yet, then the store), partial structured output, cancel mid-tool and mid-stream, and graceful shutdown.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from pydantic import BaseModel

from miniagent import Agent
from miniagent.messages import ModelMessage
from miniagent.models import TextChunk, ToolCallChunk
from miniagent.settings import Settings
from miniagent.store import SQLStore
from miniagent.testing import AgentInfo, FunctionModel

from ._native_support import Gate, Sse, auth, gated_agent, read_sse, runs_of, serving, state_of, wait_until
from .conftest import ApiKeyFactory, AppFactory

pytestmark = pytest.mark.anyio


def streaming_agent(gate: Gate, *, name: str = "streamer", closed: list[str] | None = None) -> Agent[None, str]:
    """Streams `Hel`, waits at `gate`, then streams `lo` and ` world`."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[TextChunk | str]:
        try:
            yield TextChunk(0, "Hel")
            gate.calls += 1
            gate.reached.set()
            await gate.release.wait()
            yield TextChunk(0, "lo")
            yield TextChunk(0, " world")
        finally:
            if closed is not None:
                closed.append("closed")

    return Agent(FunctionModel(stream_function=stream), name=name)


async def stored_seqs(settings: Settings, run_id: str, tenant: str = "t1") -> list[tuple[int, str]]:
    store = await SQLStore.open(settings.database_url, settings=settings)
    try:
        return [(e.seq, e.event.kind) for e in await store.events(run_id, tenant_id=tenant)]
    finally:
        await store.close()


async def test_sse_resume_hands_over_from_live_events_to_the_store_without_gap_or_duplicate(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    gate = Gate()
    key = api_key(scopes=("chat",))
    app = make_app(agents=[streaming_agent(gate)])
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        started = await client.post("/api/v1/runs", json={"prompt": "hi", "background": True})
        assert started.status_code == 202, started.text
        run = started.json()
        assert run["status"] == "queued" and run["agent"] == "streamer"
        run_id = run["id"]
        # First connection: read up to the first text delta (the run is blocked right after it), then leave.
        async with client.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            first: list[Sse] = []
            async for item in _until_kind(response, "text-delta"):
                first.append(item)
        await gate.reached.wait()
        # The step is not committed yet: the store has only the run's start; the rest was live only.
        assert await stored_seqs(server_settings, run_id) == [(1, "run-started")]
        last_seen = first[-1].id
        assert last_seen is not None
        assert [e.id for e in first] == list(range(1, last_seen + 1))
        # Second connection resumes after the last id seen, while the run is still blocked, then the run goes on.
        async with client.stream(
            "GET", f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(last_seen)}
        ) as response:
            gate.release.set()
            second = await read_sse(response)
        assert [e.id for e in second if e.id is not None] == list(range(last_seen + 1, last_seen + 1 + len(second)))
        assert second[-1].event == "run-finished"
        assert second[-1].data["output"] == "Hello world"
        stored = await stored_seqs(server_settings, run_id)
        streamed = [(e.id, e.event) for e in first + second]
        assert streamed == stored  # same numbering, nothing missing, nothing twice
        # Third connection after the end: the store replays exactly what the second one got.
        async with client.stream("GET", f"/api/v1/runs/{run_id}/events?after_seq={last_seen}") as response:
            third = await read_sse(response)
        assert [(e.id, e.event, e.data) for e in third] == [(e.id, e.event, e.data) for e in second]
        status = (await client.get(f"/api/v1/runs/{run_id}")).json()
        assert status["status"] == "succeeded" and status["usage"]["requests"] == 1


async def _until_kind(response: httpx.Response, kind: str) -> AsyncIterator[Sse]:
    """The stream's events up to and including the first of `kind` (the connection is left open)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                event = Sse(int(fields["id"]), fields["event"], json.loads(fields["data"]))
                yield event
                if event.event == kind:
                    return
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


class Weather(BaseModel):
    city: str
    temp: int | None = None


def weather_agent(gate: Gate) -> Agent[None, Weather]:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[ToolCallChunk]:
        yield ToolCallChunk(0, tool_name="final_result", tool_call_id="c1", args_delta='{"city": "Par')
        gate.reached.set()
        await gate.release.wait()
        yield ToolCallChunk(0, args_delta='is", "temp": 2')
        yield ToolCallChunk(0, args_delta="1}")

    return Agent(FunctionModel(stream_function=stream), name="weather", output_type=Weather)


async def test_sse_streams_partial_structured_output_and_resumes_it_whole(
    make_app: AppFactory, api_key: ApiKeyFactory
) -> None:
    gate = Gate()
    key = api_key(scopes=("chat",))
    app = make_app(agents=[weather_agent(gate)])
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        run_id = (await client.post("/api/v1/runs", json={"prompt": "weather?", "background": True})).json()["id"]
        await gate.reached.wait()
        async with client.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
            gate.release.set()
            events = await read_sse(response)
        partials = [e for e in events if e.event == "partial-output"]
        assert [p.data["output"] for p in partials] == [
            {"city": "Par", "temp": None},
            {"city": "Paris", "temp": None},
            {"city": "Paris", "temp": 21},
        ]
        deltas = {e.id for e in events if e.event == "tool-call-args-delta"}
        assert {p.id for p in partials} <= deltas  # each partial carries the id of the delta that completed it
        assert events[-1].event == "run-finished" and events[-1].data["output"] == {"city": "Paris", "temp": 21}
        # Resuming after the first delta: the next partial output is whole (rebuilt from the run's first delta).
        first_delta = min(d for d in deltas if d is not None)
        async with client.stream(
            "GET", f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(first_delta)}
        ) as response:
            resumed = [e for e in await read_sse(response) if e.event == "partial-output"]
        assert [p.data["output"] for p in resumed] == [{"city": "Paris", "temp": None}, {"city": "Paris", "temp": 21}]


async def test_cancel_a_run_blocked_in_a_tool_records_cancelled_with_partial_usage(
    make_app: AppFactory, api_key: ApiKeyFactory
) -> None:
    gate = Gate()
    key = api_key(scopes=("chat",))
    app = make_app(agents=[gated_agent(gate)])
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        run = (await client.post("/api/v1/runs", json={"prompt": "go", "background": True})).json()
        await gate.reached.wait()  # provably mid-flight: inside the tool
        running = (await client.get(f"/api/v1/runs/{run['id']}")).json()
        assert running["status"] == "running" and running["finished_at"] is None
        cancelled = await client.post(f"/api/v1/runs/{run['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        body = cancelled.json()
        assert body["status"] == "cancelled"
        assert body["usage"]["requests"] == 1 and body["usage"]["tool_calls"] == 1
        assert body["finished_at"] is not None
        assert not gate.release.is_set()  # the tool never got past its gate: it was cancelled
        again = await client.post(f"/api/v1/runs/{run['id']}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "run_not_running"
        async with client.stream("GET", f"/api/v1/runs/{run['id']}/events") as response:
            events = await read_sse(response)
        assert events[-1].event == "run-cancelled"
        assert events[-1].data["usage"]["tool_calls"] == 1
        # The thread is free again: a new message runs.
        gate.release.set()
        follow = await client.post("/api/v1/runs", json={"prompt": "again", "thread_id": run["thread_id"]})
        assert follow.status_code == 200 and follow.json()["status"] == "succeeded"


async def test_cancel_a_run_mid_stream_closes_the_model_stream(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    gate = Gate()
    closed: list[str] = []
    key = api_key(scopes=("chat",))
    app = make_app(agents=[streaming_agent(gate, closed=closed)])
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        run = (await client.post("/api/v1/runs", json={"prompt": "go", "background": True})).json()
        await gate.reached.wait()
        body = (await client.post(f"/api/v1/runs/{run['id']}/cancel")).json()
        assert body["status"] == "cancelled"
        assert closed == ["closed"]  # the model's stream was closed, not left generating
        assert body["usage"]["requests"] == 0  # no response completed


async def test_a_second_run_on_a_busy_thread_is_a_409(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    gate = Gate()
    key = api_key(scopes=("chat", "threads"))
    app = make_app(agents=[gated_agent(gate)])
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        run = (await client.post("/api/v1/runs", json={"prompt": "go", "background": True})).json()
        await gate.reached.wait()
        thread = run["thread_id"]
        busy = await client.post(f"/api/v1/threads/{thread}/messages", json={"content": "more"})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "thread_busy"
        assert (await client.delete(f"/api/v1/threads/{thread}")).status_code == 409
        gate.release.set()
        await wait_until(lambda: not runs_of(app).active)
        assert (await client.get(f"/api/v1/runs/{run['id']}")).json()["status"] == "succeeded"


async def test_shutdown_hands_background_runs_back_to_the_queue_and_the_next_server_finishes_them(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    gate = Gate()
    key = api_key(scopes=("chat", "threads"))
    app = make_app(agents=[gated_agent(gate)])
    state_of(app).extras["run_grace_s"] = 0.0
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        run = (await client.post("/api/v1/runs", json={"prompt": "go", "background": True})).json()
        await gate.reached.wait()
    # The server is down: past the grace period the run was handed back to the queue, nothing of the cut step kept.
    store = await SQLStore.open(server_settings.database_url, settings=server_settings)
    try:
        record = await store.get_run(run["id"], tenant_id="t1")
    finally:
        await store.close()
    assert record.status == "queued" and record.attempts == 1 and record.error is None
    assert [e.event.kind for e in await _events(server_settings, run["id"])] == ["run-started"]
    # The next server's worker takes the job and finishes the same run (its user message is not posted twice).
    resumed_gate = Gate()
    resumed_gate.release.set()
    app2 = make_app(agents=[gated_agent(resumed_gate)])
    async with serving(app2) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        await wait_until_async(lambda: _status(client, run["id"]), "succeeded")
        body = (await client.get(f"/api/v1/runs/{run['id']}")).json()
        assert body["status"] == "succeeded" and body["usage"]["tool_calls"] == 1
        messages = (await client.get(f"/api/v1/threads/{run['thread_id']}/messages")).json()
        assert [m["role"] for m in messages].count("user") == 1
        again = await client.post(f"/api/v1/runs/{run['id']}/resume")
        assert again.status_code == 409 and again.json()["error"]["code"] == "not_resumable"
    kinds = [e.event.kind for e in await _events(server_settings, run["id"])]
    assert kinds.count("run-started") == 2 and kinds[-1] == "run-finished"


async def _status(client: httpx.AsyncClient, run_id: str) -> str:
    return str((await client.get(f"/api/v1/runs/{run_id}")).json()["status"])


async def wait_until_async(read: Any, expected: str) -> None:
    """Poll `read()` until it returns `expected` (a hang guard, not a timing assertion)."""
    with anyio.fail_after(60):
        while await read() != expected:  # noqa: ASYNC110  # the state is in another process's store
            await anyio.sleep(0.05)


async def _events(settings: Settings, run_id: str) -> list[Any]:
    store = await SQLStore.open(settings.database_url, settings=settings)
    try:
        return list(await store.events(run_id, tenant_id="t1"))
    finally:
        await store.close()


async def test_shutdown_lets_a_run_finish_within_the_grace_period(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    gate = Gate()
    key = api_key(scopes=("chat",))
    app = make_app(agents=[gated_agent(gate)])
    state_of(app).extras["run_grace_s"] = 600.0
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        run = (await client.post("/api/v1/runs", json={"prompt": "go", "background": True})).json()
        await gate.reached.wait()
        manager = runs_of(app)
        served.stop()
        await wait_until(lambda: manager.closing)  # the shutdown has begun and waits for the run
        gate.release.set()
    store = await SQLStore.open(server_settings.database_url, settings=server_settings)
    try:
        record = await store.get_run(run["id"], tenant_id="t1")
    finally:
        await store.close()
    assert record.status == "succeeded"


async def test_a_run_of_another_server_process_is_followed_from_the_store(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    gate = Gate()
    key = api_key(scopes=("chat",))
    runner = make_app(agents=[streaming_agent(gate)])
    # Another server on the same database that executes no background runs itself (only `runner`'s worker does).
    watcher = make_app(
        server_settings.model_copy(update={"server_inprocess_worker": False}), agents=[streaming_agent(Gate())]
    )
    async with (
        serving(runner) as first,
        serving(watcher) as second,
        httpx.AsyncClient(headers=auth(key)) as client,
    ):
        run_id = (await client.post(f"{first.url}/api/v1/runs", json={"prompt": "hi", "background": True})).json()["id"]
        await gate.reached.wait()
        assert runs_of(watcher).get(run_id) is None
        async with client.stream("GET", f"{second.url}/api/v1/runs/{run_id}/events") as response:
            assert response.status_code == 200
            gate.release.set()
            events = await read_sse(response)
        assert [(e.id, e.event) for e in events] == await stored_seqs(server_settings, run_id)
        assert events[-1].event == "run-finished"
