"""Shutdown order and cleanliness: runs end (and are charged) before the shutdown hooks, and the store closes only
after every run task has ended, also for WebSocket-started runs cut short by the shutdown (handed back to the queue).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from miniagent import Agent, UsageLimits
from miniagent.messages import ModelMessage, ModelResponse, ToolCallPart
from miniagent.server._limits import LIMITS_CLOCK_KEY
from miniagent.settings import Settings
from miniagent.store import SQLStore
from miniagent.testing import AgentInfo, FunctionModel, ManualClock

from ._limits_support import START
from ._native_support import Gate, auth, gated_agent, runs_of, serving, state_of, wait_until, with_ws
from .conftest import ApiKeyFactory, AppFactory

pytestmark = pytest.mark.anyio


async def test_a_run_ending_during_the_shutdown_is_charged_before_the_limits_close(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    gate = Gate()
    key = api_key(scopes=("chat",))
    app = make_app(server_settings.model_copy(update={"budget_tokens_per_day": 1_000_000}), agents=[gated_agent(gate)])
    state = state_of(app)
    state.extras[LIMITS_CLOCK_KEY] = ManualClock(START).now
    state.extras["run_grace_s"] = 600.0
    seen: list[tuple[bool, int]] = []

    async def last_hook() -> None:  # first in the list: awaited last, after the limits' hook settled its charges
        assert state.limiter is not None
        seen.append((not runs_of(app).active, (await state.limiter.usage("user:t1/u1")).tokens))

    import httpx

    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        state.on_shutdown.insert(0, last_hook)
        run = (await client.post("/api/v1/runs", json={"prompt": "go", "background": True})).json()
        await gate.reached.wait()
        manager = runs_of(app)
        served.stop()
        await wait_until(lambda: manager.closing)  # the shutdown has begun: the run ends within the grace period
        gate.release.set()
    store = await SQLStore.open(server_settings.database_url, settings=server_settings)
    try:
        record = await store.get_run(run["id"], tenant_id="t1")
    finally:
        await store.close()
    assert record.status == "succeeded" and record.usage.total_tokens > 0
    # The hooks ran after the run ended, and its usage was charged by then.
    assert seen == [(True, record.usage.total_tokens)]


def busy_agent() -> Agent[None, str]:
    """An agent that never ends on its own: each step calls a tool that returns at once (a checkpoint per step), so
    at any moment its run is likely inside a store transaction.
    """

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse([ToolCallPart("tick", {}, f"call-{len(messages)}")])

    agent: Agent[None, str] = Agent(FunctionModel(model), name="busy", usage_limits=UsageLimits(request_limit=None))

    @agent.tool
    async def tick() -> str:
        """Return at once."""
        return "tick"

    return agent


async def test_shutdown_with_a_websocket_run_mid_transaction_leaves_no_task_behind(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings, tmp_path: Path
) -> None:
    key = api_key(scopes=("chat",))
    statuses: list[str] = []
    before = asyncio.all_tasks()
    for i in range(20):
        # A queue of its own per server: a handed-back run of one round must not keep the next one's worker busy.
        settings = server_settings.model_copy(update={"queue_url": f"sqlite:///{tmp_path / f'queue{i}.db'}"})
        app = with_ws(make_app(settings, agents=[busy_agent()]))
        state_of(app).extras["run_grace_s"] = 0.0
        with anyio.fail_after(60):  # a hang guard, not a timing assertion
            async with serving(app) as served:
                url = served.url.replace("http://", "ws://") + "/api/v1/ws"
                async with connect(url, additional_headers=auth(key)) as ws:
                    assert json.loads(await ws.recv())["type"] == "ready"
                    await ws.send(json.dumps({"type": "message", "content": "go"}))
                    run: dict[str, Any] = {}
                    while not run:
                        message = json.loads(await ws.recv())
                        if message["type"] == "run":
                            run = message["run"]
                # The client is gone; the run goes on, checkpointing each step, until the shutdown interrupts it.
        # Nothing of the server is left running: no run task, no connection close abandoned by a cancellation
        # (such a close, pending on a disposed engine, hangs the event loop's own shutdown).
        assert asyncio.all_tasks() - before == set()
        store = await SQLStore.open(server_settings.database_url, settings=server_settings)
        try:
            statuses.append((await store.get_run(run["id"], tenant_id="t1")).status)
        finally:
            await store.close()
    assert statuses == ["queued"] * 20  # handed back to the queue (nothing recorded): the next worker resumes it
