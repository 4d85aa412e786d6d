"""Where conversations live: threads of messages as a tree, runs and their events, on SQLite or PostgreSQL.

```python
import anyio

from miniagent import Agent
from miniagent.store import open_store


async def main() -> None:
    store = await open_store()  # MINIAGENT_DATABASE_URL, else a SQLite file under the user data dir
    try:
        result = await Agent().run("Hello", user_id="alice", store=store)  # starts a thread
        assert len(await store.messages(result.thread_id or "", user_id="alice")) == 2
    finally:
        await store.close()


anyio.run(main)
```

Runs that fail for good land in the dead-letter table (`list_dead_letters`, `replay_dead_letter`, `miniagent dlq`),
every model response's tokens and cost in `usage_records` (`usage_report`, `miniagent usage`).

SQLAlchemy, Alembic and the drivers are imported when this package is, never by `import miniagent`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import DeadLetterNotFound, StoreError, ThreadConflict, ThreadNotFound
from ._api_keys import ApiKeyInfo, ApiKeyState
from ._base import (
    DEFAULT_TENANT,
    DEFAULT_USER,
    USAGE_GROUPS,
    Branch,
    DeadLetter,
    ErrorLink,
    Now,
    PruneReport,
    RunRecord,
    RunStatus,
    Store,
    StoredEvent,
    StoredMessage,
    ThreadInfo,
    UsageGroup,
    UsageRow,
    utc_now,
)
from ._dead_letters import error_chain
from ._memories import Memory, MemoryStore
from ._profiles import UserProfile
from ._replay import replay_dead_letter
from ._sql import SQLStore, default_database_url
from ._summaries import SQLSummaryStore
from ._tool_results import SQLToolResults
from ._vectors import PgVectorIndex, SqliteVecIndex, VectorIndex

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "DEFAULT_TENANT",
    "DEFAULT_USER",
    "USAGE_GROUPS",
    "ApiKeyInfo",
    "ApiKeyState",
    "Branch",
    "DeadLetter",
    "DeadLetterNotFound",
    "ErrorLink",
    "Memory",
    "MemoryStore",
    "Now",
    "PgVectorIndex",
    "PruneReport",
    "RunRecord",
    "RunStatus",
    "SQLStore",
    "SQLSummaryStore",
    "SQLToolResults",
    "SqliteVecIndex",
    "Store",
    "StoreError",
    "StoredEvent",
    "StoredMessage",
    "ThreadConflict",
    "ThreadInfo",
    "ThreadNotFound",
    "UsageGroup",
    "UsageRow",
    "UserProfile",
    "VectorIndex",
    "default_database_url",
    "error_chain",
    "open_store",
    "replay_dead_letter",
    "utc_now",
]


async def open_store(
    url: str | None = None, *, settings: Settings | None = None, migrate: bool | None = None, now: Now = utc_now
) -> SQLStore:
    """Open the store the settings name (`MINIAGENT_DATABASE_URL`, else SQLite under the data dir).

    SQLite stores migrate themselves; PostgreSQL ones are migrated by `miniagent migrate` (or `migrate=True`).
    """
    return await SQLStore.open(url, settings=settings, migrate=migrate, now=now)
