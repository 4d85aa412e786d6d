"""The native API's request and response bodies (pydantic models: they make the published `openapi.json`)."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from ...store import Branch, Memory, RunRecord, StoredMessage, ThreadInfo, UsageRow, UserProfile
    from ...store._feedback import Feedback
    from ...usage import Usage

__all__ = [
    "BranchList",
    "BranchOut",
    "CreateThreadIn",
    "EditMessageIn",
    "FeedbackIn",
    "FeedbackList",
    "FeedbackOut",
    "MemoryList",
    "MemoryOut",
    "MemoryPatch",
    "MessageOut",
    "PostMessageIn",
    "ProfileIn",
    "ProfileOut",
    "RegenerateIn",
    "RunIn",
    "RunList",
    "RunOut",
    "RunResumeIn",
    "RunState",
    "ThreadDetail",
    "ThreadList",
    "ThreadOut",
    "UsageOut",
    "UsageReportOut",
    "UsageRowOut",
]

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]  # as `ID_PATTERN`
"""An id in a body (threads, runs, messages...)."""
AgentName = Annotated[str, Field(min_length=1, max_length=200)]
"""A served agent's name."""
Content = Annotated[str, Field(min_length=1, max_length=100_000)]
"""A user message's text."""


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _no_nul(self) -> _In:
        # PostgreSQL text cannot hold NUL characters: refuse them here, as a 422, not as a store failure.
        for name in type(self).model_fields:
            if _has_nul(getattr(self, name)):
                raise ValueError(f"`{name}` contains a NUL character (\\u0000): remove it.")
        return self


class CreateThreadIn(_In):
    """Start a thread."""

    title: Annotated[str, Field(max_length=200)] | None = None
    """A title (default: the start of the first message)."""


class _RunOptions(_In):
    agent: AgentName | None = None
    """The agent that answers (default: the server's first agent)."""
    background: bool = False
    """Return `202` with the run at once (follow it with `GET /api/v1/runs/{id}/events`) instead of waiting."""


class PostMessageIn(_RunOptions):
    """Post a user message to a thread and run the agent on it."""

    content: Content
    """The user's message."""


class EditMessageIn(_RunOptions):
    """Replace a past user message (a new branch) and run the agent on the edited conversation."""

    content: Content
    """The new text of the message."""


class RegenerateIn(_RunOptions):
    """Answer a message's request again (a new branch)."""


class RunIn(_RunOptions):
    """Start a run: continue a thread of yours, or start a new one."""

    prompt: Content
    """The user's message."""
    thread_id: Id | None = None
    """The thread to continue (default: a new thread)."""


class RunResumeIn(_RunOptions):
    """Resume an interrupted, cancelled or failed run (a new run continues its thread)."""


class FeedbackIn(_In):
    """Rate a message."""

    rating: Literal[1, -1]
    """`1` (thumbs up) or `-1` (thumbs down)."""
    comment: Annotated[str, Field(max_length=4000)] | None = None
    """What you think of the answer."""


class MemoryPatch(_In):
    """Change a memory's text."""

    text: Annotated[str, Field(min_length=1, max_length=2000)]
    """The fact, one sentence."""


class ProfileIn(_In):
    """The whole profile (replaces it)."""

    preferences: dict[Annotated[str, Field(min_length=1, max_length=100)], Annotated[str, Field(max_length=1000)]] = (
        Field(default_factory=dict, max_length=100)
    )
    """Preferences such as `tone`, `language`, `units`."""
    instructions: Annotated[str, Field(max_length=8000)] | None = None
    """Custom instructions the agent follows."""


# ---- responses ---------------------------------------------------------------------------------------------------


class UsageOut(BaseModel):
    """What a run consumed."""

    requests: int = 0
    """Model requests."""
    tool_calls: int = 0
    """Tool calls."""
    input_tokens: int = 0
    """Prompt tokens."""
    output_tokens: int = 0
    """Generated tokens."""
    cache_read_tokens: int = 0
    """Prompt tokens read from the provider's cache."""
    reasoning_tokens: int = 0
    """Generated tokens spent on reasoning."""
    cost_usd: float | None = 0.0
    """The cost in USD (`null` when a model's price is unknown)."""

    @classmethod
    def of(cls, usage: Usage) -> UsageOut:
        """From a `Usage`."""
        return cls(
            requests=usage.requests,
            tool_calls=usage.tool_calls,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=usage.cost_usd,
        )


class ThreadOut(BaseModel):
    """A thread."""

    id: str
    """Its id."""
    title: str | None
    """Its title."""
    leaf_id: str | None
    """The last message of its current branch."""
    created_at: dt.datetime
    """When it was created."""
    updated_at: dt.datetime
    """Its last activity."""

    @classmethod
    def of(cls, info: ThreadInfo) -> ThreadOut:
        """From a `ThreadInfo`."""
        return cls(
            id=info.id, title=info.title, leaf_id=info.leaf_id, created_at=info.created_at, updated_at=info.updated_at
        )


class MessageOut(BaseModel):
    """One message of a thread."""

    id: str
    """Its id (rate it, edit it, regenerate it, switch to it by this id)."""
    parent_id: str | None
    """The message before it."""
    depth: int
    """Its position on its branch, from 0."""
    run_id: str | None
    """The run that wrote it (`null` for an edited message)."""
    created_at: dt.datetime
    """When it was written."""
    role: Literal["user", "assistant", "tool"]
    """`user` (a request with the user's text), `assistant` (a model response), `tool` (tool results, retries)."""
    text: str
    """Its text: the user's prompt or the model's answer (empty for tool messages)."""
    message: dict[str, Any]
    """The whole message in miniagent's format (parts: text, tool calls, tool returns...)."""

    @classmethod
    def of(cls, stored: StoredMessage) -> MessageOut:
        """From a `StoredMessage`."""
        from ...messages import ModelResponse, UserPromptPart, messages_to_json

        message = stored.message
        if isinstance(message, ModelResponse):
            role: Literal["user", "assistant", "tool"] = "assistant"
            text = message.text
        else:
            prompts = [p.content for p in message.parts if isinstance(p, UserPromptPart)]
            role, text = ("user", "\n".join(prompts)) if prompts else ("tool", "")
        data = json.loads(messages_to_json([message]))[0]
        return cls(
            id=stored.id,
            parent_id=stored.parent_id,
            depth=stored.depth,
            run_id=stored.run_id,
            created_at=stored.created_at,
            role=role,
            text=text,
            message=data,
        )


class ThreadDetail(ThreadOut):
    """A thread with the messages of its current branch."""

    messages: list[MessageOut]
    """The current branch, root first."""


class ThreadList(BaseModel):
    """A page of threads, most recently active first."""

    data: list[ThreadOut]
    """The threads."""
    limit: int
    """The page size asked for."""
    offset: int
    """Threads skipped before this page."""
    has_more: bool
    """Whether another page follows (ask with `offset + limit`)."""


class BranchOut(BaseModel):
    """One branch (alternative conversation) of a thread."""

    leaf_id: str
    """Its last message (switch to it by this id)."""
    length: int
    """Messages from the root to the leaf."""
    preview: str
    """The start of its last user prompt."""
    current: bool
    """Whether it is the thread's current branch."""
    updated_at: dt.datetime
    """When its leaf was written."""

    @classmethod
    def of(cls, branch: Branch) -> BranchOut:
        """From a `Branch`."""
        return cls(
            leaf_id=branch.leaf_id,
            length=branch.length,
            preview=branch.preview,
            current=branch.current,
            updated_at=branch.updated_at,
        )


class BranchList(BaseModel):
    """A thread's branches, oldest first."""

    data: list[BranchOut]
    """The branches."""


RunState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]


class RunOut(BaseModel):
    """A run: its state, what it consumed and, once done, its output."""

    id: str
    """Its id."""
    thread_id: str | None
    """Its thread."""
    agent: str | None
    """The agent that runs."""
    status: RunState
    """`queued` (waits for a worker), `running`, `succeeded`, `failed`, `cancelled` (by a client) or `interrupted`
    (server shutdown or crash)."""
    steps: int
    """Model requests made so far."""
    usage: UsageOut
    """What it consumed (partial while running or when cancelled)."""
    cost_usd: float | None
    """Its cost in USD (`null` when a model's price is unknown)."""
    error: str | None
    """Why it failed or was interrupted."""
    created_at: dt.datetime
    """When it started."""
    finished_at: dt.datetime | None
    """When it ended."""
    correlation_id: str | None = None
    """The request id that started it (find its logs by it)."""
    output: Any | None = None
    """The final output (text, or the structured output as JSON), in the answer of a synchronous run."""
    messages: list[MessageOut] | None = None
    """The messages the run wrote, in the answer of a synchronous run."""

    @classmethod
    def of(cls, record: RunRecord, *, output: Any | None = None, messages: list[MessageOut] | None = None) -> RunOut:
        """From a `RunRecord`."""
        return cls(
            id=record.id,
            thread_id=record.thread_id,
            agent=record.agent_name,
            status=record.status,
            steps=record.steps,
            usage=UsageOut.of(record.usage),
            cost_usd=record.usage.cost_usd,
            error=record.error,
            created_at=record.created_at,
            finished_at=record.finished_at,
            correlation_id=record.correlation_id,
            output=output,
            messages=messages,
        )


class RunList(BaseModel):
    """A page of runs, newest first."""

    data: list[RunOut]
    """The runs (without `output` and `messages`: see a run's thread)."""
    limit: int
    """The page size asked for."""
    offset: int
    """Runs skipped before this page."""
    has_more: bool
    """Whether another page follows (ask with `offset + limit`)."""


class FeedbackOut(BaseModel):
    """A rating of a message."""

    id: str
    """Its id."""
    message_id: str
    """The rated message."""
    thread_id: str
    """Its thread."""
    rating: Literal[1, -1]
    """`1` or `-1`."""
    comment: str | None
    """The comment."""
    created_at: dt.datetime
    """When it was first given."""
    updated_at: dt.datetime
    """When it was last changed."""

    @classmethod
    def of(cls, feedback: Feedback) -> FeedbackOut:
        """From a `Feedback`."""
        return cls(
            id=feedback.id,
            message_id=feedback.message_id,
            thread_id=feedback.thread_id,
            rating=feedback.rating,
            comment=feedback.comment,
            created_at=feedback.created_at,
            updated_at=feedback.updated_at,
        )


class FeedbackList(BaseModel):
    """Your ratings of a thread's messages."""

    data: list[FeedbackOut]
    """The ratings, oldest first."""


class MemoryOut(BaseModel):
    """A fact the agents remember about you."""

    id: str
    """Its id."""
    text: str
    """The fact."""
    created_at: dt.datetime
    """When it was stored."""
    updated_at: dt.datetime
    """When it was last edited."""

    @classmethod
    def of(cls, memory: Memory) -> MemoryOut:
        """From a `Memory`."""
        return cls(id=memory.id, text=memory.text, created_at=memory.created_at, updated_at=memory.updated_at)


class MemoryList(BaseModel):
    """Your memories, oldest first."""

    data: list[MemoryOut]
    """The memories."""


class ProfileOut(BaseModel):
    """Your profile: preferences and custom instructions the agents follow."""

    preferences: dict[str, str]
    """Preferences such as `tone`, `language`, `units`."""
    instructions: str | None
    """Custom instructions."""
    updated_at: dt.datetime | None
    """When it was last written (`null`: you have no profile)."""

    @classmethod
    def of(cls, profile: UserProfile | None) -> ProfileOut:
        """From a `UserProfile` (`None`: an empty profile)."""
        if profile is None:
            return cls(preferences={}, instructions=None, updated_at=None)
        return cls(
            preferences=dict(profile.preferences), instructions=profile.instructions, updated_at=profile.updated_at
        )


class UsageRowOut(BaseModel):
    """Tokens and cost of a group of model responses."""

    day: dt.date | None = None
    """The day (UTC), when grouped by day."""
    model: str | None = None
    """The model, when grouped by model."""
    thread_id: str | None = None
    """The thread, when grouped by thread."""
    requests: int
    """Model responses."""
    input_tokens: int
    """Prompt tokens."""
    output_tokens: int
    """Generated tokens."""
    cache_read_tokens: int
    """Prompt tokens read from the provider's cache."""
    reasoning_tokens: int
    """Generated tokens spent on reasoning."""
    cost_usd: float | None
    """The cost in USD (`null` when a response's price is unknown)."""
    priced_cost_usd: float
    """The cost of the responses whose price is known."""
    unpriced_requests: int
    """Responses of models whose price is unknown."""

    @classmethod
    def of(cls, row: UsageRow) -> UsageRowOut:
        """From a `UsageRow`."""
        return cls(
            day=row.day,
            model=row.model,
            thread_id=row.thread_id,
            requests=row.requests,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cache_read_tokens=row.cache_read_tokens,
            reasoning_tokens=row.reasoning_tokens,
            cost_usd=row.cost_usd,
            priced_cost_usd=row.priced_cost_usd,
            unpriced_requests=row.unpriced_requests,
        )


class UsageReportOut(BaseModel):
    """Your usage: one row per group, and the total."""

    group_by: list[Literal["day", "model", "thread"]]
    """The grouping, in column order."""
    rows: list[UsageRowOut]
    """One row per group."""
    total: UsageRowOut
    """Everything in the period."""
