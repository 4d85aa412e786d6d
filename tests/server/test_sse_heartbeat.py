"""SSE heartbeats: a `: keep-alive` comment after each quiet spell of `sse_heartbeat_s`, on the native run events and
the `/v1` streamed answers, with no event lost or reordered; the official OpenAI SDK reads such a stream as usual.

The streams wait at a gate (a tool or a model blocked on an event the test sets), and the test releases it once it
has seen a heartbeat: no sleeps.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from openai import AsyncOpenAI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from miniagent import Agent
from miniagent.messages import ModelMessage
from miniagent.server._sse import HEARTBEAT, SseResponse
from miniagent.settings import Settings
from miniagent.store import SQLStore
from miniagent.testing import AgentInfo, FunctionModel

from ._native_support import Gate, auth, gated_agent, serving
from .conftest import ApiKeyFactory, AppFactory

pytestmark = pytest.mark.anyio

HEARTBEAT_S = 0.05


def quick(settings: Settings) -> Settings:
    return settings.model_copy(update={"sse_heartbeat_s": HEARTBEAT_S})


def frames_of(lines: list[str]) -> list[dict[str, str]]:
    """The SSE events (field -> value) of raw lines, comments left out."""
    out: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if fields:
                out.append(fields)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return out


async def read_releasing(response: httpx.Response, gate: Gate) -> list[str]:
    """The stream's raw lines to its end; `gate` is released once a heartbeat was read while it was closed."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        lines.append(line)
        if line == HEARTBEAT.decode().strip() and gate.reached.is_set():
            gate.release.set()
    return lines


# ---- the response ----------------------------------------------------------------------------------------------


class Collector:
    """An ASGI `send` that keeps the bodies sent; a heartbeat sets `heartbeat` (a producer may wait for it)."""

    def __init__(self, *, fail_at: int | None = None) -> None:
        self.bodies: list[bytes] = []
        self.ended = False
        self.heartbeat = anyio.Event()
        self.fail_at = fail_at

    async def send(self, message: Message) -> None:
        if message["type"] != "http.response.body":
            return
        if not message["more_body"]:
            self.ended = True
            return
        if self.fail_at is not None and len(self.bodies) == self.fail_at:
            raise OSError("the client went away")
        self.bodies.append(message["body"])
        if message["body"] == HEARTBEAT:
            self.heartbeat.set()

    @property
    def frames(self) -> list[bytes]:
        return [b for b in self.bodies if b != HEARTBEAT]


async def test_no_frame_is_lost_or_reordered_by_heartbeats() -> None:
    collector = Collector()
    expected = [b"data: %d\n\n" % i for i in range(600)]

    async def frames() -> AsyncIterator[bytes]:
        for i, frame in enumerate(expected):
            if i % 20 == 0:  # a quiet spell that only a heartbeat ends
                collector.heartbeat = anyio.Event()
                await collector.heartbeat.wait()
            elif i % 3 == 0:
                await anyio.lowlevel.checkpoint()
            yield frame

    # A tiny heartbeat makes the timeouts race with the hand-overs of frames.
    await SseResponse(frames(), heartbeat_s=0.0005).stream_response(collector.send)
    assert collector.frames == expected and collector.ended
    assert collector.bodies.count(HEARTBEAT) >= 30


async def test_a_failing_source_raises_its_own_error_after_its_frames() -> None:
    collector = Collector()

    async def frames() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise ValueError("the source broke")

    with pytest.raises(ValueError, match="the source broke"):
        await SseResponse(frames(), heartbeat_s=10).stream_response(collector.send)
    assert collector.frames == [b"data: 1\n\n"] and not collector.ended


async def test_a_client_that_leaves_closes_the_source_in_its_task() -> None:
    collector = Collector(fail_at=1)
    closed: list[str] = []
    endless = anyio.Event()

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"
            await endless.wait()
            yield b"data: never\n\n"
        finally:
            closed.append("closed")

    with pytest.raises(OSError, match="went away"):
        await SseResponse(frames(), heartbeat_s=10).stream_response(collector.send)
    assert collector.frames == [b"data: 1\n\n"] and closed == ["closed"]


def test_the_heartbeat_must_be_positive() -> None:
    async def frames() -> AsyncIterator[bytes]:
        yield b""

    with pytest.raises(ValueError, match="positive"):
        SseResponse(frames(), heartbeat_s=0)
    with pytest.raises(ValueError, match="greater than 0"):
        Settings(sse_heartbeat_s=0)


# ---- native run events -----------------------------------------------------------------------------------------


async def test_run_events_get_heartbeats_while_a_tool_waits_and_lose_nothing(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    gate = Gate()
    app = make_app(quick(server_settings), agents=[gated_agent(gate)])
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(api_key())) as client:
        started = await client.post("/api/v1/runs", json={"prompt": "wait", "background": True})
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        await gate.reached.wait()
        async with client.stream("GET", f"/api/v1/runs/{run_id}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = await read_releasing(response, gate)
    beat = lines.index(": keep-alive")
    before, after = frames_of(lines[:beat]), frames_of(lines[beat:])
    assert before and before[-1]["event"] == "tool-call-started"  # the run was quiet in its tool
    assert after and after[-1]["event"] == "run-finished"
    streamed = [(int(f["id"]), f["event"]) for f in before + after if "id" in f]
    async with await SQLStore.open(server_settings.database_url, settings=server_settings) as store:
        stored = [(e.seq, e.event.kind) for e in await store.events(run_id, tenant_id="t1")]
    assert streamed == stored and [seq for seq, _ in stored] == list(range(1, len(stored) + 1))


# ---- /v1 streamed answers --------------------------------------------------------------------------------------


def pausing_agent(gate: Gate) -> Agent[None, str]:
    """Streams `Hello`, waits at `gate`, then streams ` world`."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "Hello"
        gate.reached.set()
        await gate.release.wait()
        yield " world"

    return Agent(FunctionModel(stream_function=stream, name="pausing"), name="pausing")


CHAT: dict[str, Any] = {"model": "pausing", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_a_streamed_answer_gets_heartbeats_while_the_model_waits(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    gate = Gate()
    app = make_app(quick(server_settings), agents=[pausing_agent(gate)])
    async with (
        serving(app) as served,
        httpx.AsyncClient(base_url=served.url, headers=auth(api_key())) as client,
        client.stream("POST", "/v1/chat/completions", json=CHAT) as response,
    ):
        assert response.status_code == 200
        lines = await read_releasing(response, gate)
    data = [f["data"] for f in frames_of(lines)]
    beat = lines.index(": keep-alive")
    assert any('"Hello"' in line for line in lines[:beat]) and all("world" not in line for line in lines[:beat])
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Hello world" and chunks[-1]["choices"][0]["finish_reason"] == "stop"


class HeartbeatSpy:
    """ASGI middleware that counts the heartbeats the app sends."""

    def __init__(self, app: ASGIApp, *, sent: list[int], enough: anyio.Event) -> None:
        self.app, self.sent, self.enough = app, sent, enough

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def spy(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body") == HEARTBEAT:
                self.sent[0] += 1
                if self.sent[0] >= 2:
                    self.enough.set()
            await send(message)

        await self.app(scope, receive, spy)


async def test_the_openai_sdk_reads_a_stream_with_heartbeats(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    gate = Gate()
    sent, enough = [0], anyio.Event()
    app = make_app(quick(server_settings), agents=[pausing_agent(gate)])
    app.add_middleware(HeartbeatSpy, sent=sent, enough=enough)

    async def release_after_heartbeats() -> None:
        await enough.wait()
        gate.release.set()

    async with serving(app) as served, anyio.create_task_group() as tg:
        tg.start_soon(release_after_heartbeats)
        async with AsyncOpenAI(base_url=f"{served.url}/v1", api_key=api_key(), max_retries=0) as api:
            stream = await api.chat.completions.create(
                model="pausing", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            chunks = [c async for c in stream]
    assert sent[0] >= 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
