"""Saving a run through the store.

The user message is committed before the model is called, each step (response and tool results) with its events in
one transaction, then the run's end state. A crash leaves the run `running` until `recover_interrupted` marks it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ..events import AgentEvent
from ..usage import Usage

if TYPE_CHECKING:
    from ..store import RunStatus, SQLStore
    from ._run import AgentRun, EventSink

__all__ = ["RunRecorder", "open_recorder"]


class RunRecorder:
    """Writes one run's messages, events and state to the store, after the thread's leaf it was loaded at."""

    def __init__(self, store: SQLStore, *, thread_id: str, user_id: str, leaf: str | None, history_len: int) -> None:
        self.store = store
        self.thread_id = thread_id
        self.user_id = user_id
        self.leaf = leaf
        self._saved = history_len
        self._events: list[AgentEvent] = []
        self._started = False

    def sink(self, downstream: EventSink | None) -> EventSink:
        """An event sink that keeps every event for the next write and forwards it."""

        async def record(event: AgentEvent) -> None:
            self._events.append(event)
            if downstream is not None:
                await downstream(event)

        return record

    async def _write(self, run: AgentRun[Any, Any], status: RunStatus | None = None, error: str | None = None) -> None:
        new = run.messages[self._saved :]
        events, self._events = self._events, []
        usage = Usage()
        usage.incr(run.usage)
        ids = await self.store.append(
            self.thread_id,
            new,
            expected_leaf=self.leaf,
            user_id=self.user_id,
            run_id=run.run_id,
            run_steps=run.step,
            run_usage=usage,
            events=events,
            run_status=status,
            run_error=error,
        )
        if ids:
            self.leaf = ids[-1]
        self._saved = len(run.messages)

    async def start(self, run: AgentRun[Any, Any]) -> None:
        """Record the run and commit its first request (the user's message) before the model sees it."""
        await self.store.start_run(run.run_id, thread_id=self.thread_id, user_id=self.user_id)
        self._started = True
        await self._write(run)

    async def checkpoint(self, run: AgentRun[Any, Any]) -> None:
        """Commit the step just finished (the response and the tool results) with its events."""
        await self._write(run)

    async def finish(self, run: AgentRun[Any, Any], status: RunStatus, error: str | None = None) -> None:
        """Commit what is left and the run's end state.

        On a failure path a store error is not raised over the run's own error: the run then stays `running` and
        `recover_interrupted` marks it later.
        """
        if not self._started:
            return
        if status == "succeeded":
            await self._write(run, status)
            return
        try:
            await self._write(run, status, error)
        except StoreError:
            # The messages may not fit after a conflict: keep the state at least.
            try:
                usage = Usage()
                usage.incr(run.usage)
                await self.store.finish_run(run.run_id, status=status, steps=run.step, usage=usage, error=error)
            except StoreError:
                pass


@asynccontextmanager
async def open_recorder(
    store: SQLStore | None, *, thread_id: str | None, user_id: str | None
) -> AsyncIterator[tuple[RunRecorder, list[Any]]]:
    """Open the store (the configured default unless given), load or create the thread.

    Yields the recorder and the history to continue from.
    """
    from ..store import DEFAULT_USER, open_store

    owned = store is None
    active = store if store is not None else await open_store()
    try:
        user = user_id or DEFAULT_USER
        if thread_id is None:
            thread = await active.create_thread(user_id=user)
            stored = []
        else:
            thread = await active.get_thread(thread_id, user_id=user)
            stored = await active.history(thread.id, user_id=user)
        history = [m.message for m in stored]
        leaf = stored[-1].id if stored else None
        yield RunRecorder(active, thread_id=thread.id, user_id=user, leaf=leaf, history_len=len(history)), history
    finally:
        if owned:
            await active.close()
