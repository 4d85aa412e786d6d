from __future__ import annotations

import json
from pathlib import Path

import pytest

from miniagent import Agent, ModelMessage, ModelResponse, SystemPromptPart, TextPart, ToolCallPart
from miniagent.embeddings import HashEmbedder
from miniagent.memory import LongTermMemory
from miniagent.store import SQLStore
from miniagent.testing import AgentInfo, FunctionModel

pytestmark = pytest.mark.anyio


class Chat:
    """Answers chat requests; answers extraction requests (the `final_result` tool) with scripted facts."""

    def __init__(self, facts: list[list[str]]) -> None:
        self.facts = facts
        self.chat_seen: list[list[ModelMessage]] = []
        self.extractions = 0

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if any(t.name == "final_result" for t in info.params.output_tools):
            facts = self.facts[self.extractions] if self.extractions < len(self.facts) else []
            self.extractions += 1
            return ModelResponse([ToolCallPart("final_result", json.dumps({"facts": facts}), "x")])
        self.chat_seen.append(messages)
        return ModelResponse([TextPart("Noted.")])


def system_texts(messages: list[ModelMessage]) -> list[str]:
    return [p.content for m in messages for p in getattr(m, "parts", []) if isinstance(p, SystemPromptPart)]


async def test_facts_are_extracted_then_recalled_in_a_later_thread(tmp_path: Path) -> None:
    chat = Chat([["The user's dog is called Rex."], []])
    memory = LongTermMemory(HashEmbedder(), min_score=0.05)
    async with await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 's.db'}") as store:
        agent = Agent(FunctionModel(chat), instructions="Be brief.", store=store, long_term_memory=memory)
        first = await agent.run("My dog is called Rex.", user_id="alice")
        assert chat.extractions == 1 and first.usage.requests == 2  # the extraction counts in the run's usage
        assert [m.text for m in await memory.memories(store).list(user_id="alice")] == ["The user's dog is called Rex."]
        second = await agent.run("What is my dog called?", user_id="alice")  # a new thread
        assert second.thread_id != first.thread_id
        notes = [s for s in system_texts(chat.chat_seen[-1]) if "remember" in s]
        assert notes and "Rex" in notes[0]
        assert "remember" not in str(await store.messages(second.thread_id or "", user_id="alice"))  # never stored
        # another user recalls nothing of alice's
        await agent.run("What is my dog called?", user_id="bob")
        assert not any("Rex" in s for s in system_texts(chat.chat_seen[-1]))


async def test_without_a_store_nothing_is_recalled_or_extracted() -> None:
    chat = Chat([])
    agent = Agent(FunctionModel(chat), long_term_memory=LongTermMemory(HashEmbedder()))
    result = await agent.run("My dog is called Rex.")
    assert result.output == "Noted." and chat.extractions == 0
