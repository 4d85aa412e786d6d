from __future__ import annotations

import pytest

from miniagent.embeddings import LocalEmbedder
from miniagent.store import MemoryStore, SQLStore, StoreError

pytestmark = pytest.mark.anyio

FACTS = [
    "The user lives in Lyon, France.",
    "The user is allergic to peanuts.",
    "The user's daughter is called Emma.",
    "The user works as a nurse on night shifts.",
    "The user prefers answers in metric units.",
]


async def test_recall_returns_the_relevant_fact(store: SQLStore) -> None:
    memories = MemoryStore(store, LocalEmbedder())
    await memories.add(FACTS, user_id="alice")
    await memories.add(["The user lives in Oslo."], user_id="bob")
    hits = await memories.recall("Which city is my home?", user_id="alice", k=3)
    assert hits[0].text == FACTS[0]
    assert [h.score for h in hits] == sorted((h.score or 0.0 for h in hits), reverse=True)
    assert all(h.user_id == "alice" for h in hits)
    food = await memories.recall("Can I eat this satay sauce?", user_id="alice", k=1)
    assert food[0].text == FACTS[1]
    assert [m.text for m in await memories.recall("Which city?", user_id="bob")] == ["The user lives in Oslo."]


async def test_list_edit_delete(store: SQLStore) -> None:
    memories = MemoryStore(store, LocalEmbedder())
    added = await memories.add(FACTS[:3], user_id="alice")
    assert [m.text for m in await memories.list(user_id="alice")] == FACTS[:3]
    edited = await memories.edit(added[0].id, "The user moved to Berlin.", user_id="alice")
    assert edited.text == "The user moved to Berlin."
    assert (await memories.recall("Where do I live now?", user_id="alice", k=1))[0].id == added[0].id
    await memories.delete(added[0].id, user_id="alice")
    assert [m.text for m in await memories.list(user_id="alice")] == FACTS[1:3]
    assert all(m.id != added[0].id for m in await memories.recall("Where do I live?", user_id="alice"))
    with pytest.raises(StoreError, match="No memory"):
        await memories.delete(added[1].id, user_id="mallory")  # another user's memory is never touched
    assert len(await memories.list(user_id="alice")) == 2
