from __future__ import annotations

import pytest

from miniagent import Agent
from miniagent.errors import ThreadNotFound
from miniagent.memory import InMemorySummaryStore, StoredSummary, SummaryStore, WorkingMemory
from miniagent.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from miniagent.store import SQLStore, SQLSummaryStore
from miniagent.testing import AgentInfo, FunctionModel

pytestmark = pytest.mark.anyio

FILLER = "lorem ipsum " * 20


class Summarizer:
    """A summary model function that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> str:
        self.calls += 1
        return f"SUMMARY-{self.calls} of the earlier talk"


class Recorder:
    def __init__(self) -> None:
        self.seen: list[list[ModelMessage]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> str:
        self.seen.append(list(messages))
        return f"answer {len(self.seen)} {FILLER}"


def texts(messages: list[ModelMessage]) -> str:
    return "\n".join(
        p.content for m in messages for p in m.parts if isinstance(p, UserPromptPart | TextPart) and p.content
    )


async def seed(store: SQLStore, turns: int) -> str:
    thread = await store.create_thread(user_id="ada")
    history: list[ModelMessage] = []
    for k in range(turns):
        history.append(ModelRequest([UserPromptPart(f"question {k} {FILLER}")]))
        history.append(ModelResponse([TextPart(f"answer {k} {FILLER}")]))
    await store.append(thread.id, history, expected_leaf=None, user_id="ada")
    return thread.id


async def test_sql_summary_store_round_trip_and_scope(store: SQLStore) -> None:
    thread_id = await seed(store, 3)
    summaries = SQLSummaryStore(store, user_id="ada")
    assert isinstance(summaries, SummaryStore)
    assert await summaries.get(thread_id) is None
    first = StoredSummary("first", message_count=4, covered=(0, 1), fingerprint="f" * 64)
    await summaries.put(thread_id, first)
    assert await summaries.get(thread_id) == first
    second = StoredSummary("second", message_count=6, covered=(0, 1, 2, 3), fingerprint="e" * 64)
    await summaries.put(thread_id, second)  # replaces: one summary per thread
    assert await summaries.get(thread_id) == second

    # Another user or tenant never sees it, nor writes to it.
    for other in (SQLSummaryStore(store, user_id="bob"), SQLSummaryStore(store, user_id="ada", tenant_id="acme")):
        with pytest.raises(ThreadNotFound):
            await other.get(thread_id)
        with pytest.raises(ThreadNotFound):
            await other.put(thread_id, first)
    assert await summaries.get(thread_id) == second

    # Deleting the thread deletes its summary.
    await store.delete_thread(thread_id, user_id="ada")
    with pytest.raises(ThreadNotFound):
        await summaries.get(thread_id)


async def test_summary_survives_a_restart_and_is_not_recomputed(store_url: str) -> None:
    sqlite = store_url.startswith("sqlite")
    store = await SQLStore.open(store_url, migrate=sqlite)
    try:
        thread_id = await seed(store, 20)
        summarizer = Summarizer()
        memory = WorkingMemory(max_tokens=800, summary_model=FunctionModel(summarizer))
        recorder = Recorder()
        agent = Agent(FunctionModel(recorder), working_memory=memory, store=store)
        await agent.run("turn A", user_id="ada", thread_id=thread_id)
        assert summarizer.calls == 1
        assert "SUMMARY-1 of the earlier talk" in texts(recorder.seen[-1])
        assert isinstance(memory.summary_store, InMemorySummaryStore) and len(memory.summary_store) == 0
    finally:
        await store.close()

    # A new process: a new store object, a new working memory and a new summary model.
    reopened = await SQLStore.open(store_url, migrate=sqlite)
    try:
        summarizer2 = Summarizer()
        memory2 = WorkingMemory(max_tokens=800, summary_model=FunctionModel(summarizer2))
        recorder2 = Recorder()
        agent2 = Agent(FunctionModel(recorder2), working_memory=memory2, store=reopened)
        await agent2.run("turn B", user_id="ada", thread_id=thread_id)
        assert summarizer2.calls == 0  # the stored summary applied
        assert memory2.last_fit is not None and memory2.last_fit.summary_requests == 0
        assert memory2.last_fit.evicted > 0
        assert "SUMMARY-1 of the earlier talk" in texts(recorder2.seen[-1])
        stored = await SQLSummaryStore(reopened, user_id="ada").get(thread_id)
        assert stored is not None and stored.text == "SUMMARY-1 of the earlier talk"
    finally:
        await reopened.close()


async def test_an_explicit_summary_store_is_kept(store: SQLStore) -> None:
    thread_id = await seed(store, 20)
    mine = InMemorySummaryStore()
    memory = WorkingMemory(max_tokens=800, summary_model=FunctionModel(Summarizer()), summary_store=mine)
    await Agent(FunctionModel(Recorder()), working_memory=memory, store=store).run(
        "turn A", user_id="ada", thread_id=thread_id
    )
    assert await mine.get(thread_id) is not None
    assert await SQLSummaryStore(store, user_id="ada").get(thread_id) is None


async def test_unreadable_stored_summary_is_written_again(store: SQLStore) -> None:
    from sqlalchemy import update

    from miniagent.store._models import ThreadSummaryRow

    thread_id = await seed(store, 20)
    summarizer = Summarizer()
    memory = WorkingMemory(max_tokens=800, summary_model=FunctionModel(summarizer))
    agent = Agent(FunctionModel(Recorder()), working_memory=memory, store=store)
    await agent.run("turn A", user_id="ada", thread_id=thread_id)
    async with store._session() as session:
        await session.execute(update(ThreadSummaryRow).values(summary="{not json"))
    assert await SQLSummaryStore(store, user_id="ada").get(thread_id) is None
    await agent.run("turn B", user_id="ada", thread_id=thread_id)
    assert summarizer.calls == 2
