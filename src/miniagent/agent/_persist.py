"""Saving a run through the store.

The user message is committed before the model is called, each step (response and tool results) with its events and
one usage record per model response in one transaction, then the run's end state. A run that fails for good (see
[`is_permanent_failure`][miniagent.errors.is_permanent_failure]) writes its dead letter in the transaction of its
failed state. A crash leaves the run `running` until `recover_interrupted` marks it.

Events and errors are stored redacted: an exception's text (a `RetryScheduled` or `RunFailed` message, a tool's error
result) can quote a key or a bearer token, so each event, the run's error and the dead letter's error chain pass
through the observability redactor at this boundary, as they do in logs and spans. The stream a caller reads is not
changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ..events import AgentEvent
from ..usage import Usage

if TYPE_CHECKING:
    from ..memory import SummaryStore
    from ..messages import ModelMessage
    from ..store import DeadLetter, RunStatus, SQLStore
    from ._run import AgentRun, EventSink

__all__ = ["ReplayLink", "RunRecorder", "open_recorder", "redact_events", "replaying", "with_system_part"]

_log = logging.getLogger("miniagent.store")


@dataclass(frozen=True, slots=True)
class ReplayLink:
    """What a replayed run links to: the run it runs again and, when replaying a dead letter, that dead letter."""

    run_id: str
    """The run being replayed (the new run's `replay_of`)."""
    dead_letter_id: str | None = None
    """The dead letter being replayed (a failed replay's dead letter links to it)."""


_REPLAY: ContextVar[ReplayLink | None] = ContextVar("miniagent_replay", default=None)


@contextmanager
def replaying(link: ReplayLink) -> Iterator[ReplayLink]:
    """Runs recorded inside are replays of `link.run_id` (their run rows and dead letters say so)."""
    token = _REPLAY.set(link)
    try:
        yield link
    finally:
        _REPLAY.reset(token)


def _hide(value: Any, redact: Callable[[str], str]) -> Any:
    """`value` (JSON data) with secrets hidden in every string; types are kept, so the event still validates."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_hide(item, redact) for item in value]
    if isinstance(value, dict):
        from ..observability._redact import REDACTED, is_secret_key

        return {
            key: REDACTED if is_secret_key(key) and isinstance(item, str) and item else _hide(item, redact)
            for key, item in value.items()
        }
    return value


def redact_events(events: list[AgentEvent]) -> list[AgentEvent]:
    """The events as they are stored: secrets (API keys, bearer tokens, passwords, configured secret values) in any
    of their texts replaced by `[REDACTED]`. An event without one is the same object; one that cannot be rebuilt
    redacted is left out (and logged), never stored as it was.
    """  # noqa: D205
    if not events:
        return events
    from ..events import event_from_json, event_to_json
    from ..observability._redact import default_redactor

    redact = default_redactor().redact
    kept: list[AgentEvent] = []
    for event in events:
        data = json.loads(event_to_json(event))
        hidden = _hide(data, redact)
        if hidden == data:
            kept.append(event)
            continue
        try:
            kept.append(event_from_json(json.dumps(hidden)))
        except ValueError:  # pydantic's ValidationError is a ValueError
            _log.warning("A %s event held a secret and could not be stored redacted; it was left out", event.kind)
    return kept


def _redact_text(text: str | None) -> str | None:
    if text is None:
        return None
    from ..observability._redact import default_redactor

    return default_redactor().redact(text)


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
        replay: ReplayLink | None = None,
    ) -> None:
        self.store = store
        self.thread_id = thread_id
        self.user_id = user_id
        self.leaf = leaf
        self.profile_prompt = profile_prompt
        """The user's profile as a system prompt text (`UserProfile.prompt()`), loaded when the run started."""
        self.summaries = summaries
        """Where working memory keeps this thread's summary (the store's `thread_summaries`)."""
        self.replay = replay if replay is not None else _REPLAY.get()
        """The run this one replays (from `replaying()` when not given)."""
        self.correlation_id: str | None = None
        """The run's correlation id, read when it starts."""
        self._saved = history_len
        self._events: list[AgentEvent] = []
        self._started = False
        self._input: list[ModelMessage] = []
        self._request_id: str | None = None
        self._retries = 0
        self._fallbacks = 0
        self.adopt = False
        """Continue a run already recorded under the run's id (a worker's claimed queued run)."""

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
            if event.kind == "retry-scheduled":
                self._retries += 1
            elif event.kind == "fallback-used":
                self._fallbacks += 1
            if downstream is not None:
                await downstream(event)

        return record

    def _model_usage(self, run: AgentRun[Any, Any]) -> list[tuple[str, Usage]]:
        """A usage record per model response not written yet: the model that answered, and what it cost."""
        from ..messages import ModelResponse

        return [
            (m.model_name or run.model.name, m.usage)
            for m in run.messages[self._saved :]
            if isinstance(m, ModelResponse)
        ]

    async def _write(
        self,
        run: AgentRun[Any, Any],
        status: RunStatus | None = None,
        error: str | None = None,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        new = run.messages[self._saved :]
        events, self._events = self._events, []
        usage = Usage()
        usage.incr(run.usage)
        try:
            ids = await self.store.append(
                self.thread_id,
                new,
                expected_leaf=self.leaf,
                user_id=self.user_id,
                run_id=run.run_id,
                run_steps=run.step,
                run_usage=usage,
                events=redact_events(events),
                run_status=status,
                run_error=_redact_text(error),
                model_usage=self._model_usage(run),
                dead_letter=dead_letter,
            )
        except BaseException:
            self._events = events + self._events  # kept for the write that records the run's end
            raise
        if ids:
            self.leaf = ids[-1]
        self._saved = len(run.messages)

    async def start(self, run: AgentRun[Any, Any]) -> None:
        """Record the run (with its correlation id, agent and replay link) and commit its first request (the user's
        message) before the model sees it.
        """  # noqa: D205
        from ..context import current_correlation_id, current_run

        scope = current_run()
        self.correlation_id = scope.correlation_id if scope is not None else current_correlation_id()
        await self.store.start_run(
            run.run_id,
            thread_id=self.thread_id,
            user_id=self.user_id,
            correlation_id=self.correlation_id,
            agent_name=run.agent.name,
            replay_of=self.replay.run_id if self.replay is not None else None,
            adopt=self.adopt,
        )
        if self.adopt:  # a claimed queued run: go on from its committed steps and usage
            record = await self.store.get_run(run.run_id)
            run.step = record.steps
            run.usage.incr(record.usage)
        self._started = True
        self._input = list(run.messages)  # the history it started from and its first request: what a replay needs
        await self._write(run)
        self._request_id = self.leaf

    def _dead_letter(self, run: AgentRun[Any, Any], exc: BaseException | None) -> DeadLetter | None:
        """The run's dead letter when `exc` is a permanent failure; never raises (a failure here is logged)."""
        if exc is None:
            return None
        try:
            from ..errors import is_permanent_failure
            from ..store._dead_letters import new_dead_letter

            if not is_permanent_failure(exc):
                return None
            return new_dead_letter(
                run_id=run.run_id,
                messages=self._input,
                error=exc,
                tenant_id=self.store.tenant_id,
                created_at=self.store.now(),
                user_id=self.user_id,
                thread_id=self.thread_id,
                agent_name=run.agent.name,
                correlation_id=self.correlation_id,
                meta={
                    "request_message_id": self._request_id,
                    "model": run.model.name,
                    "steps": run.step,
                    "retries": self._retries,
                    "fallbacks": self._fallbacks,
                },
                replay_of=self.replay.dead_letter_id if self.replay is not None else None,
            )
        except Exception:
            _log.exception("Could not build the dead letter of run %s; the run's own error is kept", run.run_id)
            return None

    async def tool_intent(self, run: AgentRun[Any, Any], tool_name: str, tool_call_id: str) -> None:
        """Commit that a non-idempotent tool call is about to run (a worker taking the run over will not repeat it)."""
        await self.store.record_tool_intent(run.run_id, tool_call_id=tool_call_id, tool_name=tool_name, step=run.step)

    async def checkpoint(self, run: AgentRun[Any, Any]) -> None:
        """Commit the step just finished (the response and the tool results) with its events."""
        await self._write(run)

    async def finish(
        self,
        run: AgentRun[Any, Any],
        status: RunStatus,
        error: str | None = None,
        *,
        exc: BaseException | None = None,
    ) -> None:
        """Commit what is left and the run's end state; for a permanent failure (`exc`), its dead letter too.

        On a failure path a store error is not raised over the run's own error: the run then stays `running` and
        `recover_interrupted` marks it later. A dead letter that cannot be written is logged, never raised.
        """
        if not self._started:
            return
        if status == "succeeded":
            await self._write(run, status)
            return
        letter = self._dead_letter(run, exc) if status == "failed" else None
        try:
            await self._write(run, status, error, dead_letter=letter)
            return
        except StoreError:
            _log.warning("Could not write the end of run %s with its messages", run.run_id, exc_info=True)
        # The messages may not fit after a conflict: keep the state, the costs and the dead letter at least.
        usage = Usage()
        usage.incr(run.usage)
        events, self._events = self._events, []
        for with_letter in (True, False) if letter is not None else (False,):
            try:
                await self.store.finish_run(
                    run.run_id,
                    status=status,
                    steps=run.step,
                    usage=usage,
                    error=_redact_text(error),
                    events=redact_events(events),
                    model_usage=self._model_usage(run),
                    dead_letter=letter if with_letter else None,
                )
                return
            except StoreError:
                _log.warning(
                    "Could not record the end of run %s%s", run.run_id, " with its dead letter" if with_letter else ""
                )


@asynccontextmanager
async def open_recorder(
    store: SQLStore | None, *, thread_id: str | None, user_id: str | None, replay: ReplayLink | None = None
) -> AsyncIterator[tuple[RunRecorder, list[Any]]]:
    """Open the store (the configured default unless given), load or create the thread.

    Yields the recorder and the history to continue from. With `replay` (or inside `replaying()`), the run is
    recorded as a replay of that run.
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
            replay=replay,
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
