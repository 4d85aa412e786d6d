"""Threads, their messages and branches: `/api/v1/threads/...` (scope `threads`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse

from .._deps import StateDep, TenantStoreDep, require_scope
from .._errors import ApiError
from ._common import ID_PATTERN, NOT_FOUND, agent_for, check_thread_idle, start_run
from ._schemas import (
    BranchList,
    BranchOut,
    CreateThreadIn,
    EditMessageIn,
    MessageOut,
    PostMessageIn,
    RegenerateIn,
    RunOut,
    ThreadDetail,
    ThreadList,
    ThreadOut,
)

__all__ = ["router"]

router = APIRouter(tags=["threads"], dependencies=[Depends(require_scope("threads"))])

ThreadId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="The thread's id.")]
MessageId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="The message's id.")]

_RUN_RESPONSES: dict[int | str, dict[str, object]] = {
    **NOT_FOUND,
    202: {"model": RunOut, "description": "Background run started (follow `GET /api/v1/runs/{id}/events`)."},
    409: {"description": "A run is already in progress on the thread."},
    503: {"description": "The server is shutting down or its store is unavailable."},
}


def _run_response(status: int, run: RunOut) -> JSONResponse:
    return JSONResponse(run.model_dump(mode="json"), status_code=status)


async def _detail(tenant: TenantStoreDep, thread_id: str) -> ThreadDetail:
    info = await tenant.get_thread(thread_id)
    messages = await tenant.messages(thread_id)
    return ThreadDetail(**ThreadOut.of(info).model_dump(), messages=[MessageOut.of(m) for m in messages])


@router.post("/threads", status_code=201, response_model=ThreadOut)
async def create_thread(tenant: TenantStoreDep, body: CreateThreadIn | None = None) -> ThreadOut:
    """Start an empty thread (post messages to it next)."""
    return ThreadOut.of(await tenant.create_thread(title=body.title if body is not None else None))


@router.get("/threads", response_model=ThreadList)
async def list_threads(
    tenant: TenantStoreDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Threads per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000, description="Threads to skip.")] = 0,
) -> ThreadList:
    """Your threads, most recently active first, a page at a time."""
    rows, more = await tenant.list_threads_page(limit=limit, offset=offset)
    return ThreadList(data=[ThreadOut.of(r) for r in rows], limit=limit, offset=offset, has_more=more)


@router.get("/threads/{thread_id}", response_model=ThreadDetail, responses=NOT_FOUND)
async def get_thread(thread_id: ThreadId, tenant: TenantStoreDep) -> ThreadDetail:
    """A thread with the messages of its current branch."""
    return await _detail(tenant, thread_id)


@router.delete(
    "/threads/{thread_id}",
    status_code=204,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"description": "A run is in progress on the thread."}},
)
async def delete_thread(thread_id: ThreadId, tenant: TenantStoreDep, state: StateDep) -> Response:
    """Delete a thread with its messages, runs, events and feedback."""
    await tenant.get_thread(thread_id)
    await check_thread_idle(state, tenant, thread_id)
    await tenant.delete_thread(thread_id)
    return Response(status_code=204)


@router.get("/threads/{thread_id}/messages", response_model=list[MessageOut], responses=NOT_FOUND)
async def list_messages(
    thread_id: ThreadId,
    tenant: TenantStoreDep,
    leaf_id: Annotated[
        str | None, Query(max_length=64, pattern=ID_PATTERN, description="Another branch's leaf.")
    ] = None,
) -> list[MessageOut]:
    """The messages of the thread's current branch (or of the branch ending at `leaf_id`), root first."""
    await tenant.get_thread(thread_id)
    if leaf_id is not None:
        await tenant.message(thread_id, leaf_id)
    return [MessageOut.of(m) for m in await tenant.messages(thread_id, leaf_id=leaf_id)]


@router.post(
    "/threads/{thread_id}/messages",
    response_model=RunOut,
    status_code=200,
    responses=_RUN_RESPONSES,
)
async def post_message(thread_id: ThreadId, body: PostMessageIn, tenant: TenantStoreDep, state: StateDep) -> Response:
    """Post your message and run the agent on it: the run's result (or `202` with the run when `background`)."""
    await tenant.get_thread(thread_id)
    agent = agent_for(state, body.agent)
    status, run = await start_run(
        state, tenant, agent=agent, prompt=body.content, thread_id=thread_id, background=body.background
    )
    return _run_response(status, run)


@router.put(
    "/threads/{thread_id}/messages/{message_id}",
    response_model=RunOut,
    responses={**_RUN_RESPONSES, 422: {"description": "Only your own (user) messages can be edited."}},
)
async def edit_message(
    thread_id: ThreadId, message_id: MessageId, body: EditMessageIn, tenant: TenantStoreDep, state: StateDep
) -> Response:
    """Edit one of your past messages: a new branch from it (the old one stays), answered by the agent."""
    from ...messages import ModelRequest, UserPromptPart

    agent = agent_for(state, body.agent)
    old = await tenant.message(thread_id, message_id)
    message = old.message
    if not isinstance(message, ModelRequest) or not any(isinstance(p, UserPromptPart) for p in message.parts):
        raise ApiError(
            422, "not_editable", f"Message {message_id!r} is not a user message: only your own messages can be edited."
        )
    parts = [p for p in message.parts if not isinstance(p, UserPromptPart)]  # keeps the agent's system parts
    edited = replace(message, parts=[*parts, UserPromptPart(body.content)])
    await check_thread_idle(state, tenant, thread_id)
    new_id = await tenant.edit_message(thread_id, message_id, edited)
    status, run = await start_run(
        state,
        tenant,
        agent=agent,
        prompt=None,
        thread_id=thread_id,
        background=body.background,
        include_ids=frozenset({new_id}),
    )
    return _run_response(status, run)


@router.post(
    "/threads/{thread_id}/messages/{message_id}/regenerate",
    response_model=RunOut,
    responses={**_RUN_RESPONSES, 422: {"description": "Only an answer of the agent can be regenerated."}},
)
async def regenerate(
    thread_id: ThreadId,
    message_id: MessageId,
    tenant: TenantStoreDep,
    state: StateDep,
    body: RegenerateIn | None = None,
) -> Response:
    """Answer again: a new branch with a new answer in place of `message_id` (an answer of the agent)."""
    from ...messages import ModelResponse

    options = body or RegenerateIn()
    agent = agent_for(state, options.agent)
    old = await tenant.message(thread_id, message_id)
    if not isinstance(old.message, ModelResponse):
        raise ApiError(
            422, "not_regenerable", f"Message {message_id!r} is not an answer of the agent: regenerate an answer."
        )
    await check_thread_idle(state, tenant, thread_id)
    await tenant.regenerate(thread_id, message_id)
    status, run = await start_run(
        state, tenant, agent=agent, prompt=None, thread_id=thread_id, background=options.background
    )
    return _run_response(status, run)


@router.get("/threads/{thread_id}/branches", response_model=BranchList, responses=NOT_FOUND)
async def list_branches(thread_id: ThreadId, tenant: TenantStoreDep) -> BranchList:
    """The thread's branches (alternative conversations after edits and regenerations), oldest first."""
    return BranchList(data=[BranchOut.of(b) for b in await tenant.branches(thread_id)])


@router.post(
    "/threads/{thread_id}/branches/{leaf_id}/switch",
    response_model=ThreadDetail,
    responses={**NOT_FOUND, 409: {"description": "A run is in progress on the thread."}},
)
async def switch_branch(
    thread_id: ThreadId,
    leaf_id: Annotated[
        str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="A message of the thread.")
    ],
    tenant: TenantStoreDep,
    state: StateDep,
) -> ThreadDetail:
    """Make the branch ending at `leaf_id` the current one; returns the thread with that branch's messages."""
    await tenant.get_thread(thread_id)
    await check_thread_idle(state, tenant, thread_id)
    await tenant.switch(thread_id, leaf_id)
    return await _detail(tenant, thread_id)
