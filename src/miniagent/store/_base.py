"""The store contract: threads of messages as a tree, runs with their events, retention. No SQL here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..events import AgentEvent
    from ..messages import ModelMessage
    from ..usage import Usage

__all__ = [
    "DEFAULT_TENANT",
    "DEFAULT_USER",
    "Branch",
    "Now",
    "PruneReport",
    "RunRecord",
    "RunStatus",
    "Store",
    "StoredEvent",
    "StoredMessage",
    "ThreadInfo",
    "utc_now",
]

DEFAULT_TENANT = "default"
"""The tenant of the embedded setup."""
DEFAULT_USER = "default"
"""The user of runs that name none."""

RunStatus = Literal["running", "succeeded", "failed", "cancelled", "interrupted"]
"""A run's state: `interrupted` means its process died mid-run (found by `recover_interrupted`)."""

Now = Callable[[], dt.datetime]
"""A clock returning aware UTC datetimes; tests inject a fixed or advancing one."""


def utc_now() -> dt.datetime:
    """The current time, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


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

    async def close(self) -> None:
        """Release connections."""
        ...
