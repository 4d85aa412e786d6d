"""The run manager on its own: event numbering equal to the store's, followers that fall behind and catch up, runs
that cannot start, busy threads, and shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from miniagent import Agent
from miniagent.errors import ThreadNotFound
from miniagent.messages import ModelMessage
from miniagent.models import TextChunk
from miniagent.server._runs import RunManager, RunRequest, ServerShuttingDown, ThreadBusy
from miniagent.store import SQLStore
from miniagent.testing import AgentInfo, FunctionModel

from ._native_support import Gate, gated_agent

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLStore]:
    opened = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}", migrate=True)
    try:
        yield opened
    finally:
        await opened.close()


def chatty_agent(gate: Gate, pieces: int) -> Agent[None, str]:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[TextChunk]:
        yield TextChunk(0, "start")
        gate.reached.set()
        await gate.release.wait()
        for i in range(pieces):
            yield TextChunk(0, f" {i}")

    return Agent(FunctionModel(stream_function=stream), name="chatty")


async def test_a_follower_that_falls_behind_catches_up_with_every_event_in_store_order(store: SQLStore) -> None:
    gate = Gate()
    async with RunManager(follower_buffer=2) as runs:
        handle = await runs.start(RunRequest(chatty_agent(gate, 20), "go", store, tenant_id="default", user_id="u"))
        await gate.reached.wait()
        assert handle.run_id is not None and runs.get(handle.run_id) is handle
        follower = handle.follow(0, buffer=2)  # registered now; read only after the run ended: it was dropped
        gate.release.set()
        await handle.done.wait()
        seen = [(seq, event.kind) async for seq, event in follower]
    stored = [(e.seq, e.event.kind) for e in await store.events(handle.run_id)]
    assert seen == stored
    assert [kind for _, kind in seen].count("text-delta") == 21
    assert runs.get(handle.run_id) is None  # forgotten once done


async def test_a_run_that_cannot_start_reports_its_error(store: SQLStore) -> None:
    async with RunManager() as runs:
        handle = await runs.start(
            RunRequest(gated_agent(Gate()), "go", store, tenant_id="default", user_id="u", thread_id="f" * 32)
        )
    assert handle.run_id is None and isinstance(handle.error, ThreadNotFound)


async def test_one_run_per_thread_and_none_after_shutdown(store: SQLStore) -> None:
    gate = Gate()
    runs = RunManager(grace_s=0)
    thread = await store.create_thread(user_id="u")
    request = RunRequest(gated_agent(gate), "go", store, tenant_id="default", user_id="u", thread_id=thread.id)
    handle = await runs.start(request)
    await gate.reached.wait()
    with pytest.raises(ThreadBusy) as busy:
        await runs.start(request)
    assert busy.value.run_id == handle.run_id
    await runs.aclose()
    assert handle.interrupted and handle.cancelled
    assert handle.run_id is not None
    assert (await store.get_run(handle.run_id)).status == "interrupted"
    with pytest.raises(ServerShuttingDown):
        await runs.start(request)


def test_grace_must_be_a_finite_non_negative_number() -> None:
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="grace_s"):
            RunManager(grace_s=bad)
