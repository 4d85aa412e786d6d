"""Dead letters, usage records (cost per model response), last good tool results; runs get correlation and replay.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03

Existing runs keep their rows: the new `runs` columns are nullable and start empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.String(64)
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the runs' columns and create the three tables."""
    op.add_column("runs", sa.Column("correlation_id", sa.String(200)))
    op.add_column("runs", sa.Column("agent_name", sa.String(200)))
    op.add_column("runs", sa.Column("replay_of", _ID))
    op.create_index("ix_runs_correlation", "runs", ["correlation_id"])
    op.create_table(
        "dead_letters",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("run_id", _ID, nullable=False),
        sa.Column("thread_id", _ID),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("agent_name", sa.String(200)),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("error_chain", sa.JSON, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("correlation_id", sa.String(200)),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("replay_of", _ID),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("replayed_at", _TS),
        sa.Column("replayed_run_id", _ID),
    )
    op.create_index("ix_dead_letters_tenant_created", "dead_letters", ["tenant_id", "created_at"])
    op.create_table(
        "usage_records",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("thread_id", _ID),
        sa.Column("run_id", _ID),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cache_read_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_usage_records_tenant_created", "usage_records", ["tenant_id", "created_at"])
    op.create_index("ix_usage_records_user", "usage_records", ["tenant_id", "user_id", "created_at"])
    op.create_index("ix_usage_records_model", "usage_records", ["tenant_id", "model_name", "created_at"])
    op.create_index("ix_usage_records_thread", "usage_records", ["thread_id"])
    op.create_index("ix_usage_records_run", "usage_records", ["run_id"])
    op.create_table(
        "tool_results",
        sa.Column("tenant_id", _ID, primary_key=True),
        sa.Column("user_id", _ID, primary_key=True),
        sa.Column("tool_name", sa.String(200), primary_key=True),
        sa.Column("args_key", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("stored_at", _TS, nullable=False),
    )


def downgrade() -> None:
    """Drop the three tables and the runs' new columns (their data is lost)."""
    op.drop_table("tool_results")
    op.drop_table("usage_records")
    op.drop_table("dead_letters")
    op.drop_index("ix_runs_correlation", table_name="runs")
    # SQLite (3.35+) drops a column in place: no table rebuild, so the runs' events (ON DELETE CASCADE) are untouched.
    for column in ("replay_of", "agent_name", "correlation_id"):
        op.drop_column("runs", column)
