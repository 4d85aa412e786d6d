"""The store contract: threads of messages as a tree, runs with their events, retention. No SQL here."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, runtime_checkable

from .._instrument import store_operation

if TYPE_CHECKING:
    from ..events import AgentEvent
    from ..messages import ModelMessage
    from ..usage import Usage

__all__ = [
    "DEFAULT_TENANT",
    "DEFAULT_USER",
    "USAGE_GROUPS",
    "Branch",
    "DeadLetter",
    "ErrorLink",
    "Now",
    "PruneReport",
    "RunRecord",
    "RunStatus",
    "Store",
    "StoredEvent",
    "StoredMessage",
    "ThreadInfo",
    "UsageGroup",
    "UsageRow",
    "traced",
    "utc_now",
]

DEFAULT_TENANT = "default"
"""The tenant of the embedded setup."""
DEFAULT_USER = "default"
"""The user of runs that name none."""

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
"""A run's state: `queued` waits in the job queue for a worker; `interrupted` means its process died mid-run (found
by `recover_interrupted`)."""

Now = Callable[[], dt.datetime]
"""A clock returning aware UTC datetimes; tests inject a fixed or advancing one."""


def utc_now() -> dt.datetime:
    """The current time, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def traced(
    name: str,
) -> Callable[[Callable[_P, Coroutine[Any, Any, _R]]], Callable[_P, Coroutine[Any, Any, _R]]]:
    """Wrap a store method in `miniagent._instrument.store_operation(name)`: a span when tracing is configured."""

    def wrap(method: Callable[_P, Coroutine[Any, Any, _R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
        @functools.wraps(method)
        async def operation(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with store_operation(name):
                return await method(*args, **kwargs)

        return operation

    return wrap


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """A conversation."""

    id: str
    """The thread's id."""
    _: KW_ONLY
    user_id: str
    """Its owner."""
    tenant_id: str
    """Its tenant."""
    title: str | None
    """A title (the first prompt's start, unless set)."""
    leaf_id: str | None
    """The current leaf: the history is the path from the root to this message."""
    created_at: dt.datetime
    """When it was created."""
    updated_at: dt.datetime
    """Its last activity."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of a thread's tree."""

    id: str
    """The message's id."""
    message: ModelMessage
    """The message itself."""
    _: KW_ONLY
    parent_id: str | None
    """The message before it (`None` for the root)."""
    depth: int
    """Its position on its path, from 0."""
    run_id: str | None
    """The run that wrote it."""
    created_at: dt.datetime
    """When it was written."""


@dataclass(frozen=True, slots=True)
class Branch:
    """One leaf of a thread's tree, i.e. one alternative conversation."""

    leaf_id: str
    """The branch's last message."""
    _: KW_ONLY
    length: int
    """Messages on the path from the root to the leaf."""
    preview: str
    """The start of the last user prompt on the branch."""
    current: bool
    """Whether this is the thread's current branch."""
    updated_at: dt.datetime
    """When its leaf was written."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What the store knows of a run."""

    id: str
    """The run's id (as on its events)."""
    _: KW_ONLY
    thread_id: str | None
    """Its thread."""
    status: RunStatus
    """Its state."""
    steps: int
    """Model requests made."""
    usage: Usage
    """What it consumed (incl. `cost_usd`)."""
    error: str | None
    """Why it failed, for failed and interrupted runs."""
    created_at: dt.datetime
    """When it started."""
    finished_at: dt.datetime | None
    """When it ended."""
    user_id: str | None = None
    """The user it ran for."""
    correlation_id: str | None = None
    """The correlation id of the request that started it (also on its events and log lines)."""
    agent_name: str | None = None
    """The agent that ran."""
    replay_of: str | None = None
    """For a replay of a dead letter: the run it ran again."""
    via_queue: bool = False
    """A background run executed by a worker from the job queue."""
    attempts: int = 0
    """Times a worker claimed it (more than 1: taken over after a worker stopped, or handed back at shutdown)."""
    cancel_requested: bool = False
    """A client asked to cancel it."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One persisted event of a run; `seq` counts from 1, so a client resumes with `after_seq=last_seen`."""

    seq: int
    """Its position in the run's stream."""
    event: AgentEvent
    """The event."""


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What `prune` deleted."""

    threads: int = 0
    """Threads deleted (with their messages, runs and events)."""
    runs: int = 0
    """Runs without a thread deleted."""
    thread_ids: list[str] = field(default_factory=list)
    """The deleted threads."""


@dataclass(frozen=True, slots=True)
class ErrorLink:
    """One exception of a failed run's error chain (the error, then its causes and a fallback chain's failures)."""

    type: str
    """The exception's class name, e.g. `ModelAuthError`."""
    message: str
    """Its message."""
    _: KW_ONLY
    relation: Literal["error", "cause", "context", "failure"] = "error"
    """How it relates to the link before: the run's `error`, its `__cause__`, its `__context__`, or one `failure` of
    an `AllModelsFailed`."""
    retryable: bool | None = None
    """Whether the upstream said a retry could succeed (model API errors)."""
    status_code: int | None = None
    """The HTTP status, for HTTP errors."""
    upstream: str | None = None
    """The upstream (breaker name) or, for a fallback failure, the model that failed."""
    provider: str | None = None
    """The model provider, when known."""
    model_name: str | None = None
    """The model whose request failed, when known."""
    request_id: str | None = None
    """The provider's id of the failed request."""
    stage: str | None = None
    """For timeouts: what timed out (run, step, request, tool)."""

    def to_json(self) -> dict[str, Any]:
        """The link as a JSON object, without its empty fields."""
        data: dict[str, Any] = {"type": self.type, "message": self.message, "relation": self.relation}
        for key in ("retryable", "status_code", "upstream", "provider", "model_name", "request_id", "stage"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorLink:
        """A link from `to_json`'s object (unknown keys are ignored)."""
        known = {"retryable", "status_code", "upstream", "provider", "model_name", "request_id", "stage", "relation"}
        return cls(
            str(data.get("type", "Error")),
            str(data.get("message", "")),
            **{k: v for k, v in data.items() if k in known},
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A run that failed for good, with what it takes to run it again. Listed by `miniagent dlq list`."""

    id: str
    """The dead letter's id."""
    _: KW_ONLY
    run_id: str
    """The failed run."""
    tenant_id: str
    """Its tenant."""
    user_id: str
    """The user it ran for."""
    thread_id: str | None
    """Its thread, when it was stored in one."""
    agent_name: str | None
    """The agent that ran."""
    prompt: str | None
    """The user's prompt that started it (text), when there was one."""
    messages: list[ModelMessage]
    """The input of the failed run: the history it started from and its first request, last."""
    error: str
    """The run's error as `Type: message`."""
    error_chain: list[ErrorLink]
    """The error, its causes and a fallback chain's failures, in order."""
    correlation_id: str | None
    """The correlation id of the request (find its log lines and spans by it)."""
    created_at: dt.datetime
    """When the run failed."""
    meta: dict[str, Any] = field(default_factory=dict[str, Any])
    """Free-form data: `request_message_id` (the stored first request), `steps`, `attempts`..."""
    replay_of: str | None = None
    """For the dead letter of a failed replay: the dead letter that was replayed."""
    replayed_at: dt.datetime | None = None
    """When it was replayed (`None`: never)."""
    replayed_run_id: str | None = None
    """The run of the latest replay."""


UsageGroup = Literal["day", "model", "user", "thread"]
"""What a usage report can group by."""

USAGE_GROUPS: tuple[UsageGroup, ...] = ("day", "model", "user", "thread")
"""Every `UsageGroup`, in report column order."""


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One line of a usage report (or a total): what the grouped model responses consumed and cost."""

    _: KW_ONLY
    day: dt.date | None = None
    """The day (UTC), when grouped by day."""
    model: str | None = None
    """The model, when grouped by model."""
    user_id: str | None = None
    """The user, when grouped by user."""
    thread_id: str | None = None
    """The thread, when grouped by thread."""
    requests: int = 0
    """Model responses counted."""
    input_tokens: int = 0
    """Prompt tokens."""
    output_tokens: int = 0
    """Generated tokens."""
    cache_read_tokens: int = 0
    """Prompt tokens read from the provider's cache."""
    reasoning_tokens: int = 0
    """Generated tokens spent on reasoning."""
    priced_cost_usd: float = 0.0
    """The cost of the responses whose price is known."""
    unpriced_requests: int = 0
    """Responses of models whose price is unknown."""

    @property
    def cost_usd(self) -> float | None:
        """The total cost in USD, or `None` when a response's price is unknown (never a silent zero)."""
        return self.priced_cost_usd if self.unpriced_requests == 0 else None


@runtime_checkable
class Store(Protocol):
    """Where conversations live: threads of messages as a tree, runs and their events.

    Every method is one transaction and is scoped by `user_id` and `tenant_id`: a thread of another user or
    tenant is [`ThreadNotFound`][miniagent.errors.ThreadNotFound], never their data.
    """

    async def create_thread(
        self, *, user_id: str = ..., tenant_id: str | None = None, title: str | None = None
    ) -> ThreadInfo:
        """Start a new, empty thread."""
        ...

    async def get_thread(self, thread_id: str, *, user_id: str = ..., tenant_id: str | None = None) -> ThreadInfo:
        """A thread of this user, or `ThreadNotFound`."""
        ...

    async def history(
        self, thread_id: str, *, user_id: str = ..., tenant_id: str | None = None, leaf_id: str | None = None
    ) -> list[StoredMessage]:
        """The path from the root to `leaf_id` (default: the current leaf), in order."""
        ...

    async def append(
        self,
        thread_id: str,
        messages: Sequence[ModelMessage],
        *,
        expected_leaf: str | None,
        user_id: str = ...,
        tenant_id: str | None = None,
        run_id: str | None = None,
    ) -> list[str]:
        """Append after `expected_leaf` and make the last one the leaf; `ThreadConflict` if the leaf moved."""
        ...

    async def add_dead_letter(
        self,
        *,
        run_id: str,
        messages: Sequence[ModelMessage],
        error: BaseException | str,
        user_id: str = ...,
        tenant_id: str | None = None,
        thread_id: str | None = None,
        agent_name: str | None = None,
        prompt: str | None = None,
        correlation_id: str | None = None,
        meta: dict[str, Any] | None = None,
        replay_of: str | None = None,
    ) -> DeadLetter:
        """Record a run that failed for good (its input, error chain and correlation id)."""
        ...

    async def list_dead_letters(
        self, *, limit: int = 50, before: dt.datetime | None = None, tenant_id: str | None = None
    ) -> list[DeadLetter]:
        """The tenant's dead letters, newest first (`before` pages back)."""
        ...

    async def get_dead_letter(self, dead_letter_id: str, *, tenant_id: str | None = None) -> DeadLetter:
        """One dead letter of the tenant, or `DeadLetterNotFound`."""
        ...

    async def mark_replayed(self, dead_letter_id: str, run_id: str, *, tenant_id: str | None = None) -> DeadLetter:
        """Link a dead letter to the run that replayed it."""
        ...

    async def purge_dead_letters(
        self,
        *,
        older_than_days: float | None = None,
        ids: Sequence[str] | None = None,
        tenant_id: str | None = None,
    ) -> int:
        """Delete dead letters (older than some days, or by id); returns how many."""
        ...

    async def usage_report(
        self,
        *,
        group_by: Sequence[UsageGroup] | str = ("day", "model", "user"),
        since: dt.date | dt.datetime | None = None,
        until: dt.date | dt.datetime | None = None,
        user_id: str | None = None,
        tenant_id: str | None = None,
    ) -> list[UsageRow]:
        """Tokens and cost of the tenant's model responses, grouped."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
