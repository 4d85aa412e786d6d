"""`OpenAIEmbedder`: any OpenAI-compatible `/v1/embeddings` endpoint, through the openai SDK."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import OptionalDependencyError
from ._base import normalize

__all__ = ["OpenAIEmbedder"]


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible server (OpenAI, vLLM, llama.cpp's server, Ollama...).

    Args:
        model: The embedding model's name, e.g. `text-embedding-3-small`.
        dimensions: The vectors' length (sent as `dimensions` when `send_dimensions`).
        base_url: The API's base URL (default: the SDK's, `OPENAI_BASE_URL`).
        api_key: The key (default: `OPENAI_API_KEY`).
        client: An `openai.AsyncOpenAI` to use instead of making one.
        send_dimensions: Ask the server for `dimensions` (OpenAI's v3 models support it; many servers do not).
    """

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        dimensions: int = 1536,
        base_url: str | None = None,
        api_key: str | None = None,
        client: Any = None,
        send_dimensions: bool = False,
    ) -> None:
        self.model = model
        self._dimensions = dimensions
        self.base_url = base_url
        self.api_key = api_key
        self.send_dimensions = send_dimensions
        self._client = client

    @property
    def name(self) -> str:
        """The model's name."""
        return self.model

    @property
    def dimensions(self) -> int:
        """The vectors' length."""
        return self._dimensions

    def _get_client(self) -> Any:
        if self._client is None:
            try:
                import openai
            except ImportError as exc:
                raise OptionalDependencyError("`OpenAIEmbedder`", "openai", missing=exc.name) from exc
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key or "not-needed")
        return self._client

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One request for all `texts`; vectors come back unit-length, in order."""
        if not texts:
            return []
        extra: dict[str, Any] = {"dimensions": self._dimensions} if self.send_dimensions else {}
        response = await self._get_client().embeddings.create(model=self.model, input=list(texts), **extra)
        data = sorted(response.data, key=lambda d: d.index)
        vectors = [normalize(d.embedding) for d in data]
        if vectors and len(vectors[0]) != self._dimensions:
            from ..errors import UserError

            raise UserError(
                f"{self.model!r} returned {len(vectors[0])}-dimensional vectors, not {self._dimensions}: "
                f"pass `dimensions={len(vectors[0])}`."
            )
        return vectors
