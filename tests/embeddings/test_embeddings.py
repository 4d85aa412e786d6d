from __future__ import annotations

import math
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from miniagent.embeddings import Embedder, HashEmbedder, LocalEmbedder, OpenAIEmbedder

pytestmark = pytest.mark.anyio


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_local_embedder_works_with_the_network_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    embedder = LocalEmbedder()
    assert isinstance(embedder, Embedder)
    facts = await embedder.embed(["The user lives in Lyon.", "The user has a cat named Felix.", "Where do I live?"])
    assert [len(v) for v in facts] == [384, 384, 384]
    assert all(math.isclose(cosine(v, v), 1.0, rel_tol=1e-4) for v in facts)
    assert cosine(facts[2], facts[0]) > cosine(facts[2], facts[1])
    assert await embedder.embed([]) == []


async def test_hash_embedder_matches_shared_words() -> None:
    embedder = HashEmbedder(64)
    a, b, c = await embedder.embed(["coffee without sugar", "sugar in my coffee", "the train to Paris"])
    assert embedder.dimensions == len(a) == 64 and embedder.name == "hash-64"
    assert cosine(a, b) > cosine(a, c)


async def test_openai_embedder_calls_the_embeddings_endpoint() -> None:
    calls: list[dict[str, Any]] = []

    class Embeddings:
        async def create(self, **kwargs: Any) -> Any:
            calls.append(kwargs)
            data = [SimpleNamespace(index=i, embedding=[3.0, 4.0]) for i in reversed(range(len(kwargs["input"])))]
            return SimpleNamespace(data=data)

    embedder = OpenAIEmbedder("m", dimensions=2, client=SimpleNamespace(embeddings=Embeddings()))
    assert await embedder.embed(["a", "b"]) == [[0.6, 0.8], [0.6, 0.8]]
    assert calls == [{"model": "m", "input": ["a", "b"]}]
    wrong = OpenAIEmbedder("m", dimensions=3, client=SimpleNamespace(embeddings=Embeddings()))
    with pytest.raises(Exception, match="pass `dimensions=2`"):
        await wrong.embed(["a"])
