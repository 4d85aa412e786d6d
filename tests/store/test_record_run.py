"""`SQLStore.record_run`: a thread-less run recorded whole at its end (row, events, usage records) in one write."""

from __future__ import annotations

import pytest

from miniagent.errors import ThreadNotFound, UserError
from miniagent.events import AgentEvent, RunFinished, RunStarted
from miniagent.store import SQLStore
from miniagent.usage import Usage

pytestmark = pytest.mark.anyio


async def test_a_whole_run_is_recorded_with_its_events_and_usage_records(store: SQLStore) -> None:
    usage = Usage(requests=1, input_tokens=5, output_tokens=3)
    events: list[AgentEvent] = [RunStarted("r1", "bench", "hi"), RunFinished("r1", "ok", usage, 0.01)]
    await store.record_run(
        "r1",
        status="succeeded",
        steps=1,
        usage=usage,
        user_id="u1",
        correlation_id="c1",
        agent_name="bench",
        events=events,
        model_usage=[("m", usage)],
    )
    record = await store.get_run("r1")
    assert (record.status, record.steps, record.thread_id, record.user_id) == ("succeeded", 1, None, "u1")
    assert record.usage.total_tokens == 8 and record.finished_at is not None
    assert (record.correlation_id, record.agent_name) == ("c1", "bench")
    stored = await store.events("r1")
    assert [(e.seq, e.event.kind) for e in stored] == [(1, "run-started"), (2, "run-finished")]
    rows = await store.usage_report(group_by=("model", "user"))
    assert [(r.model, r.user_id, r.input_tokens, r.output_tokens) for r in rows] == [("m", "u1", 5, 3)]


async def test_a_run_still_running_is_refused(store: SQLStore) -> None:
    with pytest.raises(UserError, match="has ended"):
        await store.record_run("r2", status="running", steps=0, usage=Usage())
    with pytest.raises(ThreadNotFound, match="No run"):
        await store.get_run("r2")
