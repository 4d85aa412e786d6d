"""The `Embedder` contract: texts in, vectors out."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Embedder", "HashEmbedder", "normalize"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of `dimensions` floats; similar meanings give close vectors (cosine).

    Implement it to plug in any embedding model; `name` identifies the model, so vectors of two models are never
    compared with each other.
    """

    @property
    def name(self) -> str:
        """The model's id (stored with each vector)."""
        ...

    @property
    def dimensions(self) -> int:
        """The length of every vector."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-length vector per text, in order."""
        ...


def normalize(vector: Sequence[float]) -> list[float]:
    """`vector` scaled to unit length (a zero vector stays zero)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else [float(x) for x in vector]


_WORD = re.compile(r"\w+")


class HashEmbedder:
    """A dependency-free lexical embedder: hashed bag of words (and word pairs). For tests and as a baseline.

    It matches shared words only (no synonyms): use [`LocalEmbedder`][miniagent.embeddings.LocalEmbedder] for
    meaning.

    Args:
        dimensions: The vectors' length.
    """

    def __init__(self, dimensions: int = 256) -> None:
        self._dimensions = dimensions

    @property
    def name(self) -> str:
        """`hash-<dimensions>`."""
        return f"hash-{self._dimensions}"

    @property
    def dimensions(self) -> int:
        """The vectors' length."""
        return self._dimensions

    def _one(self, text: str) -> list[float]:
        vector = [0.0] * self._dimensions
        words = [w for w in _WORD.findall(text.lower()) if len(w) > 2]
        for feature in [*words, *(a + " " + b for a, b in zip(words, words[1:], strict=False))]:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % self._dimensions
            vector[index] += 1.0 if digest[4] & 1 else -1.0
        return normalize(vector)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Hash each text's words into a unit vector."""
        return [self._one(t) for t in texts]
