"""Saving a run through the store.

The user message is committed before the model is called, each step (response and tool results) with its events in
one transaction, then the run's end state. A crash leaves the run `running` until `recover_interrupted` marks it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ..events import AgentEvent
from ..usage import Usage

if TYPE_CHECKING:
    from ..memory import SummaryStore
    from ..messages import ModelMessage
    from ..store import RunStatus, SQLStore
    from ._run import AgentRun, EventSink

__all__ = ["RunRecorder", "open_recorder", "with_system_part"]


class RunRecorder:
    """Writes one run's messages, events and state to the store, after the thread's leaf it was loaded at."""

    memory_note: str | None = None
    """The user's recalled long-term memories as a system note for this run (never stored)."""

    def __init__(
        self,
        store: SQLStore,
        *,
        thread_id: str,
        user_id: str,
        leaf: str | None,
        history_len: int,
        profile_prompt: str | None = None,
        summaries: SummaryStore | None = None,
    ) -> None:
        self.store = store
        self.thread_id = thread_id
        self.user_id = user_id
        self.leaf = leaf
        self.profile_prompt = profile_prompt
        """The user's profile as a system prompt text (`UserProfile.prompt()`), loaded when the run started."""
        self.summaries = summaries
        """Where working memory keeps this thread's summary (the store's `thread_summaries`)."""
        self._saved = history_len
        self._events: list[AgentEvent] = []
        self._started = False

    def prepare(self, messages: list[ModelMessage]) -> list[ModelMessage]:
        """The messages the model is sent: with the user's profile as one more system part (never stored)."""
        if self.profile_prompt:
            messages = with_system_part(messages, self.profile_prompt)
        if self.memory_note:  # recalled long-term memories (`Agent(long_term_memory=...)`)
            messages = with_system_part(messages, self.memory_note)
        return messages

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
    from ..store import DEFAULT_USER, SQLSummaryStore, open_store

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
        profile = await active.get_profile(user_id=user)
        recorder = RunRecorder(
            active,
            thread_id=thread.id,
            user_id=user,
            leaf=leaf,
            history_len=len(history),
            profile_prompt=profile.prompt() if profile is not None else None,
            summaries=SQLSummaryStore(active, user_id=user),
        )
        yield recorder, history
    finally:
        if owned:
            await active.close()


def with_system_part(messages: list[ModelMessage], text: str) -> list[ModelMessage]:
    """`messages` with a `SystemPromptPart(text)` after the leading system parts of the first request (a copy)."""
    from ..messages import ModelRequest, SystemPromptPart

    if not messages or not isinstance(messages[0], ModelRequest):
        return [ModelRequest([SystemPromptPart(text)]), *messages]
    first = messages[0]
    at = 0
    while at < len(first.parts) and isinstance(first.parts[at], SystemPromptPart):
        at += 1
    parts = [*first.parts[:at], SystemPromptPart(text), *first.parts[at:]]
    return [replace(first, parts=parts), *messages[1:]]
