"""Feedback on messages, and the current user's memories, profile and usage: `/api/v1/messages/...`, `/api/v1/me/...`.

These routes need the `threads` scope.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BeforeValidator

from .._deps import StateDep, TenantStoreDep, require_scope
from .._errors import ApiError
from ._common import ID_PATTERN, NOT_FOUND
from ._schemas import (
    FeedbackIn,
    FeedbackList,
    FeedbackOut,
    MemoryList,
    MemoryOut,
    MemoryPatch,
    ProfileIn,
    ProfileOut,
    UsageReportOut,
    UsageRowOut,
)

if TYPE_CHECKING:
    from ...embeddings import Embedder
    from ...store import Memory, UsageGroup
    from .._deps import TenantStore
    from .._state import ServerState

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require_scope("threads"))])

MessageId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="The message's id.")]
ThreadId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="The thread's id.")]
MemoryId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="The memory's id.")]

# ---- feedback ----------------------------------------------------------------------------------------------------


@router.put("/messages/{message_id}/feedback", response_model=FeedbackOut, responses=NOT_FOUND, tags=["feedback"])
async def set_feedback(message_id: MessageId, body: FeedbackIn, tenant: TenantStoreDep) -> FeedbackOut:
    """Rate a message of one of your threads (thumbs up `1` or down `-1`, with an optional comment)."""
    return FeedbackOut.of(await tenant.set_feedback(message_id, rating=body.rating, comment=body.comment))


@router.get("/messages/{message_id}/feedback", response_model=FeedbackOut, responses=NOT_FOUND, tags=["feedback"])
async def get_feedback(message_id: MessageId, tenant: TenantStoreDep) -> FeedbackOut:
    """Your rating of a message (404 `feedback_not_found` when you did not rate it)."""
    feedback = await tenant.get_feedback(message_id)
    if feedback is None:
        raise ApiError(404, "feedback_not_found", f"You have not rated message {message_id!r}.")
    return FeedbackOut.of(feedback)


@router.delete(
    "/messages/{message_id}/feedback", status_code=204, response_class=Response, responses=NOT_FOUND, tags=["feedback"]
)
async def delete_feedback(message_id: MessageId, tenant: TenantStoreDep) -> Response:
    """Remove your rating of a message (nothing happens if there was none)."""
    await tenant.delete_feedback(message_id)
    return Response(status_code=204)


@router.get("/threads/{thread_id}/feedback", response_model=FeedbackList, responses=NOT_FOUND, tags=["feedback"])
async def list_feedback(thread_id: ThreadId, tenant: TenantStoreDep) -> FeedbackList:
    """Your ratings of the messages of a thread, oldest first."""
    return FeedbackList(data=[FeedbackOut.of(f) for f in await tenant.list_feedback(thread_id)])


# ---- memories ----------------------------------------------------------------------------------------------------


def _embedders(state: ServerState) -> list[Embedder]:
    """The embedders of the served agents' long-term memories."""
    out: list[Embedder] = []
    for name in state.agents.names():
        memory = state.agents.get(name).long_term_memory
        if memory is not None and all(e.name != memory.embedder.name for e in out):
            out.append(memory.embedder)
    return out


def _lister(state: ServerState) -> Embedder:
    # Listing reads rows only: any embedder serves (a hashing one when no agent has long-term memory).
    found = _embedders(state)
    if found:
        return found[0]
    from ...embeddings import HashEmbedder

    return HashEmbedder()


async def _memory_embedder(state: ServerState, tenant: TenantStore, memory_id: str) -> tuple[Memory, Embedder]:
    memory = await tenant.memory(_lister(state), memory_id)
    model = memory.meta.get("model")
    for embedder in _embedders(state):
        if embedder.name == model:
            return memory, embedder
    raise ApiError(
        409,
        "memory_embedder_unavailable",
        f"Memory {memory_id!r} was embedded by {model!r}, which no served agent's long-term memory uses: serve an "
        "agent with that embedder to edit or delete it.",
    )


_MEMORY_ERRORS: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    409: {"description": "No served agent has the embedder the memory was made with."},
}


@router.get("/me/memories", response_model=MemoryList, tags=["me"])
async def list_memories(
    tenant: TenantStoreDep,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 200,
) -> MemoryList:
    """What the agents remember about you (long-term memory), oldest first."""
    return MemoryList(data=[MemoryOut.of(m) for m in await tenant.list_memories(_lister(state), limit=limit)])


@router.get("/me/memories/{memory_id}", response_model=MemoryOut, responses=NOT_FOUND, tags=["me"])
async def get_memory(memory_id: MemoryId, tenant: TenantStoreDep, state: StateDep) -> MemoryOut:
    """One of your memories."""
    return MemoryOut.of(await tenant.memory(_lister(state), memory_id))


@router.patch("/me/memories/{memory_id}", response_model=MemoryOut, responses=_MEMORY_ERRORS, tags=["me"])
async def edit_memory(memory_id: MemoryId, body: MemoryPatch, tenant: TenantStoreDep, state: StateDep) -> MemoryOut:
    """Correct one of your memories."""
    _, embedder = await _memory_embedder(state, tenant, memory_id)
    return MemoryOut.of(await tenant.edit_memory(embedder, memory_id, body.text))


@router.delete(
    "/me/memories/{memory_id}", status_code=204, response_class=Response, responses=_MEMORY_ERRORS, tags=["me"]
)
async def delete_memory(memory_id: MemoryId, tenant: TenantStoreDep, state: StateDep) -> Response:
    """Make the agents forget one of your memories."""
    _, embedder = await _memory_embedder(state, tenant, memory_id)
    await tenant.delete_memory(embedder, memory_id)
    return Response(status_code=204)


@router.delete("/me/memories", status_code=204, response_class=Response, responses=_MEMORY_ERRORS, tags=["me"])
async def delete_memories(tenant: TenantStoreDep, state: StateDep) -> Response:
    """Make the agents forget everything they remember about you."""
    for memory in await tenant.list_memories(_lister(state), limit=100_000):
        _, embedder = await _memory_embedder(state, tenant, memory.id)
        await tenant.delete_memory(embedder, memory.id)
    return Response(status_code=204)


# ---- profile -----------------------------------------------------------------------------------------------------


@router.get("/me/profile", response_model=ProfileOut, tags=["me"])
async def get_profile(tenant: TenantStoreDep) -> ProfileOut:
    """Your profile (empty when you have none)."""
    return ProfileOut.of(await tenant.get_profile())


@router.put("/me/profile", response_model=ProfileOut, tags=["me"])
async def set_profile(body: ProfileIn, tenant: TenantStoreDep) -> ProfileOut:
    """Replace your profile: preferences (`tone`, `language`, `units`...) and custom instructions."""
    return ProfileOut.of(await tenant.set_profile(preferences=body.preferences, instructions=body.instructions))


@router.delete("/me/profile", status_code=204, response_class=Response, tags=["me"])
async def delete_profile(tenant: TenantStoreDep) -> Response:
    """Delete your profile."""
    await tenant.delete_profile()
    return Response(status_code=204)


# ---- usage -------------------------------------------------------------------------------------------------------

GroupBy = Literal["day", "model", "thread"]
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _iso_day(value: object) -> object:
    """Only a day written `YYYY-MM-DD` (pydantic alone would also take a Unix time, such as `0`)."""
    if isinstance(value, str) and not _DAY.match(value):
        raise ValueError("a day is written YYYY-MM-DD, e.g. 2025-01-31")
    return value


Day = Annotated[dt.date, BeforeValidator(_iso_day)]


@router.get("/me/usage", response_model=UsageReportOut, tags=["me"])
async def usage(
    tenant: TenantStoreDep,
    since: Annotated[Day | None, Query(description="From this day (UTC), included.")] = None,
    until: Annotated[Day | None, Query(description="Up to this day (UTC), included.")] = None,
    group_by: Annotated[
        list[GroupBy] | None, Query(max_length=3, description="Group by `day`, `model` and/or `thread`.")
    ] = None,
) -> UsageReportOut:
    """Your tokens and cost: one row per group, and the total."""
    groups: list[GroupBy] = list(dict.fromkeys(group_by or ["day", "model"]))
    if since is not None and until is not None and since > until:
        raise ApiError(422, "invalid_request", "`since` is after `until`: swap them.")
    rows, total = await tenant.usage(group_by=cast("list[UsageGroup]", groups), since=since, until=until)
    return UsageReportOut(group_by=groups, rows=[UsageRowOut.of(r) for r in rows], total=UsageRowOut.of(total))
