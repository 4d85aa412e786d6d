"""The native API under `/api/v1`: threads, messages with branches, runs (synchronous, background, cancel, resume),
their events over SSE (with `Last-Event-ID` resume) and WebSocket, feedback, and the current user's memories,
profile and usage.

Every route needs an authenticated principal (`threads` scope; runs accept `chat` too) and touches the store only
through [`TenantStore`][miniagent.server._deps.TenantStore]: another tenant's or user's object is a 404, exactly like
one that does not exist.
"""  # noqa: D205

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

from .._runs import RunManager
from ._me import router as _me_router
from ._queue import setup_queue
from ._run_routes import router as _run_router
from ._threads import router as _threads_router
from ._ws import router as _ws_router

if TYPE_CHECKING:
    from .._state import ServerState

__all__ = ["create_run_manager", "router", "setup_queue", "ws_router"]

router = APIRouter(prefix="/api/v1")
"""The native HTTP routes (included by `create_app`, with the rate limits)."""
router.include_router(_threads_router)
router.include_router(_run_router)
router.include_router(_me_router)

ws_router = APIRouter(prefix="/api/v1")
"""The WebSocket route `/api/v1/ws`, included by `create_app` without router dependencies: it authenticates itself
(a header, or a first `auth` message: browsers cannot set headers) and applies the rate limits to each message."""
ws_router.include_router(_ws_router)


def create_run_manager(state: ServerState) -> RunManager:
    """The app's run manager (the lifespan calls it at start-up and awaits its `aclose()` at shutdown).

    The shutdown grace period is `state.extras["run_grace_s"]` when set (default 30 s).
    """
    grace = state.extras.get("run_grace_s", 30.0)
    return RunManager(grace_s=float(grace))
