"""Runs: start (synchronous or background), list, status, cancel, resume, and their events as SSE: `/api/v1/runs/...`.

These routes need the `chat` or the `threads` scope.
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Header, Path, Query, Response
from fastapi.responses import JSONResponse

from .._deps import PrincipalDep, StateDep, TenantStoreDep
from .._errors import ApiError
from .._openapi import sse_content
from .._sse import SseResponse
from .._state import Principal
from ._common import ID_PATTERN, NOT_FOUND, agent_for, check_thread_idle, run_manager, start_run
from ._schemas import RunIn, RunList, RunOut, RunResumeIn, RunState
from ._stream import sse_frames

__all__ = ["require_runs_scope", "router"]


async def require_runs_scope(principal: PrincipalDep) -> Principal:
    """The principal, if it holds `chat` or `threads` (403 `forbidden` otherwise)."""
    if not (principal.has("chat") or principal.has("threads")):
        raise ApiError(
            403,
            "forbidden",
            f"Runs need the 'chat' or 'threads' scope; the credentials have {sorted(principal.scopes) or 'none'}.",
            extra={"required_scope": "chat"},
        )
    return principal


router = APIRouter(tags=["runs"], dependencies=[Depends(require_runs_scope)])

_MAX_SEQ = 2**31 - 1

RunId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="The run's id.")]

_START_RESPONSES: dict[int | str, dict[str, object]] = {
    **NOT_FOUND,
    202: {"model": RunOut, "description": "Background run started (follow `GET /api/v1/runs/{id}/events`)."},
    409: {"description": "A run is already in progress on the thread."},
    503: {"description": "The server is shutting down or its store is unavailable."},
}


@router.post("/runs", response_model=RunOut, responses=_START_RESPONSES)
async def create_run(
    body: RunIn,
    tenant: TenantStoreDep,
    state: StateDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="For a background run: sending the same key again returns the run it created, not a new one.",
        ),
    ] = None,
) -> Response:
    """Run an agent on a prompt, in a thread of yours (or a new one): the result, or `202` when `background`."""
    agent = agent_for(state, body.agent)
    if body.thread_id is not None:
        await tenant.get_thread(body.thread_id)
    status, run = await start_run(
        state,
        tenant,
        agent=agent,
        prompt=body.prompt,
        thread_id=body.thread_id,
        background=body.background,
        idempotency_key=idempotency_key if body.background else None,
    )
    return JSONResponse(run.model_dump(mode="json"), status_code=status)


@router.get("/runs", response_model=RunList)
async def list_runs(
    tenant: TenantStoreDep,
    status: Annotated[RunState | None, Query(description="Only the runs in this state.")] = None,
    thread_id: Annotated[
        str | None,
        Query(min_length=1, max_length=64, pattern=ID_PATTERN, description="Only the runs of this thread of yours."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Runs per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000, description="Runs to skip.")] = 0,
) -> RunList:
    """Your runs (in threads, and those of the OpenAI-compatible API), newest first, a page at a time."""
    rows, more = await tenant.list_runs_page(status=status, thread_id=thread_id, limit=limit, offset=offset)
    return RunList(data=[RunOut.of(r) for r in rows], limit=limit, offset=offset, has_more=more)


@router.get("/runs/{run_id}", response_model=RunOut, responses=NOT_FOUND)
async def get_run(run_id: RunId, tenant: TenantStoreDep) -> RunOut:
    """A run's state, usage, cost, error and timestamps."""
    return RunOut.of(await tenant.get_run(run_id))


@router.post(
    "/runs/{run_id}/cancel",
    response_model=RunOut,
    responses={
        **NOT_FOUND,
        202: {"model": RunOut, "description": "Cancel requested; the run's worker has not stopped it yet."},
        409: {"description": "The run is not running (already ended), or runs in another server process."},
    },
)
async def cancel_run(run_id: RunId, tenant: TenantStoreDep, state: StateDep) -> Response | RunOut:
    """Cancel a queued or running run: its model stream and tools stop; it is recorded `cancelled` with its partial
    usage. A run executed by a worker of another process is cancelled at its next lease renewal: `202` with the run
    still `running` if that did not happen within a few seconds (poll `GET /api/v1/runs/{id}`).
    """  # noqa: D205
    record = await tenant.get_run(run_id)
    if record.status not in ("running", "queued"):
        raise ApiError(
            409,
            "run_not_running",
            f"Run {run_id!r} is not running (it is {record.status!r}).",
            extra={"status": record.status},
        )
    handle = await run_manager(state).cancel(run_id)
    if handle is None:
        record = await tenant.get_run(run_id)
        if record.status not in ("running", "queued"):  # it ended meanwhile
            raise ApiError(
                409,
                "run_not_running",
                f"Run {run_id!r} is not running (it is {record.status!r}).",
                extra={"status": record.status},
            )
        if not record.via_queue:
            raise ApiError(
                409,
                "run_elsewhere",
                f"Run {run_id!r} runs in another server process; send the cancel to that process (or wait for it).",
            )
        # A worker runs it (or will): flag it; its worker cancels it at its next lease renewal.
        record = await tenant.request_cancel(run_id)
        waited = 0.0
        limit = min(state.settings.queue_lease_s, 10.0)
        while record.status in ("running", "queued") and waited < limit:
            await anyio.sleep(0.1)
            waited += 0.1
            record = await tenant.get_run(run_id)
        if record.status in ("running", "queued"):
            return JSONResponse(RunOut.of(record).model_dump(mode="json"), status_code=202)
    return RunOut.of(await tenant.get_run(run_id))


@router.post(
    "/runs/{run_id}/resume",
    response_model=RunOut,
    responses={**_START_RESPONSES, 409: {"description": "The run cannot be resumed (still running, or it succeeded)."}},
)
async def resume_run(
    run_id: RunId, tenant: TenantStoreDep, state: StateDep, body: RunResumeIn | None = None
) -> Response:
    """Resume an interrupted, cancelled or failed run: a new run continues its thread from what was committed."""
    options = body or RunResumeIn()
    record = await tenant.get_run(run_id)
    if record.status in ("running", "queued", "succeeded") or record.thread_id is None:
        raise ApiError(
            409,
            "not_resumable",
            f"Run {run_id!r} is {record.status!r}"
            + (" without a thread" if record.thread_id is None else "")
            + ": only an interrupted, cancelled or failed run of a thread can be resumed.",
        )
    agent = agent_for(state, options.agent or record.agent_name)
    from ...messages import ModelResponse

    messages = await tenant.messages(record.thread_id)
    last = messages[-1] if messages else None
    if last is not None and isinstance(last.message, ModelResponse):
        if not last.message.tool_calls:
            raise ApiError(
                409,
                "not_resumable",
                "The thread's current branch ends with an answer: there is nothing left to answer; post a new message.",
            )
        # Its tool calls were cut off before their results were committed: answer their request again.
        await check_thread_idle(state, tenant, record.thread_id)
        await tenant.regenerate(record.thread_id, last.id)
    elif last is None:
        raise ApiError(409, "not_resumable", "The run's thread has no message to continue from; post a new message.")
    status, run = await start_run(
        state, tenant, agent=agent, prompt=None, thread_id=record.thread_id, background=options.background
    )
    return JSONResponse(run.model_dump(mode="json"), status_code=status)


@router.get(
    "/runs/{run_id}/events",
    response_class=SseResponse,
    responses={
        **NOT_FOUND,
        200: {
            "content": sse_content(
                {"type": "object", "properties": {"kind": {"type": "string"}}, "required": ["kind"]},
                id_pattern="^[0-9]+$",
            ),
            "description": "Server-Sent Events: `id:` the event's sequence number, `event:` its kind, `data:` the "
            "event as JSON; `partial-output` events carry the structured output so far; a `: keep-alive` comment is "
            "sent after each quiet spell of `MINIAGENT_SSE_HEARTBEAT_S` seconds.",
        },
    },
)
async def run_events(
    run_id: RunId,
    tenant: TenantStoreDep,
    state: StateDep,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=20, description="Resume after this event.")
    ] = None,
    after_seq: Annotated[
        int | None, Query(ge=0, le=_MAX_SEQ, description="Resume after this event (as `Last-Event-ID`).")
    ] = None,
) -> SseResponse:
    """The run's events as Server-Sent Events, from the start (or after `Last-Event-ID`) until it ends."""
    record = await tenant.get_run(run_id)
    last = after_seq or 0
    if last_event_id is not None and last_event_id.strip():
        try:
            last = max(last, int(last_event_id))
        except ValueError:
            raise ApiError(
                422, "invalid_request", "Last-Event-ID must be the `id` of an event of this run (an integer)."
            ) from None
        if not 0 <= last <= _MAX_SEQ:
            raise ApiError(422, "invalid_request", f"Last-Event-ID must be between 0 and {_MAX_SEQ}.")
    agent = state.agents.get(record.agent_name) if record.agent_name and record.agent_name in state.agents else None
    runs = run_manager(state) if state.runs is not None else None
    return SseResponse(
        sse_frames(tenant, runs, run_id, agent=agent, last_event_id=last), heartbeat_s=state.settings.sse_heartbeat_s
    )
