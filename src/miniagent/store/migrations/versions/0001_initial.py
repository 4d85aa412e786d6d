"""The first schema: tenants, users, threads, messages (a tree), runs, run events, profiles, memories, summaries.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.String(64)
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table of the first schema."""
    op.create_table(
        "tenants",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("retention_days", sa.Float),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("tenant_id", _ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("id", _ID, primary_key=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "threads",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("title", sa.String(200)),
        sa.Column("leaf_id", _ID),
        sa.Column("retention_days", sa.Float),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_threads_owner", "threads", ["tenant_id", "user_id", "updated_at"])
    op.create_table(
        "messages",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("thread_id", _ID, sa.ForeignKey("threads.id", ondelete="CASCADE"), nullable=False),
        sa.Column("parent_id", _ID, sa.ForeignKey("messages.id", ondelete="CASCADE")),
        sa.Column("depth", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("run_id", _ID),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_messages_thread", "messages", ["thread_id", "depth"])
    op.create_index("ix_messages_parent", "messages", ["parent_id"])
    op.create_table(
        "runs",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("thread_id", _ID, sa.ForeignKey("threads.id", ondelete="CASCADE")),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("usage", sa.JSON, nullable=False),
        sa.Column("cost_usd", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("owner", sa.String(200)),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("finished_at", _TS),
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_thread", "runs", ["thread_id"])
    op.create_table(
        "run_events",
        sa.Column("run_id", _ID, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "user_profiles",
        sa.Column("tenant_id", _ID, primary_key=True),
        sa.Column("user_id", _ID, primary_key=True),
        sa.Column("preferences", sa.JSON, nullable=False),
        sa.Column("instructions", sa.Text),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"),
    )
    op.create_table(
        "memories",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("embedding", sa.LargeBinary),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_memories_owner", "memories", ["tenant_id", "user_id"])
    op.create_table(
        "thread_summaries",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("thread_id", _ID, sa.ForeignKey("threads.id", ondelete="CASCADE"), nullable=False),
        sa.Column("upto_message_id", _ID, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("tokens", sa.Integer),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_thread_summaries_thread_id", "thread_summaries", ["thread_id"])


def downgrade() -> None:
    """Drop every table of the first schema."""
    for table in ("thread_summaries", "memories", "user_profiles", "run_events", "runs", "messages", "threads"):
        op.drop_table(table)
    op.drop_table("users")
    op.drop_table("tenants")
