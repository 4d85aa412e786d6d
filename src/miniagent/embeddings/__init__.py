"""Embeddings: texts to vectors, for long-term memory's recall.

```python
from miniagent.embeddings import Embedder, HashEmbedder

embedder: Embedder = HashEmbedder()  # tests; `LocalEmbedder()` (offline MiniLM) or `OpenAIEmbedder(...)` for real
```

[`LocalEmbedder`][miniagent.embeddings.LocalEmbedder] needs the `memory` extra and
[`OpenAIEmbedder`][miniagent.embeddings.OpenAIEmbedder] the `openai` one; both import them on first use.
[`BatchingEmbedder`][miniagent.embeddings.BatchingEmbedder] wraps any of them so that the `embed` calls of
concurrent runs go out as one request.
"""

from __future__ import annotations

from ._base import Embedder, HashEmbedder, normalize
from ._batch import BatchingEmbedder
from ._local import LocalEmbedder
from ._openai import OpenAIEmbedder

__all__ = ["BatchingEmbedder", "Embedder", "HashEmbedder", "LocalEmbedder", "OpenAIEmbedder", "normalize"]
