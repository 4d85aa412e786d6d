from __future__ import annotations

import datetime as dt

import anyio
import pytest

from miniagent import Agent
from miniagent.errors import ThreadConflict, ThreadNotFound
from miniagent.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, prompt_part
from miniagent.store import SQLStore, Store
from miniagent.testing import FunctionModel, ScriptedModel

pytestmark = pytest.mark.anyio


def _req(text: str) -> ModelRequest:
    return ModelRequest([prompt_part(text)])


def _resp(text: str) -> ModelResponse:
    return ModelResponse([TextPart(text)])


def _texts(messages: list[ModelMessage]) -> list[str]:
    out = []
    for m in messages:
        part = m.parts[0]
        out.append(str(getattr(part, "content", "")))
    return out


async def test_store_is_a_store_and_round_trips_messages(store: SQLStore) -> None:
    assert isinstance(store, Store)
    thread = await store.create_thread(user_id="alice")
    ids = await store.append(thread.id, [_req("hi"), _resp("hello")], expected_leaf=None, user_id="alice")
    history = await store.history(thread.id, user_id="alice")
    assert [h.id for h in history] == ids
    assert [h.parent_id for h in history] == [None, ids[0]]
    assert _texts([h.message for h in history]) == ["hi", "hello"]
    info = await store.get_thread(thread.id, user_id="alice")
    assert info.leaf_id == ids[-1] and info.title == "hi"
    assert [t.id for t in await store.list_threads(user_id="alice")] == [thread.id]


async def test_another_users_or_tenants_thread_is_not_found(store: SQLStore) -> None:
    thread = await store.create_thread(user_id="alice")
    await store.append(thread.id, [_req("secret")], expected_leaf=None, user_id="alice")
    with pytest.raises(ThreadNotFound, match="No thread"):
        await store.history(thread.id, user_id="mallory")
    with pytest.raises(ThreadNotFound):
        await store.history(thread.id, user_id="alice", tenant_id="other")
    with pytest.raises(ThreadNotFound):
        await store.append(thread.id, [_req("x")], expected_leaf=None, user_id="mallory")
    with pytest.raises(ThreadNotFound):
        await store.get_thread("no-such-thread", user_id="alice")
    assert await store.list_threads(user_id="mallory") == []


async def test_concurrent_appends_never_corrupt_the_thread(store: SQLStore) -> None:
    thread = await store.create_thread()
    first = await store.append(thread.id, [_req("start")], expected_leaf=None)
    # Both writers read the same leaf, then write at once: one wins, the other gets a clear conflict.
    both_read = anyio.Event()
    ready = 0
    results: dict[str, object] = {}

    async def writer(name: str) -> None:
        nonlocal ready
        leaf = (await store.get_thread(thread.id)).leaf_id
        ready += 1
        if ready == 2:
            both_read.set()
        await both_read.wait()
        try:
            results[name] = await store.append(thread.id, [_resp(name), _req(name + "?")], expected_leaf=leaf)
        except ThreadConflict as exc:
            results[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer, "a")
        tg.start_soon(writer, "b")
    conflicts = [r for r in results.values() if isinstance(r, ThreadConflict)]
    winners = [r for r in results.values() if isinstance(r, list)]
    assert len(conflicts) == 1 and len(winners) == 1
    assert "reload the thread and retry" in str(conflicts[0]).lower()
    history = await store.history(thread.id)
    assert [h.id for h in history] == first + winners[0]
    assert len(await store.branches(thread.id)) == 1


async def test_many_concurrent_writers_with_retry_serialize(store: SQLStore) -> None:
    thread = await store.create_thread()
    start = anyio.Event()

    async def writer(i: int) -> None:
        await start.wait()
        while True:
            leaf = (await store.get_thread(thread.id)).leaf_id
            try:
                await store.append(thread.id, [_req(f"m{i}")], expected_leaf=leaf)
                return
            except ThreadConflict:
                continue

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(writer, i)
        start.set()
    history = await store.history(thread.id)
    assert sorted(_texts([h.message for h in history])) == [f"m{i}" for i in range(6)]
    assert [h.depth for h in history] == list(range(6))


async def test_branching_edit_regenerate_switch(store: SQLStore) -> None:
    thread = await store.create_thread(user_id="u")
    replies = iter(["Paris.", "Lyon.", "Rome."])
    agent = Agent(FunctionModel(lambda messages, info: next(replies)), store=store)
    first = await agent.run("Capital of France?", thread_id=thread.id, user_id="u")
    assert first.output == "Paris." and first.thread_id == thread.id
    history = await store.history(thread.id, user_id="u")
    response_id = history[-1].id
    # Regenerate: a sibling answer to the same question.
    await store.regenerate(thread.id, response_id, user_id="u")
    again = await agent.run(None, thread_id=thread.id, user_id="u")
    assert again.output == "Lyon."
    branches = await store.branches(thread.id, user_id="u")
    assert len(branches) == 2 and sum(b.current for b in branches) == 1
    # Edit the user message: a sibling question with its own answer.
    question_id = history[0].id
    await store.edit_message(thread.id, question_id, _req("Capital of Italy?"), user_id="u")
    edited = await agent.run(None, thread_id=thread.id, user_id="u")
    assert edited.output == "Rome."
    assert _texts(await store.messages(thread.id, user_id="u")) == ["Capital of Italy?", "Rome."]
    branches = await store.branches(thread.id, user_id="u")
    assert len(branches) == 3
    assert {b.preview for b in branches} == {"Capital of France?", "Capital of Italy?"}
    # Switch back to the first answer and continue there.
    await store.switch(thread.id, response_id, user_id="u")
    assert _texts(await store.messages(thread.id, user_id="u")) == ["Capital of France?", "Paris."]
    with pytest.raises(ThreadNotFound):
        await store.switch(thread.id, "nope", user_id="u")


async def test_agent_run_saves_steps_run_and_events(store: SQLStore) -> None:
    agent = Agent(ScriptedModel(["one", "two"]), store=store)
    first = await agent.run("hello", user_id="bob")
    assert first.thread_id is not None
    second = await agent.run("again", thread_id=first.thread_id, user_id="bob")
    assert second.output == "two"
    assert _texts(second.all_messages()) == ["hello", "one", "again", "two"]
    assert _texts(await store.messages(first.thread_id, user_id="bob")) == ["hello", "one", "again", "two"]
    record = await store.get_run(second.run_id)
    assert record.status == "succeeded" and record.steps == 1 and record.usage.requests == 1
    events = await store.events(second.run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].event.kind == "run-started" and events[-1].event.kind == "run-finished"
    resumed = await store.events(second.run_id, after_seq=2)
    assert [e.seq for e in resumed] == list(range(3, len(events) + 1))
    with pytest.raises(ThreadNotFound):
        await agent.run("peek", thread_id=first.thread_id, user_id="eve")


async def test_a_failed_run_is_recorded_with_its_committed_messages(store: SQLStore) -> None:
    def boom(messages: list[ModelMessage], info: object) -> str:
        raise RuntimeError("model exploded")

    agent = Agent(FunctionModel(boom), store=store)
    thread = await store.create_thread()
    with pytest.raises(RuntimeError):
        await agent.run("hi", thread_id=thread.id)
    assert _texts(await store.messages(thread.id)) == ["hi"]  # committed before the model was called
    runs = await store.recover_interrupted()
    assert runs == []
    (stored,) = await store.history(thread.id)
    record = await store.get_run(stored.run_id or "")
    assert record.status == "failed" and "model exploded" in (record.error or "")


async def test_retention_prunes_idle_threads_by_ttl(store_url: str) -> None:
    clock = [dt.datetime(2025, 1, 1, tzinfo=dt.UTC)]
    store = await SQLStore.open(store_url, migrate=store_url.startswith("sqlite"), now=lambda: clock[0])
    try:
        old = await store.create_thread()
        await store.append(old.id, [_req("old")], expected_leaf=None)
        keep = await store.create_thread()
        await store.set_retention(days=None, thread_id=keep.id)  # no own TTL: the tenant's applies
        short = await store.create_thread(retention_days=1)
        await store.set_retention(days=30)  # the tenant's TTL
        clock[0] += dt.timedelta(days=2)
        fresh = await store.create_thread()
        report = await store.prune()
        assert report.thread_ids == [short.id]
        clock[0] += dt.timedelta(days=40)
        report = await store.prune()
        assert set(report.thread_ids) == {old.id, keep.id, fresh.id}
        with pytest.raises(ThreadNotFound):
            await store.history(old.id)
    finally:
        await store.close()
