"""The WebSocket API over the real app under uvicorn: auth (header or first message), run, events, cancel, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from miniagent import Agent
from miniagent.testing import EchoModel

from ._native_support import Gate, auth, gated_agent, serving, with_ws
from .conftest import ApiKeyFactory, AppFactory

pytestmark = pytest.mark.anyio


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/ws"


async def receive(ws: ClientConnection) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await ws.recv())
    return data


async def until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    """Messages up to and including the first of type `kind`."""
    out = []
    while True:
        message = await receive(ws)
        out.append(message)
        if message["type"] == kind:
            return out


async def test_ws_with_a_header_posts_a_message_and_streams_its_events(
    make_app: AppFactory, api_key: ApiKeyFactory
) -> None:
    key = api_key(scopes=("threads",))
    app = with_ws(make_app(agents=[Agent(EchoModel(), name="echo")]))
    async with serving(app) as served, connect(ws_url(served.url), additional_headers=auth(key)) as ws:
        ready = await receive(ws)
        assert ready == {"type": "ready", "tenant": "t1", "user": "u1"}
        await ws.send(json.dumps({"type": "message", "content": "hello", "id": "m1"}))
        messages = await until(ws, "done")
        started = messages[0]
        assert started["type"] == "run" and started["reply_to"] == "m1"
        events = [m for m in messages if m["type"] == "event"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["event"]["kind"] == "run-started"
        assert events[-1]["event"]["kind"] == "run-finished" and events[-1]["event"]["output"] == "echo: hello"
        done = messages[-1]
        assert done["run"]["status"] == "succeeded" and done["run"]["id"] == started["run"]["id"]
        # A second message in the same thread continues it.
        thread = done["run"]["thread_id"]
        await ws.send(json.dumps({"type": "message", "content": "again", "thread_id": thread}))
        second = (await until(ws, "done"))[-1]
        assert second["run"]["thread_id"] == thread and second["run"]["status"] == "succeeded"
        await ws.send(json.dumps({"type": "ping", "id": "p"}))
        assert await receive(ws) == {"type": "pong", "reply_to": "p"}


async def test_ws_first_message_auth_and_cancel(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    gate = Gate()
    key = api_key(scopes=("chat",))
    app = with_ws(make_app(agents=[gated_agent(gate)]))
    async with serving(app) as served, connect(ws_url(served.url)) as ws:
        await ws.send(json.dumps({"type": "auth", "token": key}))
        assert (await receive(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "message", "content": "go"}))
        run = (await until(ws, "run"))[-1]["run"]
        await gate.reached.wait()  # the run is inside its tool
        await ws.send(json.dumps({"type": "cancel", "run_id": run["id"], "id": "c"}))
        rest: list[dict[str, Any]] = []
        while not {"cancelled", "done"} <= {m["type"] for m in rest}:  # the two answers come in either order
            rest.append(await receive(ws))
        cancelled = next(m for m in rest if m["type"] == "cancelled")
        assert cancelled["reply_to"] == "c"
        assert cancelled["run"]["status"] == "cancelled" and cancelled["run"]["usage"]["tool_calls"] == 1
        assert next(m for m in rest if m["type"] == "done")["run"]["status"] == "cancelled"
        kinds = [m["event"]["kind"] for m in rest if m["type"] == "event"]
        assert kinds[-1] == "run-cancelled"
        # Subscribing again replays the run from the store.
        await ws.send(json.dumps({"type": "subscribe", "run_id": run["id"], "after_seq": 0}))
        replay = await until(ws, "done")
        assert [m["event"]["kind"] for m in replay if m["type"] == "event"][-1] == "run-cancelled"
        assert replay[-1]["run"]["status"] == "cancelled"


async def test_ws_rejects_bad_credentials_with_4401(make_app: AppFactory) -> None:
    app = with_ws(make_app())
    async with serving(app) as served:
        async with connect(ws_url(served.url), additional_headers=auth("mk_not_a_real_key")) as ws:
            error = await receive(ws)
            assert error["type"] == "error" and error["code"] == "unauthorized" and error["status"] == 401
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        async with connect(ws_url(served.url)) as ws:
            await ws.send(json.dumps({"type": "ping"}))  # not an auth message
            error = await receive(ws)
            assert error["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed):
                await ws.recv()


async def test_ws_needs_a_chat_or_threads_scope(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    key = api_key(scopes=("reports",))
    app = with_ws(make_app())
    async with serving(app) as served, connect(ws_url(served.url), additional_headers=auth(key)) as ws:
        error = await receive(ws)
        assert error["code"] == "forbidden" and error["status"] == 403
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_ws_bad_messages_are_errors_and_the_connection_stays_usable(
    make_app: AppFactory, api_key: ApiKeyFactory
) -> None:
    key = api_key(scopes=("chat",))
    app = with_ws(make_app())
    async with serving(app) as served, connect(ws_url(served.url), additional_headers=auth(key)) as ws:
        await receive(ws)
        await ws.send("not json")
        assert (await receive(ws))["code"] == "invalid_request"
        await ws.send(json.dumps({"type": "message"}))  # no content
        assert (await receive(ws))["code"] == "invalid_request"
        await ws.send(json.dumps({"type": "message", "content": "x", "agent": "nope"}))
        assert (await receive(ws))["code"] == "agent_not_found"
        await ws.send(json.dumps({"type": "cancel", "run_id": "0" * 32}))
        assert (await receive(ws))["code"] == "run_not_found"
        await ws.send(json.dumps({"type": "message", "content": "x", "thread_id": "f" * 32}))
        assert (await receive(ws))["code"] == "thread_not_found"
        await ws.send(json.dumps({"type": "auth", "token": "again"}))
        assert (await receive(ws))["code"] == "already_authenticated"
        await ws.send(json.dumps({"type": "ping"}))
        assert (await receive(ws))["type"] == "pong"
