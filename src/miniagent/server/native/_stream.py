"""A run's events as a stream: from the run manager when this process runs it, else from the store.

Each event carries its sequence number (the store's `seq`), so a client that reconnects with the last number it saw
(`Last-Event-ID`) gets exactly the events after it. For an agent with a structured `output_type`, the arguments of
its output tool are also parsed as they stream into `partial-output` items: the output so far, with the sequence
number of the delta that completed it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ...events import AgentEvent, StreamRestarted, ToolCallArgsDelta, event_to_json
from .._runs import TERMINAL_KINDS, RunManager
from ._common import jsonable

if TYPE_CHECKING:
    from ...agent import Agent
    from .._deps import TenantStore

__all__ = ["PartialOutput", "PartialOutputs", "run_events", "sse_frames"]

POLL_INTERVAL_S = 0.5
"""How often a run of another process (another worker) is read again from the store while it is running."""


@dataclass(frozen=True, slots=True)
class PartialOutput:
    """The structured output so far, parsed from the output tool's streamed arguments."""

    run_id: str
    """The run."""
    step: int
    """The step whose output tool call is streaming."""
    output: Any
    """The output so far, as JSON data (fields not received yet are `null` or their default)."""

    def to_json(self) -> dict[str, Any]:
        """As a JSON object."""
        return {"run_id": self.run_id, "step": self.step, "output": self.output, "kind": "partial-output"}


class PartialOutputs:
    """Turns a run's `tool-call-args-delta` events of the output tool into `PartialOutput`s (when they change).

    Args:
        agent: The run's agent (`None`, or text output: nothing is produced).
    """

    def __init__(self, agent: Agent[Any, Any] | None) -> None:
        from ...agent._output import OUTPUT_TOOL_NAME

        schema = agent._output_schema() if agent is not None else None
        self._schema = schema if schema is not None and not schema.text else None
        self._tool = OUTPUT_TOOL_NAME
        self._args: dict[tuple[int, int], str] = {}
        self._last: Any = None

    @property
    def active(self) -> bool:
        """Whether the agent has a structured output (so partial outputs can exist)."""
        return self._schema is not None

    def feed(self, event: AgentEvent) -> PartialOutput | None:
        """The new partial output this event completes, if any."""
        if self._schema is None:
            return None
        if isinstance(event, StreamRestarted):
            self._args = {k: v for k, v in self._args.items() if k[0] != event.step}
            return None
        if not isinstance(event, ToolCallArgsDelta) or event.tool_name != self._tool:
            return None
        key = (event.step, event.index)
        self._args[key] = self._args.get(key, "") + event.delta
        partial = self._schema.partial(self._args[key])
        if partial is None:
            return None
        data = jsonable(partial)
        if data == self._last:
            return None
        self._last = data
        return PartialOutput(event.run_id, event.step, data)


async def run_events(
    tenant: TenantStore,
    runs: RunManager | None,
    run_id: str,
    *,
    after_seq: int = 0,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> AsyncIterator[tuple[int, AgentEvent]]:
    """The run's events after `after_seq`, in order, until its end (the caller checked it is the principal's).

    A run of this process is followed through the run manager: its events so far and then the live ones, in one
    consistent snapshot (a run this process took over from another worker: its earlier events from the store
    first). Any other run is read from the store; while it is `queued` or `running` (in a worker), the store is read
    again every `poll_interval_s` seconds (its recorder writes once per step).
    """
    last = after_seq
    while True:
        handle = runs.get(run_id) if runs is not None else None
        if handle is not None and handle.tenant_id == tenant.tenant_id and handle.user_id == tenant.user_id:
            follower = handle.follow(last, buffer=runs.follower_buffer if runs is not None else 1000)
            try:
                if last < handle.base_seq:  # a run taken over here: its earlier events are in the store
                    for stored in await tenant.events(run_id, after_seq=last):
                        if stored.seq > handle.base_seq:
                            break
                        last = follower.last_seq = stored.seq
                        yield stored.seq, stored.event
                async for seq, event in follower:
                    last = seq
                    yield seq, event
            finally:
                follower.close()
            if handle.terminal:
                return
            continue  # handed back to the queue at shutdown: followed from the store again
        record = await tenant.get_run(run_id)  # the state first: events read after a final state are complete
        for stored in await tenant.events(run_id, after_seq=last):
            last = stored.seq
            yield stored.seq, stored.event
            if stored.event.kind in TERMINAL_KINDS:
                return
        if record.status not in ("running", "queued"):  # a queued run's worker has not started it yet
            return
        if runs is not None and runs.get(run_id) is not None:
            continue  # this process's worker has just taken it: follow it live
        await anyio.sleep(poll_interval_s)


def _frame(seq: int, kind: str, data: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind.encode(), data)


async def sse_frames(
    tenant: TenantStore,
    runs: RunManager | None,
    run_id: str,
    *,
    agent: Agent[Any, Any] | None,
    last_event_id: int,
) -> AsyncIterator[bytes]:
    """The run's events as Server-Sent Events: `id:` the sequence number, `event:` the kind, `data:` the event.

    Partial structured outputs are `event: partial-output` frames with the id of the delta that completed them.
    """
    import json

    partials = PartialOutputs(agent)
    # Partial outputs are rebuilt from the start of the run, so a resumed stream's next partial output is whole.
    start = 0 if partials.active else last_event_id
    yield b"retry: 2000\n\n"
    async for seq, event in run_events(tenant, runs, run_id, after_seq=start):
        partial = partials.feed(event)
        if seq <= last_event_id:
            continue
        yield _frame(seq, event.kind, event_to_json(event))
        if partial is not None:
            yield _frame(seq, "partial-output", json.dumps(partial.to_json()).encode())
