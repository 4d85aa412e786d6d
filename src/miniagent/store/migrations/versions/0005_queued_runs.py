"""Background runs through a job queue.

Queued runs, their worker's lease, cancel requests, idempotency keys, and the intents of non-idempotent tool calls.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05

Existing runs are untouched (`via_queue` false, no lease).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ID = sa.String(64)
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the lease columns to `runs` and create `tool_intents`."""
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("via_queue", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("prompt", sa.Text))
        batch.add_column(sa.Column("lease_owner", sa.String(200)))
        batch.add_column(sa.Column("lease_until", _TS))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("idempotency_key", sa.String(200)))
        batch.create_unique_constraint("uq_runs_idempotency", ["tenant_id", "user_id", "idempotency_key"])
    op.create_table(
        "tool_intents",
        sa.Column("run_id", _ID, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tool_call_id", sa.String(200), primary_key=True),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("tool_name", sa.String(200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )


def downgrade() -> None:
    """Drop `tool_intents` and the lease columns (queued runs lose their queue state)."""
    op.drop_table("tool_intents")
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("uq_runs_idempotency", type_="unique")
        for column in (
            "idempotency_key",
            "cancel_requested",
            "attempts",
            "lease_until",
            "lease_owner",
            "prompt",
            "via_queue",
        ):
            batch.drop_column(column)
