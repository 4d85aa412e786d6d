"""What the native routes share: the run manager, the agent to use, starting a run and shaping its answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import StoreError, ThreadNotFound, UserError
from .._errors import ApiError
from .._runs import RunHandle, RunManager, RunRequest, ServerShuttingDown, ThreadBusy
from ._schemas import MessageOut, RunOut

if TYPE_CHECKING:
    from ...agent import Agent
    from .._deps import TenantStore
    from .._state import ServerState

__all__ = [
    "ID_PATTERN",
    "NOT_FOUND",
    "agent_for",
    "check_idle",
    "check_thread_idle",
    "jsonable",
    "run_manager",
    "start_run",
]

ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
"""What an id in a path looks like (anything else is a 422, never a query)."""

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found (or not yours)."}}
"""The 404 every route that takes an id declares (another tenant's or user's object is 404 too)."""


def run_manager(state: ServerState) -> RunManager:
    """The app's run manager, or 503 when the app's lifespan has not started it."""
    runs = state.runs
    if not isinstance(runs, RunManager):
        raise ApiError(
            503,
            "runs_unavailable",
            "The server's run manager is not running (the app's lifespan has not started, or it is shutting down).",
            headers={"Retry-After": "5"},
        )
    return runs


def check_idle(state: ServerState, thread_id: str) -> None:
    """409 `thread_busy` when a run of this server is in progress on the thread (a change would move its leaf)."""
    if state.runs is None:
        return
    for handle in run_manager(state).active:
        if handle.thread_id == thread_id:
            raise ApiError(
                409,
                "thread_busy",
                f"Run {handle.run_id!r} is in progress on this thread: wait for it or cancel it "
                f"(POST /api/v1/runs/{handle.run_id}/cancel), then retry.",
                extra={"run_id": handle.run_id},
            )


async def check_thread_idle(state: ServerState, tenant: TenantStore, thread_id: str) -> None:
    """409 `thread_busy` when a run is in progress on the thread here, or queued / running in a worker."""
    check_idle(state, thread_id)
    try:
        busy = await tenant.store.queued_run_on(thread_id, tenant_id=tenant.tenant_id)
    except StoreError:
        raise ApiError(503, "store_unavailable", "The server's store is unavailable; retry later.") from None
    if busy is not None:
        raise ApiError(
            409,
            "thread_busy",
            f"Run {busy!r} is queued or in progress on this thread: wait for it or cancel it "
            f"(POST /api/v1/runs/{busy}/cancel), then retry.",
            extra={"run_id": busy},
        )


def agent_for(state: ServerState, name: str | None) -> Agent[Any, Any]:
    """The agent called `name` (default: the first served agent), or 404 `agent_not_found`."""
    if name is None:
        names = state.agents.names()
        if not names:
            raise ApiError(404, "agent_not_found", "This server serves no agent: configure MINIAGENT_SERVER_AGENTS.")
        name = names[0]
    return state.agents.get(name)


def _name_of(state: ServerState, agent: Agent[Any, Any]) -> str:
    """The name `agent` is served under (what a worker looks it up by)."""
    for name in state.agents.names():
        if state.agents.get(name) is agent:
            return name
    return agent.name


def jsonable(value: Any) -> Any:
    """A run's output as JSON data (pydantic models and dataclasses dumped; anything else as text)."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value, fallback=str)


def _start_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ThreadNotFound):
        return ApiError(404, "thread_not_found", "No such thread: check the id (GET /api/v1/threads).")
    if isinstance(exc, StoreError):
        return ApiError(503, "store_unavailable", "The server's store is unavailable; retry later.")
    if isinstance(exc, UserError):
        return ApiError(422, "invalid_request", str(exc))
    return ApiError(500, "run_failed_to_start", f"The run could not start ({type(exc).__name__}).")


async def start_run(
    state: ServerState,
    tenant: TenantStore,
    *,
    agent: Agent[Any, Any],
    prompt: str | None,
    thread_id: str | None,
    background: bool,
    include_ids: frozenset[str] = frozenset(),
    idempotency_key: str | None = None,
) -> tuple[int, RunOut]:
    """Start a run for the principal; background: `(202, the run)` once it is recorded, else `(200, its result)`.

    A synchronous run that fails, is cancelled or interrupted is still a `200` whose `status` says so (the run
    exists and is described); errors before the run exists are 4xx/5xx.

    Args:
        state: The app's state.
        tenant: The principal's store.
        agent: The agent that runs.
        prompt: The user's message (`None`: continue the thread from its current leaf).
        thread_id: The thread to continue (`None`: a new one).
        background: Return at once with `202`.
        include_ids: Messages written before the run to list in the answer with the run's own (an edited message).
        idempotency_key: For a background run: a key the user already sent returns that run, not a new one.
    """
    runs = run_manager(state)
    from ._queue import enqueue_run, queue_state

    if thread_id is not None and not include_ids and idempotency_key is None:  # (an edit checked before it branched)
        await check_thread_idle(state, tenant, thread_id)
    if background and queue_state(state) is not None:
        return 202, await enqueue_run(
            state,
            tenant,
            agent=agent,
            agent_name=_name_of(state, agent),
            prompt=prompt,
            thread_id=thread_id,
            idempotency_key=idempotency_key,
        )
    request = RunRequest(
        agent,
        prompt,
        tenant.run_store,
        tenant_id=tenant.tenant_id,
        user_id=tenant.user_id,
        thread_id=thread_id,
    )
    try:
        handle = await runs.start(request)
    except ThreadBusy as exc:
        raise ApiError(409, "thread_busy", str(exc), extra={"run_id": exc.run_id}) from exc
    except ServerShuttingDown as exc:
        raise ApiError(503, "shutting_down", str(exc), headers={"Retry-After": "5"}) from exc
    if handle.run_id is None:
        raise _start_error(handle.error or RuntimeError("no run"))
    if not background:
        await handle.done.wait()
    try:
        record = await tenant.get_run(handle.run_id)
    except ApiError:
        # The run never got its row (the store failed as it started): say why.
        raise _start_error(handle.error or StoreError("no run row")) from None
    if background:
        return 202, RunOut.of(record)
    return 200, await run_answer(tenant, handle, record_thread=record.thread_id, include_ids=include_ids)


async def run_answer(
    tenant: TenantStore, handle: RunHandle, *, record_thread: str | None, include_ids: frozenset[str] = frozenset()
) -> RunOut:
    """The answer of a finished synchronous run: its record, output and the messages it wrote."""
    assert handle.run_id is not None
    record = await tenant.get_run(handle.run_id)
    messages: list[MessageOut] = []
    if record_thread is not None:
        for stored in await tenant.messages(record_thread):
            if stored.run_id == handle.run_id or stored.id in include_ids:
                messages.append(MessageOut.of(stored))
    output = jsonable(handle.result.output) if handle.result is not None else None
    return RunOut.of(record, output=output, messages=messages)
