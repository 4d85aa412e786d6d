"""Helpers of the native API tests: the app under uvicorn in the test's own event loop, SSE parsing, agents that
block at a known point (so a run is provably mid-flight).

Serving in the test's loop (not a thread) lets a test and the server share `anyio.Event`s: a tool or model waits on
one the test sets, and the test waits on one the tool sets.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from fastapi import FastAPI

from miniagent import Agent
from miniagent.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from miniagent.server._runs import RunManager
from miniagent.server._state import ServerState
from miniagent.testing import AgentInfo, FunctionModel


@dataclass
class Served:
    """An app served by uvicorn in the test's loop."""

    url: str
    """Its base URL."""
    server: Any
    """The `uvicorn.Server`."""

    def stop(self) -> None:
        """Start the server's graceful shutdown (it ends when the `serving` block exits)."""
        self.server.should_exit = True


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[Served]:
    """Run `app` under uvicorn on a free loopback port in this event loop, until the block ends."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", ws="websockets-sansio")
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server._serve, [sock])  # `_serve`: `serve` would take over the test process's signals
            await wait_until(lambda: bool(server.started))  # lifespan done, socket listening
            try:
                yield Served(f"http://127.0.0.1:{port}", server)
            finally:
                server.should_exit = True
    finally:
        sock.close()


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait for a state (checked between event-loop turns); the test's timeout bounds it."""
    while not predicate():  # noqa: ASYNC110  # the state belongs to code that has no event to set
        await anyio.sleep(0.005)


def with_ws(app: FastAPI) -> FastAPI:
    """`app` with the native WebSocket route (`create_app` includes `native.ws_router`; added here if it did not)."""
    from miniagent.server.native import ws_router

    if not any(getattr(r, "path", None) == "/api/v1/ws" for r in app.router.routes):
        app.include_router(ws_router)
    return app


def state_of(app: FastAPI) -> ServerState:
    """The app's state."""
    state: ServerState = app.state.miniagent
    return state


def runs_of(app: FastAPI) -> RunManager:
    """The app's run manager (once its lifespan started)."""
    runs = state_of(app).runs
    assert isinstance(runs, RunManager)
    return runs


@dataclass
class Sse:
    """One Server-Sent Event."""

    id: int | None
    event: str
    data: Any


async def read_sse(response: httpx.Response, *, stop_after: int | None = None) -> list[Sse]:
    """Parse a `text/event-stream` response into events (stop after `stop_after` events with an id)."""
    out: list[Sse] = []
    fields: dict[str, str] = {}
    counted = 0
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                out.append(
                    Sse(
                        int(fields["id"]) if "id" in fields else None,
                        fields.get("event", "message"),
                        json.loads(fields["data"]),
                    )
                )
                if "id" in fields and fields.get("event") != "partial-output":
                    counted += 1
            fields = {}
            if stop_after is not None and counted >= stop_after:
                break
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
    return out


@dataclass
class Gate:
    """A point a tool waits at: `reached` is set when a call gets there; the call goes on once `release` is set."""

    reached: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)
    calls: int = 0


def gated_agent(gate: Gate, *, name: str = "gated") -> Agent[None, str]:
    """An agent whose model calls the `wait` tool once, which blocks at `gate`; then it answers `done`."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        if any(isinstance(p, ToolReturnPart) for p in last.parts):
            return ModelResponse([TextPart("done")])
        return ModelResponse([ToolCallPart("wait", {}, "call-1")])

    agent: Agent[None, str] = Agent(FunctionModel(model), name=name)

    @agent.tool
    async def wait() -> str:
        """Wait at the gate."""
        gate.calls += 1
        gate.reached.set()
        await gate.release.wait()
        return "released"

    return agent


def auth(key: str) -> dict[str, str]:
    """The `Authorization` header of an API key."""
    return {"Authorization": f"Bearer {key}"}
