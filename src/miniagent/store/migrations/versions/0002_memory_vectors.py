"""Vector index of long-term memories: pgvector on PostgreSQL, a sqlite-vec `vec0` table on SQLite.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

On SQLite the `vec0` table (384 dimensions, the default embedder's) is created only when sqlite-vec is loaded into
the connection (the `memory` extra); otherwise, and for other dimensions, the index creates its table on first use.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the vector index's table."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
        op.execute(
            "CREATE TABLE memory_vectors ("
            " memory_id VARCHAR(64) PRIMARY KEY REFERENCES memories(id) ON DELETE CASCADE,"
            " user_key VARCHAR(300) NOT NULL,"
            " embedding vector NOT NULL)"
        )
        op.create_index("ix_memory_vectors_user_key", "memory_vectors", ["user_key"])
        return
    from miniagent.store._vectors import sqlite_vec_table_sql

    try:
        bind.exec_driver_sql("SELECT vec_version()")
    except sa.exc.DBAPIError:
        return  # no sqlite-vec in this connection: created on first use once the `memory` extra is installed
    bind.exec_driver_sql(sqlite_vec_table_sql(384))


def downgrade() -> None:
    """Drop the vector index's table."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TABLE IF EXISTS memory_vectors")
        return
    try:
        bind.exec_driver_sql("SELECT vec_version()")
    except sa.exc.DBAPIError:
        return
    bind.exec_driver_sql("DROP TABLE IF EXISTS memory_vec_384")
