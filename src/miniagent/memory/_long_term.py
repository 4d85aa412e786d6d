"""`LongTermMemory`: facts about a user, extracted after each turn and recalled before the next request.

After a stored run (one with a `user_id`), the model reads the turn and returns the lasting facts it learnt about the
user (structured output); they are embedded and stored. Before a run, the memories nearest to the user's prompt are
recalled and sent to the model as a system note (not saved in the thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from ..messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart

if TYPE_CHECKING:
    from ..embeddings import Embedder
    from ..models import Model
    from ..store import SQLStore
    from ..store._memories import Memory, MemoryStore
    from ..usage import Usage

__all__ = ["EXTRACTION_INSTRUCTIONS", "ExtractedFacts", "LongTermMemory"]

EXTRACTION_INSTRUCTIONS = (
    "You maintain long-term memory about the user. From the conversation turn below, list the lasting facts about "
    "the user worth remembering in later conversations: who they are, where they live, their preferences, plans, "
    "relationships, constraints. One short third-person sentence per fact (e.g. 'The user lives in Lyon.'). Skip "
    "small talk, questions, one-off requests and facts already known (listed under 'Known'). Return an empty list "
    "when there is nothing new."
)


class ExtractedFacts(BaseModel):
    """The extraction's structured output."""

    facts: list[str] = Field(default_factory=list, description="New lasting facts about the user, one per item.")


def _turn_text(messages: Sequence[ModelMessage]) -> str:
    lines = []
    for message in messages:
        if isinstance(message, ModelRequest):
            lines += [f"User: {p.content}" for p in message.parts if isinstance(p, UserPromptPart)]
        elif isinstance(message, ModelResponse):
            lines += [f"Assistant: {p.content}" for p in message.parts if isinstance(p, TextPart) and p.content]
    return "\n".join(lines)


class LongTermMemory:
    """Remember facts about each user across conversations: `Agent(long_term_memory=LongTermMemory())`.

    Active for runs with a store and a `user_id`; without them a run neither recalls nor extracts.

    Args:
        embedder: Makes the vectors, used as given (default: [`LocalEmbedder`][miniagent.embeddings.LocalEmbedder],
            offline; needs the `memory` extra, else the first stored run raises `OptionalDependencyError`). Every run
            of the agent shares it: wrap a remote one in a
            [`BatchingEmbedder`][miniagent.embeddings.BatchingEmbedder] and the recalls and extractions of
            concurrent runs go out as shared requests.
        k: How many memories are recalled per request.
        min_score: The least cosine similarity of a recalled memory.
        extract: Extract facts after each turn (`False`: recall only, memories added through `memories()`).
        extraction_model: The model that extracts (default: the run's).
        instructions: The extraction's instructions.
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        k: int = 5,
        min_score: float = 0.2,
        extract: bool = True,
        extraction_model: Model | str | None = None,
        instructions: str = EXTRACTION_INSTRUCTIONS,
    ) -> None:
        self._embedder = embedder
        self.k = k
        self.min_score = min_score
        self.extract = extract
        self.extraction_model = extraction_model
        self.instructions = instructions

    @property
    def embedder(self) -> Embedder:
        """The embedder (the local one is made on first use)."""
        if self._embedder is None:
            from ..embeddings import LocalEmbedder

            self._embedder = LocalEmbedder()
        return self._embedder

    def memories(self, store: SQLStore) -> MemoryStore:
        """The memories in `store`: list, add, edit, delete, recall."""
        from ..store._memories import MemoryStore

        return MemoryStore(store, self.embedder)

    async def recall(self, store: SQLStore, *, user_id: str, query: str) -> list[Memory]:
        """The user's memories most relevant to `query`."""
        if not query.strip():
            return []
        return await self.memories(store).recall(query, user_id=user_id, k=self.k, min_score=self.min_score)

    @staticmethod
    def note(memories: Sequence[Memory]) -> str:
        """The system note that carries recalled memories to the model."""
        facts = "\n".join(f"- {m.text}" for m in memories)
        return f"What you remember about the user from earlier conversations (use it when relevant):\n{facts}"

    async def remember(
        self, store: SQLStore, *, user_id: str, model: Model, messages: Sequence[ModelMessage], usage: Usage
    ) -> list[Memory]:
        """Extract the turn's new facts about the user with the model and store them; returns the stored ones."""
        turn = _turn_text(messages)
        if not self.extract or not turn:
            return []
        from ..agent import Agent

        memories = self.memories(store)
        known = await memories.recall(turn, user_id=user_id, k=self.k, min_score=self.min_score)
        prompt = turn if not known else "Known:\n" + "\n".join(f"- {m.text}" for m in known) + "\n\nTurn:\n" + turn
        extractor: Agent[None, ExtractedFacts] = Agent(
            self.extraction_model or model, instructions=self.instructions, output_type=ExtractedFacts
        )
        result = await extractor.run(prompt)
        usage.incr(result.usage)
        have = {m.text.strip().lower() for m in known}
        new = [f.strip() for f in result.output.facts if f.strip() and f.strip().lower() not in have]
        return await memories.add(new, user_id=user_id) if new else []
