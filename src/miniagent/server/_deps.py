"""FastAPI dependencies of the server's routers: the state, the authenticated principal, scopes, and
[`TenantStore`][miniagent.server._deps.TenantStore], the one object routers use to touch the store.

```python
from fastapi import APIRouter, Depends

from miniagent.server._deps import PrincipalDep, TenantStoreDep, require_scope

router = APIRouter(dependencies=[Depends(require_scope("threads"))])


@router.get("/api/v1/whoami")
async def whoami(principal: PrincipalDep, tenant: TenantStoreDep) -> dict[str, str]:
    return {"tenant": principal.tenant_id, "threads": str(len(await tenant.list_threads()))}
```
"""  # noqa: D205

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from ..errors import ThreadNotFound
from ._errors import ApiError
from ._state import Principal, ServerState

if TYPE_CHECKING:
    import datetime as dt

    from ..embeddings import Embedder
    from ..events import AgentEvent
    from ..messages import ModelMessage
    from ..store import (
        Branch,
        Memory,
        MemoryStore,
        RunRecord,
        RunStatus,
        SQLStore,
        StoredEvent,
        StoredMessage,
        ThreadInfo,
        UsageGroup,
        UsageRow,
        UserProfile,
    )
    from ..store._feedback import Feedback
    from ..usage import Usage

__all__ = [
    "PrincipalDep",
    "StateDep",
    "TenantStore",
    "TenantStoreDep",
    "get_state",
    "get_tenant_store",
    "require_principal",
    "require_scope",
]

PRINCIPAL_KEY = "miniagent.principal"
"""Where the principal of a request is kept in its ASGI scope (the access log reads it)."""


def get_state(connection: HTTPConnection) -> ServerState:
    """The app's [`ServerState`][miniagent.server.ServerState] (works for HTTP requests and WebSockets)."""
    state: ServerState = connection.app.state.miniagent
    return state


StateDep = Annotated[ServerState, Depends(get_state)]
"""The app's state, as a handler parameter."""


async def require_principal(connection: HTTPConnection) -> Principal:
    """The request's authenticated principal (cached on the request), or 401 `unauthorized`.

    Works for WebSockets too (browsers cannot set headers there: `?api_key=` is not accepted; use a header or the
    `Sec-WebSocket-Protocol` trick of your client).
    """
    cached = connection.scope.get(PRINCIPAL_KEY)
    if isinstance(cached, Principal):
        return cached
    state = get_state(connection)
    headers = connection.headers
    principal = await state.auth.authenticate(state.store, headers.get("authorization"), headers.get("x-api-key"))
    connection.scope[PRINCIPAL_KEY] = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(require_principal)]
"""The authenticated principal, as a handler parameter (401 without valid credentials)."""


def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that needs the principal to hold `scope` (403 `forbidden` naming it otherwise).

    Example: `@router.post("/x", dependencies=[Depends(require_scope("admin"))])`.
    """

    async def dependency(principal: PrincipalDep) -> Principal:
        if not principal.has(scope):
            raise ApiError(
                403,
                "forbidden",
                f"This needs the {scope!r} scope; the credentials have {sorted(principal.scopes) or 'none'}: "
                f"use a key or token with {scope!r}.",
                extra={"required_scope": scope},
            )
        return principal

    dependency.__name__ = f"require_scope_{scope}"
    return dependency


def _thread_not_found(thread_id: str) -> ApiError:
    return ApiError(404, "thread_not_found", f"No thread {thread_id[:100]!r}: check the id (GET /api/v1/threads).")


def _run_not_found(run_id: str) -> ApiError:
    return ApiError(404, "run_not_found", f"No run {run_id[:100]!r}: check the id.")


def _message_not_found(message_id: str) -> ApiError:
    return ApiError(
        404, "message_not_found", f"No message {message_id[:100]!r}: check the id (GET /api/v1/threads/{{id}})."
    )


def _memory_not_found(memory_id: str) -> ApiError:
    return ApiError(404, "memory_not_found", f"No memory {memory_id[:100]!r}: list them with GET /api/v1/me/memories.")


class TenantStore:
    """The store as one principal may see it: every call is scoped to the principal's tenant and user.

    Rows of another tenant or user are `ApiError(404)`, exactly like rows that do not exist (never 403, which would
    reveal that they exist). Routers get it through `TenantStoreDep` and never touch `SQLStore` directly.

    Args:
        store: The server's store.
        principal: Who the request acts for.
    """

    def __init__(self, store: SQLStore, principal: Principal) -> None:
        self.store = store
        """The underlying store (for the repository's own methods; routers use the methods below)."""
        self.principal = principal
        """Who the calls act for."""
        self._run_store: SQLStore | None = None

    @property
    def tenant_id(self) -> str:
        """The principal's tenant."""
        return self.principal.tenant_id

    @property
    def user_id(self) -> str:
        """The principal's user."""
        return self.principal.user_id

    # ---- threads -----------------------------------------------------------------------------------------

    async def create_thread(self, *, title: str | None = None) -> ThreadInfo:
        """Start a thread for the principal."""
        return await self.store.create_thread(user_id=self.user_id, tenant_id=self.tenant_id, title=title)

    async def get_thread(self, thread_id: str) -> ThreadInfo:
        """A thread of the principal, or 404 `thread_not_found`."""
        try:
            return await self.store.get_thread(thread_id, user_id=self.user_id, tenant_id=self.tenant_id)
        except ThreadNotFound:
            raise _thread_not_found(thread_id) from None

    async def list_threads(self, *, limit: int = 50) -> list[ThreadInfo]:
        """The principal's threads, most recently active first."""
        return await self.store.list_threads(user_id=self.user_id, tenant_id=self.tenant_id, limit=limit)

    async def delete_thread(self, thread_id: str) -> None:
        """Delete a thread of the principal, or 404 `thread_not_found`."""
        try:
            await self.store.delete_thread(thread_id, user_id=self.user_id, tenant_id=self.tenant_id)
        except ThreadNotFound:
            raise _thread_not_found(thread_id) from None

    async def messages(self, thread_id: str, *, leaf_id: str | None = None) -> list[StoredMessage]:
        """The messages of a thread's current branch (or the branch ending at `leaf_id`), or 404."""
        try:
            return await self.store.history(thread_id, user_id=self.user_id, tenant_id=self.tenant_id, leaf_id=leaf_id)
        except ThreadNotFound:
            raise _thread_not_found(thread_id) from None

    # ---- runs --------------------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord:
        """A run of the principal, or 404 `run_not_found` (another user's run of the same tenant too)."""
        try:
            run = await self.store.get_run(run_id, tenant_id=self.tenant_id)
        except ThreadNotFound:
            raise _run_not_found(run_id) from None
        if run.user_id != self.user_id:
            raise _run_not_found(run_id)
        return run

    async def request_cancel(self, run_id: str) -> RunRecord:
        """Cancel a queued run of the principal now, or flag a running one for its worker (404 if not theirs)."""
        await self.get_run(run_id)
        return await self.store.request_cancel(run_id, tenant_id=self.tenant_id)

    async def events(self, run_id: str, *, after_seq: int = 0) -> list[StoredEvent]:
        """A run's stored events after `after_seq` (resume a stream), or 404 `run_not_found`."""
        await self.get_run(run_id)
        return await self.store.events(run_id, after_seq=after_seq, tenant_id=self.tenant_id)

    @property
    def run_store(self) -> SQLStore:
        """The store as the principal's tenant sees it, for `Agent.run(store=...)`: the same engine and connections,
        with the tenant's id (runs, threads and usage are written in that tenant). Never close it.
        """  # noqa: D205
        if self._run_store is None:
            view = copy.copy(self.store)
            view.tenant_id = self.tenant_id
            self._run_store = view
        return self._run_store

    async def record_threadless_run(
        self,
        run_id: str,
        *,
        agent_name: str,
        correlation_id: str | None,
        status: RunStatus,
        steps: int,
        usage: Usage,
        error: str | None = None,
        events: Sequence[AgentEvent] = (),
        model_usage: Sequence[tuple[str, Usage]] = (),
    ) -> None:
        """Record a run without a thread (an OpenAI-compatible request) as the principal's, once it has ended: its
        row, events and usage records in one transaction.
        """  # noqa: D205
        await self.store.record_run(
            run_id,
            status=status,
            steps=steps,
            usage=usage,
            user_id=self.user_id,
            tenant_id=self.tenant_id,
            correlation_id=correlation_id,
            agent_name=agent_name,
            error=error,
            events=events,
            model_usage=model_usage,
        )

    def run_kwargs(self) -> dict[str, Any]:
        """The ownership keywords of an agent run for the principal: `store` (the tenant's view) and `user_id`."""
        return {"store": self.run_store, "user_id": self.user_id}

    # ---- pages, messages and branches --------------------------------------------------------------------

    async def list_threads_page(self, *, limit: int = 50, offset: int = 0) -> tuple[list[ThreadInfo], bool]:
        """A page of the principal's threads (most recently active first) and whether more follow."""
        rows = await self.store.list_threads(user_id=self.user_id, tenant_id=self.tenant_id, limit=offset + limit + 1)
        return rows[offset : offset + limit], len(rows) > offset + limit

    async def list_runs_page(
        self, *, status: RunStatus | None = None, thread_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[RunRecord], bool]:
        """A page of the principal's runs (newest first; only those in `status`, or of `thread_id`, when given) and
        whether more follow. A thread that is not the principal's has no runs here (an empty page, not a 404).
        """  # noqa: D205
        rows = await self.store.list_runs(
            user_id=self.user_id,
            tenant_id=self.tenant_id,
            status=status,
            thread_id=thread_id,
            limit=limit + 1,
            offset=offset,
        )
        return rows[:limit], len(rows) > limit

    async def message(self, thread_id: str, message_id: str) -> StoredMessage:
        """One message of a thread of the principal (the last of the path to it), or 404 `message_not_found`."""
        await self.get_thread(thread_id)
        try:
            path = await self.store.history(
                thread_id, user_id=self.user_id, tenant_id=self.tenant_id, leaf_id=message_id
            )
        except ThreadNotFound:
            raise _message_not_found(message_id) from None
        if not path or path[-1].id != message_id:
            raise _message_not_found(message_id)
        return path[-1]

    async def edit_message(self, thread_id: str, message_id: str, message: ModelMessage) -> str:
        """Replace a past message by `message` as a new branch (now current); returns its id, or 404."""
        await self.message(thread_id, message_id)
        try:
            return await self.store.edit_message(
                thread_id, message_id, message, user_id=self.user_id, tenant_id=self.tenant_id
            )
        except ThreadNotFound:
            raise _message_not_found(message_id) from None

    async def regenerate(self, thread_id: str, message_id: str) -> str:
        """Move the thread's leaf to the request `message_id` answered (the next run answers it again), or 404."""
        await self.message(thread_id, message_id)
        try:
            return await self.store.regenerate(thread_id, message_id, user_id=self.user_id, tenant_id=self.tenant_id)
        except ThreadNotFound as exc:
            raise ApiError(
                409, "not_regenerable", f"Message {message_id[:100]!r} has no request before it to answer again."
            ) from exc

    async def branches(self, thread_id: str) -> list[Branch]:
        """A thread's branches (one per leaf), or 404."""
        try:
            return await self.store.branches(thread_id, user_id=self.user_id, tenant_id=self.tenant_id)
        except ThreadNotFound:
            raise _thread_not_found(thread_id) from None

    async def switch(self, thread_id: str, leaf_id: str) -> None:
        """Make `leaf_id` (a message of the thread) the current leaf, or 404."""
        await self.get_thread(thread_id)
        try:
            await self.store.switch(thread_id, leaf_id, user_id=self.user_id, tenant_id=self.tenant_id)
        except ThreadNotFound:
            raise _message_not_found(leaf_id) from None

    # ---- feedback ----------------------------------------------------------------------------------------

    async def set_feedback(self, message_id: str, *, rating: int, comment: str | None) -> Feedback:
        """Rate a message of one of the principal's threads, or 404 `message_not_found`."""
        try:
            return await self.store.set_feedback(
                message_id, rating=rating, comment=comment, user_id=self.user_id, tenant_id=self.tenant_id
            )
        except ThreadNotFound:
            raise _message_not_found(message_id) from None

    async def get_feedback(self, message_id: str) -> Feedback | None:
        """The principal's rating of a message of theirs (`None`: not rated), or 404 `message_not_found`."""
        try:
            return await self.store.get_feedback(message_id, user_id=self.user_id, tenant_id=self.tenant_id)
        except ThreadNotFound:
            raise _message_not_found(message_id) from None

    async def delete_feedback(self, message_id: str) -> bool:
        """Remove the principal's rating of a message of theirs (whether there was one), or 404."""
        try:
            return await self.store.delete_feedback(message_id, user_id=self.user_id, tenant_id=self.tenant_id)
        except ThreadNotFound:
            raise _message_not_found(message_id) from None

    async def list_feedback(self, thread_id: str) -> list[Feedback]:
        """The principal's ratings in one of their threads, or 404."""
        try:
            return await self.store.list_feedback(thread_id, user_id=self.user_id, tenant_id=self.tenant_id)
        except ThreadNotFound:
            raise _thread_not_found(thread_id) from None

    # ---- memories, profile, usage ------------------------------------------------------------------------

    def memories(self, embedder: Embedder) -> MemoryStore:
        """The principal's tenant's memories with `embedder` (always call it with `user_id=self.user_id`)."""
        from ..store import MemoryStore

        return MemoryStore(self.run_store, embedder)

    async def list_memories(self, embedder: Embedder, *, limit: int = 200) -> list[Memory]:
        """The principal's memories, oldest first."""
        memories: list[Memory] = await self.memories(embedder).list(
            user_id=self.user_id, tenant_id=self.tenant_id, limit=limit
        )
        return memories

    async def memory(self, embedder: Embedder, memory_id: str) -> Memory:
        """One memory of the principal, or 404 `memory_not_found`."""
        for memory in await self.list_memories(embedder, limit=100_000):
            if memory.id == memory_id:
                return memory
        raise _memory_not_found(memory_id)

    async def edit_memory(self, embedder: Embedder, memory_id: str, text: str) -> Memory:
        """Change a memory's text (and vector), or 404 `memory_not_found`."""
        from ..errors import StoreError

        try:
            return await self.memories(embedder).edit(memory_id, text, user_id=self.user_id, tenant_id=self.tenant_id)
        except StoreError as exc:
            if str(exc).startswith("No memory"):
                raise _memory_not_found(memory_id) from None
            raise

    async def delete_memory(self, embedder: Embedder, memory_id: str) -> None:
        """Forget a memory of the principal, or 404 `memory_not_found`."""
        from ..errors import StoreError

        try:
            await self.memories(embedder).delete(memory_id, user_id=self.user_id, tenant_id=self.tenant_id)
        except StoreError as exc:
            if str(exc).startswith("No memory"):
                raise _memory_not_found(memory_id) from None
            raise

    async def get_profile(self) -> UserProfile | None:
        """The principal's profile (`None`: none yet)."""
        return await self.store.get_profile(user_id=self.user_id, tenant_id=self.tenant_id)

    async def set_profile(self, *, preferences: dict[str, str], instructions: str | None) -> UserProfile:
        """Replace the principal's profile."""
        return await self.store.set_profile(
            user_id=self.user_id, tenant_id=self.tenant_id, preferences=preferences, instructions=instructions
        )

    async def delete_profile(self) -> bool:
        """Delete the principal's profile; whether there was one."""
        return await self.store.delete_profile(user_id=self.user_id, tenant_id=self.tenant_id)

    async def usage(
        self,
        *,
        group_by: Sequence[UsageGroup],
        since: dt.date | dt.datetime | None = None,
        until: dt.date | dt.datetime | None = None,
    ) -> tuple[list[UsageRow], UsageRow]:
        """The principal's own usage report (rows per group, and the total) in the period."""
        rows = await self.store.usage_report(
            group_by=list(group_by), since=since, until=until, user_id=self.user_id, tenant_id=self.tenant_id
        )
        total = await self.store.usage_totals(user_id=self.user_id, since=since, until=until, tenant_id=self.tenant_id)
        return rows, total


async def get_tenant_store(connection: HTTPConnection, principal: PrincipalDep) -> TenantStore:
    """The [`TenantStore`][miniagent.server._deps.TenantStore] of the request's principal."""
    return TenantStore(get_state(connection).store, principal)


TenantStoreDep = Annotated[TenantStore, Depends(get_tenant_store)]
"""The principal's view of the store, as a handler parameter."""
