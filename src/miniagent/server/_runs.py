"""The run manager: agent runs as in-process tasks, tracked in the store, cancellable, with live event fan-out.

Every run the server starts (synchronous or background) is a task of the manager's task group, so a request that
waits for it, a client that streams its events and a client that cancels it all talk to the same task. Each event
gets the sequence number the store gives it (`run_events.seq`): the store numbers a run's events from 1 in the order
the run's recorder receives them, and the manager's sink sits right after the recorder, so counting the events it
sees gives the same numbers. A stream can therefore switch from the store (events already written) to the live feed
(events not written yet: the recorder writes once per step) by sequence number, with no gap and no duplicate.

The manager keeps every event of a run it is running in memory until the run's task ends (a run's events are
small: deltas, tool calls, usage), so a subscriber gets the whole history, then the live events, in one consistent
snapshot. Runs of other processes (another worker) are followed from the store.

Only [`RunBackend`][miniagent.server._runs.RunBackend] is what routes use, so a queue of workers can replace the
in-process manager later.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import MiniAgentError

if TYPE_CHECKING:
    from ..agent import Agent
    from ..agent._result import RunResult
    from ..context import Handback
    from ..events import AgentEvent
    from ..store import SQLStore

__all__ = [
    "INTERRUPTED_ERROR",
    "TERMINAL_KINDS",
    "Follower",
    "RunBackend",
    "RunHandle",
    "RunManager",
    "RunRequest",
    "ServerShuttingDown",
    "ThreadBusy",
]

_log = logging.getLogger("miniagent.server")

TERMINAL_KINDS = frozenset({"run-finished", "run-failed", "run-cancelled"})
"""The kinds of the event that ends every run's stream."""

INTERRUPTED_ERROR = (
    "The server shut down before the run ended (it did not finish within the shutdown grace period); its committed "
    "messages are kept: resume it with `POST /api/v1/runs/{run_id}/resume` or continue the thread."
)
"""The error recorded on a run the server interrupted at shutdown."""

SequencedEvent = tuple[int, "AgentEvent"]
"""An event with its sequence number in its run (the store's `seq`, from 1)."""


class ThreadBusy(MiniAgentError):
    """A run is already in progress on that thread in this server; wait for it or cancel it."""

    def __init__(self, thread_id: str, run_id: str) -> None:
        super().__init__(
            f"Run {run_id!r} is still in progress on thread {thread_id!r}: wait for it to end, or cancel it "
            f"(`POST /api/v1/runs/{run_id}/cancel`), then retry."
        )
        self.thread_id = thread_id
        self.run_id = run_id


class ServerShuttingDown(MiniAgentError):
    """The server is shutting down and starts no new run; retry against another replica or after the restart."""


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What to run: an agent, a prompt and where the run is stored."""

    agent: Agent[Any, Any]
    """The agent."""
    prompt: str | None
    """The user's message; `None` continues the thread from its current leaf (after an edit or a regenerate)."""
    store: SQLStore
    """The store, scoped to the principal's tenant (its `tenant_id` is theirs)."""
    tenant_id: str
    """The tenant the run belongs to."""
    user_id: str
    """The user it runs for."""
    thread_id: str | None = None
    """The thread to continue; `None` starts a new one."""
    run_id: str | None = None
    """Continue the run recorded under this id (a queued run a worker claimed); `None` records a new run."""
    base_seq: int = 0
    """The sequence number of the run's last event already stored (a run taken over goes on after it)."""
    via_queue: bool = False
    """A queued run: interrupted at shutdown, it is handed back to the queue (not recorded `interrupted`)."""


@dataclass(eq=False)
class RunHandle:
    """A run of this process: its id once known, its events so far, its outcome once done."""

    request: RunRequest
    """What was asked."""
    run_id: str | None = None
    """The run's id (known from its first event)."""
    thread_id: str | None = None
    """Its thread (known from its first event, also for a new thread)."""
    events: list[SequencedEvent] = field(default_factory=list[SequencedEvent])
    """Every event so far, with its sequence number."""
    result: RunResult[Any] | None = None
    """The result of a run that succeeded."""
    error: BaseException | None = None
    """The exception of a run that failed (or could not start)."""
    cancelled: bool = False
    """Whether the run was cancelled (by a client or at shutdown)."""
    interrupted: bool = False
    """Whether the run was cancelled at shutdown (then recorded as `interrupted`)."""
    done: anyio.Event = field(default_factory=anyio.Event)
    """Set when the run's task has ended (its end state is in the store)."""
    started: anyio.Event = field(default_factory=anyio.Event)
    """Set once the run is recorded in the store (or its task ended before that)."""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    """Cancels the run's task."""
    handback: Handback | None = None
    """Set while the run's task runs: `requested` makes a cancellation hand the run back (nothing recorded)."""
    _subscribers: list[MemoryObjectSendStream[SequencedEvent]] = field(
        default_factory=list[MemoryObjectSendStream[SequencedEvent]]
    )

    @property
    def terminal(self) -> bool:
        """Whether the run's last event (finished, failed or cancelled) has been emitted."""
        return bool(self.events) and self.events[-1][1].kind in TERMINAL_KINDS

    @property
    def base_seq(self) -> int:
        """The sequence number of the run's last event stored before this process took it (0 for a new run)."""
        return self.request.base_seq

    @property
    def tenant_id(self) -> str:
        """The tenant the run belongs to."""
        return self.request.tenant_id

    @property
    def user_id(self) -> str:
        """The user it runs for."""
        return self.request.user_id

    async def sink(self, event: AgentEvent) -> None:
        """The run's event sink: number the event, keep it, hand it to every subscriber (never blocks the run)."""
        if not self.events:
            from ..context import current_run

            scope = current_run()
            self.run_id = self.run_id or getattr(event, "run_id", None)
            self.thread_id = scope.thread_id if scope is not None else self.request.thread_id
        elif len(self.events) == 1:
            # The second event comes after the recorder committed the run's row and first request: the run exists.
            self.started.set()
        seq = self.request.base_seq + len(self.events) + 1
        self.events.append((seq, event))
        for stream in list(self._subscribers):
            try:
                stream.send_nowait((seq, event))
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                # A slow or gone subscriber is dropped; its `Follower` catches up from `events` on its own.
                self._unsubscribe(stream)
        if event.kind in TERMINAL_KINDS:
            self._close_subscribers()

    def interrupt(self) -> None:
        """Stop the run at shutdown.

        A queued run is handed back (nothing recorded); any other is cancelled and recorded `interrupted`.
        """
        self.interrupted = True
        if self.request.via_queue and self.handback is not None:
            self.handback.requested = True
        self.scope.cancel()

    def _unsubscribe(self, stream: MemoryObjectSendStream[SequencedEvent]) -> None:
        if stream in self._subscribers:
            self._subscribers.remove(stream)
        stream.close()

    def _close_subscribers(self) -> None:
        for stream in list(self._subscribers):
            self._unsubscribe(stream)

    def follow(self, after_seq: int = 0, *, buffer: int = 1000) -> Follower:
        """The run's events after `after_seq`: those so far, then the live ones, until its terminal event."""
        return Follower(self, after_seq, buffer=buffer)

    def _subscribe(self, after_seq: int, buffer: int) -> tuple[list[SequencedEvent], MemoryObjectReceiveStream[Any]]:
        # No await in here: the snapshot and the registration happen at one point of the event stream.
        backlog = [item for item in self.events if item[0] > after_seq]
        send, receive = anyio.create_memory_object_stream[SequencedEvent](buffer)
        if self.terminal or self.done.is_set():
            send.close()
        else:
            self._subscribers.append(send)
        return backlog, receive


class Follower:
    """Iterates over a local run's events after a sequence number: the backlog, then the live ones, with no gap.

    Registered when created (not when iterated), so whatever the caller reads from the store in between is covered.
    A follower that falls behind by more than `buffer` events is dropped by the run and resumes from the run's
    in-memory events by itself.
    """

    def __init__(self, handle: RunHandle, after_seq: int, *, buffer: int = 1000) -> None:
        self.handle = handle
        self.last_seq = after_seq
        """The sequence number of the last event yielded."""
        self._buffer = buffer
        self._backlog, self._live = handle._subscribe(after_seq, buffer)

    def close(self) -> None:
        """Stop following (the subscription is released)."""
        self._live.close()

    async def __aiter__(self) -> AsyncIterator[SequencedEvent]:
        try:
            while True:
                for seq, event in self._backlog:
                    if seq > self.last_seq:
                        self.last_seq = seq
                        yield seq, event
                self._backlog = []
                async for seq, event in self._live:
                    if seq > self.last_seq:
                        self.last_seq = seq
                        yield seq, event
                handle = self.handle
                if handle.terminal or handle.done.is_set():
                    for seq, event in handle.events:  # anything emitted after the last live one
                        if seq > self.last_seq:
                            self.last_seq = seq
                            yield seq, event
                    return
                # Dropped for being slow: catch up from the run's events and listen again.
                self._backlog, self._live = handle._subscribe(self.last_seq, self._buffer)
        finally:
            self._live.close()


class RunBackend(Protocol):
    """What the routes need from whatever runs agents: start, find, follow, cancel, shut down."""

    async def start(self, request: RunRequest) -> RunHandle:
        """Start a run; returns once the run is recorded in the store (or failed before that)."""
        ...

    def get(self, run_id: str) -> RunHandle | None:
        """The run if this process runs it (`None`: not here, or already ended)."""
        ...

    async def cancel(self, run_id: str) -> RunHandle | None:
        """Cancel a run of this process and wait for its end state to be recorded; `None` if not running here."""
        ...

    async def shutdown(self, grace_s: float) -> None:
        """Let running runs finish for `grace_s` seconds, then cancel them and record them as `interrupted`."""
        ...


class RunManager:
    """Runs agents as tasks of this process; the app's lifespan calls `aclose()` at shutdown (or `async with`).

    Args:
        grace_s: At shutdown, how long running runs may take to finish before they are interrupted.
        follower_buffer: Live events a subscriber may lag behind before it is dropped (it then catches up).
    """

    def __init__(self, *, grace_s: float = 30.0, follower_buffer: int = 1000) -> None:
        if not (grace_s >= 0 and math.isfinite(grace_s)):
            raise ValueError(f"`grace_s` must be a finite number of seconds >= 0, got {grace_s!r}.")
        self.grace_s = grace_s
        self.follower_buffer = follower_buffer
        self._runs: dict[str, RunHandle] = {}
        self._threads: dict[str, RunHandle] = {}
        self._handles: set[RunHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def __aenter__(self) -> RunManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Shut down with the configured grace period (the app's lifespan calls it)."""
        await self.shutdown(self.grace_s)

    @property
    def closing(self) -> bool:
        """Whether the shutdown has begun (no new run starts)."""
        return self._closing

    @property
    def active(self) -> list[RunHandle]:
        """The runs in progress in this process."""
        return [h for h in self._handles if not h.done.is_set()]

    def get(self, run_id: str) -> RunHandle | None:
        """The run if this process runs it (`None`: not here, or already ended)."""
        return self._runs.get(run_id)

    async def start(self, request: RunRequest) -> RunHandle:
        """Start a run as a task; returns once its row is in the store (or its task ended before that).

        Raises:
            ThreadBusy: another run of this process is in progress on the thread.
            ServerShuttingDown: the server is shutting down.
        """
        if self._closing:
            raise ServerShuttingDown(
                "The server is shutting down and starts no new run: retry on another replica or after the restart."
            )
        if request.thread_id is not None:
            busy = self._threads.get(request.thread_id)
            if busy is not None and not busy.done.is_set():
                raise ThreadBusy(request.thread_id, busy.run_id or "(starting)")
        handle = RunHandle(request, run_id=request.run_id)
        self._handles.add(handle)
        if request.run_id is not None:
            self._runs[request.run_id] = handle
        if request.thread_id is not None:
            self._threads[request.thread_id] = handle
        # A task of its own (not a task group's): the run outlives the request that started it; the task copies the
        # request's context (its correlation id).
        task = asyncio.get_running_loop().create_task(self._drive(handle), name=f"miniagent-run-{id(handle):x}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await handle.started.wait()
        return handle

    async def _drive(self, handle: RunHandle) -> None:
        request = handle.request

        async def sink(event: AgentEvent) -> None:
            first = not handle.events
            await handle.sink(event)
            if first and handle.run_id is not None:
                self._runs[handle.run_id] = handle
                if handle.thread_id is not None and request.thread_id is None:
                    self._threads[handle.thread_id] = handle

        from ..context import handback_scope

        try:
            with handle.scope, handback_scope() as handle.handback:
                # Interrupted before its task got here: the cancellation already pending is a hand-back too.
                handle.handback.requested = handle.interrupted and request.via_queue
                try:
                    handle.result = await request.agent.run(
                        request.prompt,
                        thread_id=request.thread_id,
                        user_id=request.user_id,
                        store=request.store,
                        event_sink=sink,
                        run_id=request.run_id,
                    )
                except Exception as exc:  # the run's failure is recorded by its recorder; kept for the caller
                    handle.error = exc
            if handle.scope.cancelled_caught:
                handle.cancelled = True
            if handle.interrupted and handle.run_id is not None and not request.via_queue:
                with anyio.CancelScope(shield=True):
                    await self._mark_interrupted(handle)
        finally:
            handle.started.set()
            handle.done.set()
            handle._close_subscribers()
            if handle.run_id is not None and self._runs.get(handle.run_id) is handle:
                del self._runs[handle.run_id]
            for key in [k for k, v in self._threads.items() if v is handle]:
                del self._threads[key]
            self._handles.discard(handle)

    @staticmethod
    async def _mark_interrupted(handle: RunHandle) -> None:
        assert handle.run_id is not None
        store = handle.request.store
        try:
            record = await store.get_run(handle.run_id, tenant_id=handle.tenant_id)
            if record.status in ("running", "cancelled"):
                await store.finish_run(
                    handle.run_id,
                    status="interrupted",
                    steps=record.steps,
                    usage=record.usage,
                    error=INTERRUPTED_ERROR.replace("{run_id}", handle.run_id),
                )
        except Exception:  # shutting down: a store that fails now leaves `recover_interrupted` to mark it
            _log.warning("Could not mark run %s as interrupted", handle.run_id, exc_info=True)

    async def cancel(self, run_id: str) -> RunHandle | None:
        """Cancel a run of this process (its model stream and tools stop; the run is recorded `cancelled` with its
        partial usage) and wait until that is recorded; `None` if the run is not running here.
        """  # noqa: D205
        handle = self._runs.get(run_id)
        if handle is None:
            return None
        handle.scope.cancel()
        await handle.done.wait()
        return handle

    async def shutdown(self, grace_s: float) -> None:
        """Refuse new runs; let running ones finish for `grace_s` seconds, then interrupt the rest.

        An interrupted run is cancelled (its tools and model stream stop) and recorded as `interrupted`, so it can
        be resumed.
        """
        self._closing = True
        with anyio.move_on_after(grace_s):
            for handle in list(self._handles):
                await handle.done.wait()
        left = [h for h in self._handles if not h.done.is_set()]
        for handle in left:
            handle.interrupt()
        for handle in left:
            await handle.done.wait()
        # `done` is set in the task's `finally`; await the tasks themselves too, so that when this returns no run task
        # is left to touch the store (the lifespan closes it next; a connection still checked out by a task then
        # would be closed on an engine already disposed).
        while self._tasks:
            await asyncio.wait(list(self._tasks))
