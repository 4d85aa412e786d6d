"""The `VectorIndex` contract and its two implementations: sqlite-vec (SQLite) and pgvector (PostgreSQL).

An index works inside the caller's transaction (an `AsyncSession`), so a memory row and its vector are written, or
not, together. Vectors are partitioned by a `user_key` (tenant, user and embedding model): a search only ever sees
one user's vectors of one model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sqlalchemy import text

from ..errors import OptionalDependencyError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["PgVectorIndex", "SqliteVecIndex", "VectorIndex", "sqlite_vec_table_sql"]


@runtime_checkable
class VectorIndex(Protocol):
    """Nearest-neighbour search over unit vectors by cosine distance, in the store's transaction."""

    async def add(self, session: AsyncSession, user_key: str, items: Sequence[tuple[str, list[float]]]) -> None:
        """Index `(memory_id, vector)` pairs under `user_key` (replacing a memory's previous vector)."""
        ...

    async def remove(self, session: AsyncSession, memory_ids: Sequence[str]) -> None:
        """Forget these memories' vectors."""
        ...

    async def search(
        self, session: AsyncSession, user_key: str, vector: list[float], k: int
    ) -> list[tuple[str, float]]:
        """The `k` nearest `(memory_id, cosine distance)` under `user_key`, nearest first."""
        ...


def sqlite_vec_table_sql(dimensions: int) -> str:
    """The `vec0` table of `dimensions`-long vectors, partitioned by user."""
    return (
        f"CREATE VIRTUAL TABLE IF NOT EXISTS memory_vec_{int(dimensions)} USING vec0("
        "memory_id TEXT PRIMARY KEY, user_key TEXT PARTITION KEY, "
        f"embedding FLOAT[{int(dimensions)}] distance_metric=cosine)"
    )


class SqliteVecIndex:
    """sqlite-vec's `vec0` virtual table (`memory_vec_<dimensions>`): exact KNN, partitioned by user.

    Args:
        dimensions: The vectors' length.
    """

    def __init__(self, dimensions: int) -> None:
        self.dimensions = int(dimensions)
        self.table = f"memory_vec_{self.dimensions}"
        self._ready = False

    async def _ensure(self, session: AsyncSession) -> None:
        if self._ready:
            return
        from sqlalchemy.exc import DBAPIError

        try:
            await session.execute(text("SELECT vec_version()"))
        except DBAPIError as exc:
            raise OptionalDependencyError(
                "Long-term memory on SQLite (sqlite-vec, loaded through a SQLite that allows extensions)", "memory"
            ) from exc
        await session.execute(text(sqlite_vec_table_sql(self.dimensions)))
        self._ready = True

    async def add(self, session: AsyncSession, user_key: str, items: Sequence[tuple[str, list[float]]]) -> None:
        """Insert the vectors (a vec0 table has no upsert: delete, then insert)."""
        await self._ensure(session)
        await self.remove(session, [memory_id for memory_id, _ in items])
        for memory_id, vector in items:
            await session.execute(
                text(f"INSERT INTO {self.table}(memory_id, user_key, embedding) VALUES (:id, :u, :v)"),
                {"id": memory_id, "u": user_key, "v": json.dumps(vector)},
            )

    async def remove(self, session: AsyncSession, memory_ids: Sequence[str]) -> None:
        """Delete the vectors (virtual tables take no foreign keys: the store calls this on delete)."""
        await self._ensure(session)
        for memory_id in memory_ids:
            await session.execute(text(f"DELETE FROM {self.table} WHERE memory_id = :id"), {"id": memory_id})

    async def search(
        self, session: AsyncSession, user_key: str, vector: list[float], k: int
    ) -> list[tuple[str, float]]:
        """KNN within the user's partition."""
        await self._ensure(session)
        rows = await session.execute(
            text(
                f"SELECT memory_id, distance FROM {self.table} "
                "WHERE embedding MATCH :v AND k = :k AND user_key = :u ORDER BY distance"
            ),
            {"v": json.dumps(vector), "k": int(k), "u": user_key},
        )
        return [(str(r[0]), float(r[1])) for r in rows]


class PgVectorIndex:
    """pgvector: the `memory_vectors` table (migration 0002), cosine distance (`<=>`), filtered by user.

    The search is exact within the user's rows (a B-tree on `user_key` narrows them); per-user sets of memories stay
    small enough for that. An HNSW index can be added by a migration for fixed dimensions.
    """

    async def add(self, session: AsyncSession, user_key: str, items: Sequence[tuple[str, list[float]]]) -> None:
        """Upsert the vectors."""
        for memory_id, vector in items:
            await session.execute(
                text(
                    "INSERT INTO memory_vectors(memory_id, user_key, embedding) VALUES (:id, :u, CAST(:v AS vector)) "
                    "ON CONFLICT (memory_id) DO UPDATE SET user_key = EXCLUDED.user_key, embedding = EXCLUDED.embedding"
                ),
                {"id": memory_id, "u": user_key, "v": json.dumps(vector)},
            )

    async def remove(self, session: AsyncSession, memory_ids: Sequence[str]) -> None:
        """Delete the vectors (the foreign key's cascade does it too)."""
        for memory_id in memory_ids:
            await session.execute(text("DELETE FROM memory_vectors WHERE memory_id = :id"), {"id": memory_id})

    async def search(
        self, session: AsyncSession, user_key: str, vector: list[float], k: int
    ) -> list[tuple[str, float]]:
        """The nearest by cosine distance."""
        rows = await session.execute(
            text(
                "SELECT memory_id, embedding <=> CAST(:v AS vector) AS distance FROM memory_vectors "
                "WHERE user_key = :u ORDER BY distance LIMIT :k"
            ),
            {"v": json.dumps(vector), "k": int(k), "u": user_key},
        )
        return [(str(r[0]), float(r[1])) for r in rows]
