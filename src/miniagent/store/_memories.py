"""`MemoryStore`: a user's long-term memories (facts with embeddings) in the store, with a vector index.

A memory's row (its text and float32 embedding) and its vector in the index are written in one transaction.
"""

from __future__ import annotations

import builtins
import datetime as dt
import struct
import uuid
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from ..errors import StoreError
from ._base import DEFAULT_USER, traced
from ._models import MemoryRow
from ._vectors import PgVectorIndex, SqliteVecIndex, VectorIndex

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from ..embeddings import Embedder
    from ._sql import SQLStore

__all__ = ["Memory", "MemoryStore"]


@dataclass(frozen=True, slots=True)
class Memory:
    """A lasting fact about a user."""

    id: str
    """The memory's id."""
    text: str
    """The fact, one sentence."""
    _: KW_ONLY
    user_id: str
    """Whose fact it is."""
    created_at: dt.datetime
    """When it was stored."""
    updated_at: dt.datetime
    """When it was last edited."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form data (the embedding model's name is kept under `model`)."""
    score: float | None = None
    """Cosine similarity to the query, for recalled memories."""


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _pack(vector: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


class MemoryStore:
    """List, add, edit, delete and recall a user's memories in a [`SQLStore`][miniagent.store.SQLStore].

    Args:
        store: The store (SQLite uses sqlite-vec, PostgreSQL pgvector).
        embedder: Makes the vectors; its `name` partitions them (vectors of two models are never compared).
        index: Another `VectorIndex` (default: the store's backend's).
    """

    def __init__(self, store: SQLStore, embedder: Embedder, *, index: VectorIndex | None = None) -> None:
        self.store = store
        self.embedder = embedder
        self.index: VectorIndex = index or (SqliteVecIndex(embedder.dimensions) if store.is_sqlite else PgVectorIndex())

    def _user_key(self, tenant: str, user_id: str) -> str:
        return f"{tenant}/{user_id}/{self.embedder.name}"

    @staticmethod
    def _memory(row: MemoryRow, score: float | None = None) -> Memory:
        return Memory(
            row.id,
            row.text,
            user_id=row.user_id,
            created_at=_aware(row.created_at),
            updated_at=_aware(row.updated_at),
            meta=dict(row.meta or {}),
            score=score,
        )

    async def _row(self, session: AsyncSession, memory_id: str, user_id: str, tenant: str) -> MemoryRow:
        row = await session.get(MemoryRow, memory_id)
        if row is None or row.user_id != user_id or row.tenant_id != tenant:
            raise StoreError(f"No memory {memory_id!r} for user {user_id!r}: list them with `list()`.")
        return row

    @traced("memories.add")
    async def add(
        self,
        texts: Sequence[str],
        *,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> builtins.list[Memory]:
        """Store facts about the user (embedded first, then rows and vectors in one transaction)."""
        if not texts:
            return []
        vectors = await self.embedder.embed(list(texts))
        tenant = tenant_id or self.store.tenant_id
        now = self.store.now()
        rows = [
            MemoryRow(
                id=uuid.uuid4().hex,
                tenant_id=tenant,
                user_id=user_id,
                text=text,
                embedding=_pack(vector),
                meta={**(meta or {}), "model": self.embedder.name},
                created_at=now + dt.timedelta(microseconds=i),  # listed in the order given
                updated_at=now + dt.timedelta(microseconds=i),
            )
            for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))
        ]
        async with self.store._session() as session:
            await self.store._ensure_user(session, tenant, user_id)
            session.add_all(rows)
            await session.flush()
            await self.index.add(
                session, self._user_key(tenant, user_id), [(r.id, v) for r, v in zip(rows, vectors, strict=True)]
            )
        return [self._memory(r) for r in rows]

    @traced("memories.list")
    async def list(
        self, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None, limit: int = 200
    ) -> builtins.list[Memory]:
        """The user's memories, oldest first."""
        async with self.store._session() as session:
            rows = await session.scalars(
                select(MemoryRow)
                .where(MemoryRow.tenant_id == (tenant_id or self.store.tenant_id), MemoryRow.user_id == user_id)
                .order_by(MemoryRow.created_at, MemoryRow.id)
                .limit(limit)
            )
            return [self._memory(r) for r in rows]

    @traced("memories.edit")
    async def edit(
        self, memory_id: str, text: str, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None
    ) -> Memory:
        """Replace a memory's text (and its vector)."""
        tenant = tenant_id or self.store.tenant_id
        (vector,) = await self.embedder.embed([text])
        async with self.store._session() as session:
            row = await self._row(session, memory_id, user_id, tenant)
            row.text = text
            row.embedding = _pack(vector)
            row.meta = {**(row.meta or {}), "model": self.embedder.name}
            row.updated_at = self.store.now()
            await session.flush()
            await self.index.add(session, self._user_key(tenant, user_id), [(row.id, vector)])
            return self._memory(row)

    @traced("memories.delete")
    async def delete(self, memory_id: str, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None) -> None:
        """Forget a memory."""
        tenant = tenant_id or self.store.tenant_id
        async with self.store._session() as session:
            row = await self._row(session, memory_id, user_id, tenant)
            await self.index.remove(session, [row.id])
            await session.execute(
                delete(MemoryRow).where(MemoryRow.id == row.id).execution_options(synchronize_session=False)
            )

    @traced("memories.recall")
    async def recall(
        self,
        query: str,
        *,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        k: int = 5,
        min_score: float = 0.0,
    ) -> builtins.list[Memory]:
        """The `k` memories nearest to `query` (cosine similarity at least `min_score`), most similar first."""
        (vector,) = await self.embedder.embed([query])
        return await self.recall_vector(vector, user_id=user_id, tenant_id=tenant_id, k=k, min_score=min_score)

    @traced("memories.recall_vector")
    async def recall_vector(
        self,
        vector: builtins.list[float],
        *,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        k: int = 5,
        min_score: float = 0.0,
    ) -> builtins.list[Memory]:
        """`recall` with an embedded query."""
        tenant = tenant_id or self.store.tenant_id
        async with self.store._session() as session:
            hits = await self.index.search(session, self._user_key(tenant, user_id), vector, k)
            if not hits:
                return []
            rows = {
                r.id: r for r in await session.scalars(select(MemoryRow).where(MemoryRow.id.in_([h for h, _ in hits])))
            }
            out = []
            for memory_id, distance in hits:
                row = rows.get(memory_id)
                score = 1.0 - distance
                if row is not None and row.user_id == user_id and row.tenant_id == tenant and score >= min_score:
                    out.append(self._memory(row, score))
            return out
