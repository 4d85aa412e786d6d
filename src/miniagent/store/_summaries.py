"""`SQLSummaryStore`: working-memory summaries kept in the `thread_summaries` table, one per thread.

An agent with `working_memory=` that runs on a stored thread uses it automatically (unless its memory was given a
`summary_store` of its own), so a summary survives a restart and is not written again.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..errors import StoreError
from ..memory._summary import StoredSummary
from ._base import DEFAULT_USER, traced
from ._models import ThreadSummaryRow

if TYPE_CHECKING:
    from ._sql import SQLStore

__all__ = ["SQLSummaryStore"]


class SQLSummaryStore:
    """A [`SummaryStore`][miniagent.memory.SummaryStore] on a store's `thread_summaries` table; the key is a thread id.

    Each thread keeps its latest summary (a `put` replaces the previous one), scoped like every store call: a thread
    of another user or tenant is [`ThreadNotFound`][miniagent.errors.ThreadNotFound]. The row's `summary` column holds
    the summary with what it covers as JSON; `upto_message_id` is the last stored message it replaces.

    Args:
        store: The store whose database keeps the summaries.
        user_id: The owner of the threads.
        tenant_id: Their tenant (default: the store's).
    """

    def __init__(self, store: SQLStore, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None) -> None:
        self.store = store
        self.user_id = user_id
        self.tenant_id = tenant_id or store.tenant_id

    @traced("summaries.get")
    async def get(self, key: str) -> StoredSummary | None:
        """The latest summary of thread `key`, or `None`."""
        store = self.store
        async with store._session() as session:
            thread = await store._thread(session, key, self.user_id, self.tenant_id)
            row = await session.get(ThreadSummaryRow, thread.id)
            if row is None or row.tenant_id != self.tenant_id:
                return None
            try:
                data = json.loads(row.summary)
                return StoredSummary(
                    str(data["text"]),
                    message_count=int(data["message_count"]),
                    covered=tuple(int(i) for i in data["covered"]),
                    fingerprint=str(data["fingerprint"]),
                )
            except (ValueError, KeyError, TypeError):
                return None  # an unreadable summary is written again, never used

    @traced("summaries.put")
    async def put(self, key: str, summary: StoredSummary) -> None:
        """Keep `summary` as the latest of thread `key`."""
        store = self.store
        data = json.dumps(
            {
                "text": summary.text,
                "message_count": summary.message_count,
                "covered": list(summary.covered),
                "fingerprint": summary.fingerprint,
            }
        )
        async with store._session() as session:
            thread = await store._thread(session, key, self.user_id, self.tenant_id)
            path = await store._path(session, thread.id, thread.leaf_id)
            last = max(summary.covered, default=-1)
            upto = path[min(last, len(path) - 1)].id if path and last >= 0 else ""
            row = await session.get(ThreadSummaryRow, thread.id)
            if row is None:
                row = ThreadSummaryRow(id=thread.id, tenant_id=self.tenant_id, thread_id=thread.id)
                session.add(row)
            elif row.tenant_id != self.tenant_id:  # pragma: no cover - ids are unique across tenants
                raise StoreError(f"Thread {key!r} has a summary of another tenant; nothing was written.")
            row.upto_message_id = upto
            row.summary = data
            row.tokens = None
            row.created_at = store.now()
