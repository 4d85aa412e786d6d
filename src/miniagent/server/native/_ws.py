"""The WebSocket API: `GET /api/v1/ws`. Send messages, receive a run's events as they happen, cancel runs.

Authenticate with the `Authorization: Bearer <key or token>` header of the handshake, or (browsers cannot set
headers on a WebSocket) with a first message `{"type": "auth", "token": "<key or token>"}`. Then, as JSON texts:

client -> server:
- `{"type": "message", "content": "...", "thread_id"?: "...", "agent"?: "..."}`: start a run (a new thread when no
  `thread_id`); the server answers `run` then streams its events.
- `{"type": "subscribe", "run_id": "...", "after_seq"?: 0}`: stream the events of a run of yours.
- `{"type": "cancel", "run_id": "..."}`: cancel a run of yours; answered by `cancelled`.
- `{"type": "ping"}`: answered by `pong`.

server -> client: `{"type": "ready", "tenant", "user"}`, `{"type": "run", "run": {...}}`, `{"type": "event",
"run_id", "seq", "event": {...}}`, `{"type": "partial-output", "run_id", "seq", "step", "output"}`, `{"type": "done",
"run": {...}}` (the run's final state, after its last event), `{"type": "cancelled", "run": {...}}`, `{"type":
"error", "code", "message"}`. A message's `id`, if given, comes back as `reply_to` on the direct answer.

Closing the socket does not stop the runs it started: subscribe again (with `after_seq`) to follow them.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ...events import event_to_json
from .._deps import TenantStore, get_state
from .._errors import ApiError
from ._common import agent_for, run_manager, start_run
from ._schemas import AgentName, Content, Id, RunOut
from ._stream import PartialOutputs, run_events

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import anyio.abc

    from .._state import Principal, ServerState

__all__ = ["router"]

router = APIRouter(tags=["websocket"])

AUTH_TIMEOUT_S = 10.0
"""How long a connection without an `Authorization` header has to send its `auth` message."""
MAX_MESSAGE_BYTES = 1_000_000
"""The largest message a client may send."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(max_length=100)] | None = None


class WsAuth(_Msg):
    """Authenticate (first message, when the handshake had no `Authorization` header)."""

    type: Literal["auth"]
    token: Annotated[str, Field(min_length=1, max_length=10_000)]


class WsMessage(_Msg):
    """Post a message and run the agent."""

    type: Literal["message"]
    content: Content
    thread_id: Id | None = None
    agent: AgentName | None = None


class WsSubscribe(_Msg):
    """Follow a run's events."""

    type: Literal["subscribe"]
    run_id: Id
    after_seq: Annotated[int, Field(ge=0)] = 0


class WsCancel(_Msg):
    """Cancel a run."""

    type: Literal["cancel"]
    run_id: Id


class WsPing(_Msg):
    """Check the connection."""

    type: Literal["ping"]


_CLIENT: TypeAdapter[WsMessage | WsSubscribe | WsCancel | WsPing | WsAuth] = TypeAdapter(
    Annotated[WsMessage | WsSubscribe | WsCancel | WsPing | WsAuth, Field(discriminator="type")]
)


class _Connection:
    def __init__(self, websocket: WebSocket, state: ServerState) -> None:
        self.websocket = websocket
        self.state = state
        self._lock = anyio.Lock()
        self.tenant: TenantStore | None = None

    async def send(self, data: dict[str, Any]) -> None:
        async with self._lock:
            await self.websocket.send_text(json.dumps(data, default=str))

    async def guarded(self, work: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Await `work(*args)`, ignoring the errors of a connection that closed meanwhile."""
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await work(*args)

    async def error(self, code: str, message: str, status: int = 400, reply_to: str | None = None) -> None:
        data: dict[str, Any] = {"type": "error", "code": code, "message": message, "status": status}
        if reply_to is not None:
            data["reply_to"] = reply_to
        await self.send(data)

    async def receive(self) -> Any:
        text = await self.websocket.receive_text()
        if len(text) > MAX_MESSAGE_BYTES:
            raise ApiError(413, "message_too_large", f"Messages are limited to {MAX_MESSAGE_BYTES} bytes.")
        try:
            return _CLIENT.validate_json(text)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0] if exc.errors() else {"msg": "invalid", "loc": ()}
            where = ".".join(str(p) for p in first.get("loc", ())) or "message"
            raise ApiError(
                422,
                "invalid_request",
                f"Invalid message ({where}: {first.get('msg')}): send JSON such as "
                '{"type": "message", "content": "Hello"} (types: message, subscribe, cancel, ping).',
            ) from None

    async def authenticate(self) -> Principal | None:
        headers = self.websocket.headers
        auth = self.state.auth
        authorization, api_key = headers.get("authorization"), headers.get("x-api-key")
        try:
            if authorization is None and api_key is None:
                with anyio.move_on_after(AUTH_TIMEOUT_S):
                    first = await self.receive()
                    if not isinstance(first, WsAuth):
                        raise ApiError(
                            401, "unauthorized", 'Authenticate first: send {"type": "auth", "token": "<API key>"}.'
                        )
                    authorization = f"Bearer {first.token}"
                if authorization is None:
                    raise ApiError(401, "unauthorized", "No `auth` message came in time; reconnect and send it first.")
            principal = await auth.authenticate(self.state.store, authorization, api_key)
        except ApiError as exc:
            await self.error(exc.code, exc.message, status=exc.status)
            await self.websocket.close(code=4401 if exc.status == 401 else 4400)
            return None
        if not (principal.has("chat") or principal.has("threads")):
            await self.error("forbidden", "The WebSocket API needs the 'chat' or 'threads' scope.", status=403)
            await self.websocket.close(code=4403)
            return None
        return principal

    async def admit(self, principal: Principal) -> None:
        """Apply the rate limits and budgets to a message as to an HTTP request (429 `ApiError` when refused).

        Called in the task that starts the run, so the run (a task copying this context) is charged to the principal.
        """
        try:
            from .. import _limits
        except ModuleNotFoundError:  # a server without the limits part
            return
        from starlette.responses import Response

        await _limits.enforce_limits(self.websocket, Response(), principal)

    async def forward(self, run_id: str, after_seq: int) -> None:
        """Send a run's events (and partial outputs) after `after_seq`, then its final state."""
        tenant = self.tenant
        assert tenant is not None
        try:
            record = await tenant.get_run(run_id)
            agents = self.state.agents
            name = record.agent_name
            partials = PartialOutputs(agents.get(name) if name and name in agents else None)
            runs = run_manager(self.state) if self.state.runs is not None else None
            local = runs.get(run_id) if runs is not None else None  # a run of this process: its end is awaited below
            start = 0 if partials.active else after_seq
            async for seq, event in run_events(tenant, runs, run_id, after_seq=start):
                partial = partials.feed(event)
                if seq <= after_seq:
                    continue
                await self.send(
                    {"type": "event", "run_id": run_id, "seq": seq, "event": json.loads(event_to_json(event))}
                )
                if partial is not None:
                    await self.send(
                        {
                            "type": "partial-output",
                            "run_id": run_id,
                            "seq": seq,
                            "step": partial.step,
                            "output": partial.output,
                        }
                    )
            if local is None and runs is not None:  # a queued run this process's worker took meanwhile
                local = runs.get(run_id)
            if local is not None:  # its terminal event can come before its task stored the run's end state
                await local.done.wait()
            record = await tenant.get_run(run_id)
            await self.send({"type": "done", "run": RunOut.of(record).model_dump(mode="json")})
        except ApiError as exc:
            await self.error(exc.code, exc.message, status=exc.status)

    async def handle(self, message: Any, tg: anyio.abc.TaskGroup) -> None:
        tenant = self.tenant
        assert tenant is not None
        reply_to = getattr(message, "id", None)
        try:
            if isinstance(message, WsPing):
                await self.send({"type": "pong", **({"reply_to": reply_to} if reply_to else {})})
            elif isinstance(message, WsAuth):
                raise ApiError(400, "already_authenticated", "This connection is already authenticated.")
            elif isinstance(message, WsMessage):
                if not (tenant.principal.has("threads") or tenant.principal.has("chat")):
                    raise ApiError(403, "forbidden", "Posting messages needs the 'chat' or 'threads' scope.")
                agent = agent_for(self.state, message.agent)
                await self.admit(tenant.principal)
                if message.thread_id is not None:
                    await tenant.get_thread(message.thread_id)
                _, run = await start_run(
                    self.state,
                    tenant,
                    agent=agent,
                    prompt=message.content,
                    thread_id=message.thread_id,
                    background=True,
                )
                data: dict[str, Any] = {"type": "run", "run": run.model_dump(mode="json")}
                if reply_to:
                    data["reply_to"] = reply_to
                await self.send(data)
                tg.start_soon(self.guarded, self.forward, run.id, 0)
            elif isinstance(message, WsSubscribe):
                await tenant.get_run(message.run_id)
                tg.start_soon(self.guarded, self.forward, message.run_id, message.after_seq)
            elif isinstance(message, WsCancel):
                record = await tenant.get_run(message.run_id)
                if record.status != "running":
                    raise ApiError(409, "run_not_running", f"Run {message.run_id!r} is not running ({record.status}).")
                handle = await run_manager(self.state).cancel(message.run_id)
                if handle is None:
                    raise ApiError(409, "run_elsewhere", f"Run {message.run_id!r} runs in another server process.")
                record = await tenant.get_run(message.run_id)
                data = {"type": "cancelled", "run": RunOut.of(record).model_dump(mode="json")}
                if reply_to:
                    data["reply_to"] = reply_to
                await self.send(data)
        except ApiError as exc:
            await self.error(exc.code, exc.message, reply_to=reply_to, status=exc.status)


@router.websocket("/ws")
async def websocket_api(websocket: WebSocket) -> None:
    """Bidirectional API: post messages and get their runs' events, follow and cancel runs (see the module doc)."""
    state = get_state(websocket)
    await websocket.accept()
    connection = _Connection(websocket, state)
    principal = await connection.authenticate()
    if principal is None:
        return
    connection.tenant = TenantStore(state.store, principal)
    await connection.send({"type": "ready", "tenant": principal.tenant_id, "user": principal.user_id})
    async with anyio.create_task_group() as tg:
        while True:
            try:
                message = await connection.receive()
            except ApiError as exc:
                await connection.guarded(connection.error, exc.code, exc.message, exc.status)
                continue
            except (WebSocketDisconnect, RuntimeError, OSError):
                break
            tg.start_soon(connection.guarded, connection.handle, message, tg)
        tg.cancel_scope.cancel()  # the client is gone: stop forwarding (its runs go on)
