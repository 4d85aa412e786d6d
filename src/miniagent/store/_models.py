"""SQLAlchemy 2 models of the store's tables.

Every row carries its `tenant_id`; the first migration creates most of them, `0003` the dead letters, usage records
and last good tool results (and the runs' correlation id, agent name and replay link), `0004` the server's API keys
and message feedback.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiKeyRow",
    "ToolIntentRow",
    "Base",
    "DeadLetterRow",
    "FeedbackRow",
    "MemoryRow",
    "MessageRow",
    "RunEventRow",
    "RunRow",
    "TenantRow",
    "ThreadRow",
    "ThreadSummaryRow",
    "ToolResultRow",
    "UsageRecordRow",
    "UserProfileRow",
    "UserRow",
]

_ID = String(64)
_TS = DateTime(timezone=True)


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""


class TenantRow(Base):
    """A tenant: an isolated set of users and their data."""

    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    retention_days: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class UserRow(Base):
    """A user of a tenant."""

    __tablename__ = "users"
    tenant_id: Mapped[str] = mapped_column(_ID, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class ThreadRow(Base):
    """A conversation; `leaf_id` is its current branch's last message (optimistic concurrency checks it)."""

    __tablename__ = "threads"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"),
        Index("ix_threads_owner", "tenant_id", "user_id", "updated_at"),
    )
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_ID)
    user_id: Mapped[str] = mapped_column(_ID)
    title: Mapped[str | None] = mapped_column(String(200))
    leaf_id: Mapped[str | None] = mapped_column(_ID)
    retention_days: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)
    updated_at: Mapped[dt.datetime] = mapped_column(_TS)


class MessageRow(Base):
    """One `ModelMessage` (JSON via the messages TypeAdapter) in a thread's tree."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_thread", "thread_id", "depth"), Index("ix_messages_parent", "parent_id"))
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_ID)
    thread_id: Mapped[str] = mapped_column(_ID, ForeignKey("threads.id", ondelete="CASCADE"))
    parent_id: Mapped[str | None] = mapped_column(_ID, ForeignKey("messages.id", ondelete="CASCADE"))
    depth: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    data: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(_ID)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class RunRow(Base):
    """A run: its state, steps, usage and error."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_status", "status"),
        Index("ix_runs_thread", "thread_id"),
        Index("ix_runs_correlation", "correlation_id"),
        UniqueConstraint("tenant_id", "user_id", "idempotency_key", name="uq_runs_idempotency"),
    )
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_ID)
    thread_id: Mapped[str | None] = mapped_column(_ID, ForeignKey("threads.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(_ID)
    status: Mapped[str] = mapped_column(String(20))
    steps: Mapped[int] = mapped_column(Integer, default=0)
    usage: Mapped[dict[str, Any]] = mapped_column(JSON)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(_TS)
    updated_at: Mapped[dt.datetime] = mapped_column(_TS)
    finished_at: Mapped[dt.datetime | None] = mapped_column(_TS)
    correlation_id: Mapped[str | None] = mapped_column(String(200))
    agent_name: Mapped[str | None] = mapped_column(String(200))
    replay_of: Mapped[str | None] = mapped_column(_ID)
    via_queue: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """A background run executed by a worker from the job queue (left alone by `recover_interrupted`)."""
    prompt: Mapped[str | None] = mapped_column(Text)
    """A queued run's user message until its worker commits it to the thread (then cleared)."""
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    """The worker running it."""
    lease_until: Mapped[dt.datetime | None] = mapped_column(_TS)
    """Until when that worker holds it (renewed while it runs); past it, another worker takes it over."""
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Times a worker claimed it."""
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """A client asked to cancel it (its worker sees it when it renews its lease)."""
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    """The client's `Idempotency-Key`: a second request with it gets this run instead of a new one."""


class ToolIntentRow(Base):
    """A non-idempotent tool call about to run, committed before it runs: a worker that takes the run over after a
    crash knows the call may have had its effect, and fails the run instead of repeating it.
    """  # noqa: D205

    __tablename__ = "tool_intents"
    run_id: Mapped[str] = mapped_column(_ID, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    tool_call_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    step: Mapped[int] = mapped_column(Integer)
    tool_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class RunEventRow(Base):
    """One event of a run, numbered from 1 so a streaming client can resume after the last one it saw."""

    __tablename__ = "run_events"
    run_id: Mapped[str] = mapped_column(_ID, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_ID)
    kind: Mapped[str] = mapped_column(String(40))
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class UserProfileRow(Base):
    """A user's preferences and custom instructions (used by the profiles feature)."""

    __tablename__ = "user_profiles"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"),
    )
    tenant_id: Mapped[str] = mapped_column(_ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(_ID, primary_key=True)
    preferences: Mapped[dict[str, Any]] = mapped_column(JSON)
    instructions: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(_TS)


class MemoryRow(Base):
    """A long-term fact about a user; `embedding` holds float32 bytes until the vector index lands."""

    __tablename__ = "memories"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"),
        Index("ix_memories_owner", "tenant_id", "user_id"),
    )
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_ID)
    user_id: Mapped[str] = mapped_column(_ID)
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)
    updated_at: Mapped[dt.datetime] = mapped_column(_TS)


class ThreadSummaryRow(Base):
    """The working-memory summary of a thread's evicted messages, up to (and including) `upto_message_id`."""

    __tablename__ = "thread_summaries"
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_ID)
    thread_id: Mapped[str] = mapped_column(_ID, ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    upto_message_id: Mapped[str] = mapped_column(_ID)
    summary: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class DeadLetterRow(Base):
    """A run that failed for good: its input (to replay it), error chain and correlation id.

    No foreign keys: a dead letter outlives its run and thread (retention prunes those; `purge_dead_letters` these).
    """

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_tenant_created", "tenant_id", "created_at"),)
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_ID)
    run_id: Mapped[str] = mapped_column(_ID)
    thread_id: Mapped[str | None] = mapped_column(_ID)
    user_id: Mapped[str] = mapped_column(_ID)
    agent_name: Mapped[str | None] = mapped_column(String(200))
    input: Mapped[str] = mapped_column(Text)
    error_chain: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    error: Mapped[str] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(String(200))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    replay_of: Mapped[str | None] = mapped_column(_ID)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)
    replayed_at: Mapped[dt.datetime | None] = mapped_column(_TS)
    replayed_run_id: Mapped[str | None] = mapped_column(_ID)


class UsageRecordRow(Base):
    """What one model response consumed and cost (`cost_usd` is `NULL` when the model's price is unknown).

    No foreign keys: the records outlive pruned threads and runs, so past costs stay reported.
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_tenant_created", "tenant_id", "created_at"),
        Index("ix_usage_records_user", "tenant_id", "user_id", "created_at"),
        Index("ix_usage_records_model", "tenant_id", "model_name", "created_at"),
        Index("ix_usage_records_thread", "thread_id"),
        Index("ix_usage_records_run", "run_id"),
    )
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_ID)
    user_id: Mapped[str] = mapped_column(_ID)
    thread_id: Mapped[str | None] = mapped_column(_ID)
    run_id: Mapped[str | None] = mapped_column(_ID)
    model_name: Mapped[str] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cache_read_tokens: Mapped[int] = mapped_column(Integer)
    reasoning_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)


class ToolResultRow(Base):
    """The last good result of a tool for one set of arguments (`args_key`, a hash), per tenant and user.

    `user_id` is `''` for results shared by every user of the tenant.
    """

    __tablename__ = "tool_results"
    tenant_id: Mapped[str] = mapped_column(_ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(_ID, primary_key=True)
    tool_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    args_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    stored_at: Mapped[dt.datetime] = mapped_column(_TS)


class ApiKeyRow(Base):
    """An API key of the server: only the HMAC-SHA256 of its secret (`hash`) is kept, with its scopes and lifetime.

    `prefix` (`mk_` and 12 hex digits) is the public start of the secret: it finds the row, and listings show it.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"),
        UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        Index("ix_api_keys_owner", "tenant_id", "user_id"),
    )
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_ID)
    user_id: Mapped[str] = mapped_column(_ID)
    name: Mapped[str | None] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))
    hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)
    expires_at: Mapped[dt.datetime | None] = mapped_column(_TS)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(_TS)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(_TS)


class FeedbackRow(Base):
    """A user's rating of one message (+1 or -1) with an optional comment; one per user and message."""

    __tablename__ = "feedback"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"),
        UniqueConstraint("tenant_id", "user_id", "message_id", name="uq_feedback_owner_message"),
        Index("ix_feedback_thread", "thread_id"),
    )
    id: Mapped[str] = mapped_column(_ID, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(_ID)
    user_id: Mapped[str] = mapped_column(_ID)
    thread_id: Mapped[str] = mapped_column(_ID, ForeignKey("threads.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(_ID, ForeignKey("messages.id", ondelete="CASCADE"))
    rating: Mapped[int] = mapped_column(SmallInteger)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(_TS)
    updated_at: Mapped[dt.datetime] = mapped_column(_TS)
