"""The worker against the embedded SQLite queue and store: claims, idempotent redelivery, takeover after a worker
stops mid-run (completed steps are not run again; a non-idempotent tool is never repeated), poison and failed jobs
dead-lettered, cancel through the store, graceful hand-back, and fair scheduling across tenants."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from miniagent import Agent
from miniagent.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from miniagent.queue import Job, JobQueue, open_queue
from miniagent.server._runs import RunManager, RunRequest
from miniagent.store import SQLStore
from miniagent.testing import FunctionModel
from miniagent.worker import FairScheduler, Worker

pytestmark = pytest.mark.anyio

LEASE_S = 0.6  # short, so a "dead" worker's lease runs out quickly (the tests wait on conditions, never on time)
QUEUE_LEASE_S = 10.0  # the queue's own lease: long, so a loaded machine never hands a held job out twice


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLStore]:
    opened = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[JobQueue]:
    opened = open_queue(f"sqlite:///{tmp_path / 'queue.db'}", name=f"t.{uuid.uuid4().hex}", lease_s=QUEUE_LEASE_S)
    await opened.connect()
    try:
        yield opened
    finally:
        await opened.close()


async def wait_for(predicate: Any, *, limit_s: float = 30.0) -> None:
    """Wait until `predicate()` is true (a hang guard, not a timing assertion)."""
    with anyio.fail_after(limit_s):
        while not await _call(predicate):  # noqa: ASYNC110  # state of code with no event to set
            await anyio.sleep(0.02)


async def _call(predicate: Any) -> bool:
    value = predicate()
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value)


async def enqueue(store: SQLStore, queue: JobQueue, prompt: str, *, tenant: str = "default", agent: str = "a") -> str:
    record, _ = await store.enqueue_run(agent_name=agent, prompt=prompt, user_id="u", tenant_id=tenant)
    await queue.enqueue(
        Job(run_id=record.id, tenant_id=tenant, user_id="u", agent=agent, thread_id=record.thread_id, prompt=prompt)
    )
    return record.id


def echo_agent(name: str = "a") -> Agent[None, str]:
    def model(messages: list[ModelMessage], info: object) -> ModelResponse:
        return ModelResponse([TextPart("echo")])

    return Agent(FunctionModel(model), name=name)


@dataclass
class Steps:
    """A two-step agent: step 1 calls `tool` (counted), step 2 waits at `gate` before answering."""

    tool_calls: int = 0
    model_calls: int = 0
    at_step_two: anyio.Event = field(default_factory=anyio.Event)
    gate: anyio.Event = field(default_factory=anyio.Event)
    tool_entered: anyio.Event = field(default_factory=anyio.Event)
    tool_gate: anyio.Event | None = None


def two_step_agent(steps: Steps, *, idempotent: bool = True) -> Agent[None, str]:
    async def model(messages: list[ModelMessage], info: object) -> ModelResponse:
        steps.model_calls += 1
        if any(isinstance(p, ToolReturnPart) for p in messages[-1].parts):
            steps.at_step_two.set()
            await steps.gate.wait()
            return ModelResponse([TextPart("finished")])
        return ModelResponse([ToolCallPart("effect", {}, f"call-{steps.model_calls}")])

    agent: Agent[None, str] = Agent(FunctionModel(model), name="a")

    async def effect() -> str:
        """Do the side effect."""
        steps.tool_calls += 1
        steps.tool_entered.set()
        if steps.tool_gate is not None:
            await steps.tool_gate.wait()
        return "done"

    agent.tool(idempotent=idempotent)(effect)
    return agent


async def test_a_queued_run_is_executed_and_acknowledged(store: SQLStore, queue: JobQueue) -> None:
    run_id = await enqueue(store, queue, "hello")
    worker = Worker(queue, store, {"a": echo_agent()}, concurrency=2, lease_s=LEASE_S)
    worker.start()
    try:
        await wait_for(lambda: worker.stats.completed == 1)
    finally:
        await worker.aclose(0)
    record = await store.get_run(run_id)
    assert record.status == "succeeded" and record.attempts == 1 and record.via_queue
    messages = [m.message for m in await store.history(record.thread_id or "", user_id="u")]
    assert [m.kind for m in messages] == ["request", "response"]
    assert await queue.depth() == 0
    events = await store.events(run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].event.kind == "run-started" and events[-1].event.kind == "run-finished"


async def test_a_redelivered_job_of_a_finished_run_is_not_run_again(store: SQLStore, queue: JobQueue) -> None:
    calls = 0

    def model(messages: list[ModelMessage], info: object) -> ModelResponse:
        nonlocal calls
        calls += 1
        return ModelResponse([TextPart("once")])

    run_id = await enqueue(store, queue, "hi")
    record = await store.get_run(run_id)
    # The same job published twice (a broker redelivery after a lost ack looks the same to the worker).
    await queue.enqueue(Job(run_id=run_id, tenant_id="default", user_id="u", agent="a", thread_id=record.thread_id))
    worker = Worker(queue, store, {"a": Agent(FunctionModel(model), name="a")}, concurrency=1, lease_s=LEASE_S)
    worker.start()
    try:
        await wait_for(lambda: worker.stats.completed + worker.stats.skipped == 2)
    finally:
        await worker.aclose(0)
    assert calls == 1 and worker.stats.completed == 1 and worker.stats.skipped == 1
    assert (await store.get_run(run_id)).status == "succeeded"


async def _crash_after_step_one(store: SQLStore, agent: Agent[None, str], run_id: str, steps: Steps) -> None:
    """A worker claims the run, commits step 1, and dies in step 2 (nothing more recorded; its lease runs out)."""
    claim = await store.claim_run(run_id, tenant_id="default", worker="dead-worker", lease_s=LEASE_S)
    assert claim.kind == "start" and claim.record is not None
    runs = RunManager()
    request = RunRequest(
        agent,
        claim.prompt,
        store,
        tenant_id="default",
        user_id="u",
        thread_id=claim.record.thread_id,
        run_id=run_id,
        via_queue=True,
    )
    handle = await runs.start(request)
    await steps.at_step_two.wait()
    handle.interrupt()  # as if the process died: the hand-back records nothing
    await handle.done.wait()
    await runs.shutdown(0)


async def test_a_run_taken_over_after_its_worker_died_does_not_repeat_completed_steps(
    store: SQLStore, queue: JobQueue
) -> None:
    steps = Steps()
    agent = two_step_agent(steps)
    record, _ = await store.enqueue_run(agent_name="a", prompt="go", user_id="u")
    await _crash_after_step_one(store, agent, record.id, steps)
    assert steps.tool_calls == 1
    mid = await store.get_run(record.id)
    assert mid.status == "running" and mid.steps == 1
    stored_before = len(await store.events(record.id))

    steps.gate.set()
    await queue.enqueue(Job(run_id=record.id, tenant_id="default", user_id="u", agent="a", thread_id=record.thread_id))
    worker = Worker(queue, store, {"a": agent}, concurrency=1, lease_s=LEASE_S)
    worker.start()
    try:
        await wait_for(lambda: worker.stats.completed == 1)
    finally:
        await worker.aclose(0)
    assert steps.tool_calls == 1  # step 1 (the tool call) was committed: not run again
    assert worker.stats.resumed == 1
    final = await store.get_run(record.id)
    assert final.status == "succeeded" and final.attempts == 2 and final.steps == 2
    kinds = [m.message.kind for m in await store.history(record.thread_id or "", user_id="u")]
    assert kinds == ["request", "response", "request", "response"]  # one prompt, one tool round, one answer
    events = await store.events(record.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # the stream goes on, no gap
    assert len(events) > stored_before and events[-1].event.kind == "run-finished"


async def test_a_takeover_never_repeats_a_non_idempotent_tool_call(store: SQLStore, queue: JobQueue) -> None:
    steps = Steps(tool_gate=anyio.Event())
    agent = two_step_agent(steps, idempotent=False)
    record, _ = await store.enqueue_run(agent_name="a", prompt="go", user_id="u")
    claim = await store.claim_run(record.id, tenant_id="default", worker="dead-worker", lease_s=LEASE_S)
    assert claim.record is not None
    runs = RunManager()
    handle = await runs.start(
        RunRequest(
            agent,
            claim.prompt,
            store,
            tenant_id="default",
            user_id="u",
            thread_id=claim.record.thread_id,
            run_id=record.id,
            via_queue=True,
        )  # fmt: skip
    )
    await steps.tool_entered.wait()  # the worker dies while the tool runs: its step is never committed
    handle.interrupt()
    await handle.done.wait()
    await runs.shutdown(0)
    assert [i.tool_name for i in await store.tool_intents(record.id)] == ["effect"]

    await queue.enqueue(Job(run_id=record.id, tenant_id="default", user_id="u", agent="a", thread_id=record.thread_id))
    worker = Worker(queue, store, {"a": agent}, concurrency=1, lease_s=LEASE_S)
    worker.start()
    try:
        await wait_for(lambda: worker.stats.dead_lettered == 1)
    finally:
        await worker.aclose(0)
    assert steps.tool_calls == 1  # never silently re-executed
    final = await store.get_run(record.id)
    assert final.status == "failed" and "ToolNotReplayable" in (final.error or "")
    assert "effect" in (final.error or "") and "not idempotent" in (final.error or "")
    letters = await store.list_dead_letters()
    assert [letter.run_id for letter in letters] == [record.id]
    assert (await store.events(record.id))[-1].event.kind == "run-failed"


async def test_poison_and_unknown_agent_jobs_are_dead_lettered_not_looped(store: SQLStore, queue: JobQueue) -> None:
    enqueue_raw = getattr(queue, "_enqueue_raw")  # noqa: B009  # the implementations' test hook
    await enqueue_raw(b"{not json")
    gone = await enqueue(store, queue, "hi", agent="retired")
    worker = Worker(queue, store, {"a": echo_agent()}, concurrency=1, lease_s=LEASE_S)
    worker.start()
    try:
        await wait_for(lambda: worker.stats.dead_lettered == 2)
    finally:
        await worker.aclose(0)
    assert await queue.depth() == 0
    record = await store.get_run(gone)
    assert record.status == "failed" and "No agent 'retired'" in (record.error or "")
    letters = {letter.run_id: letter for letter in await store.list_dead_letters()}
    assert gone in letters and any(k.startswith("job-") for k in letters)
    poison = next(v for k, v in letters.items() if k.startswith("job-"))
    assert "Undecodable job" in poison.error and poison.meta["body"] == "{not json"


async def test_a_job_delivered_too_often_is_dead_lettered(store: SQLStore, tmp_path: Path) -> None:
    queue = open_queue(f"sqlite:///{tmp_path / 'q2.db'}", name="t.max", lease_s=QUEUE_LEASE_S)
    await queue.connect()
    try:
        run_id = await enqueue(store, queue, "hi")
        for _ in range(2):  # two consumers that die holding it
            async for delivery in queue.consume(prefetch=1):
                await queue.release(delivery)
                break
        worker = Worker(queue, store, {"a": echo_agent()}, concurrency=1, lease_s=LEASE_S, max_deliveries=2)
        worker.start()
        try:
            await wait_for(lambda: worker.stats.dead_lettered == 1)
        finally:
            await worker.aclose(0)
        record = await store.get_run(run_id)
        assert record.status == "failed" and "delivered 3 times" in (record.error or "")
        assert [letter.run_id for letter in await store.list_dead_letters()] == [run_id]
    finally:
        await queue.close()


async def test_cancel_through_the_store_queued_and_running(store: SQLStore, queue: JobQueue) -> None:
    queued = await enqueue(store, queue, "never")
    assert (await store.request_cancel(queued)).status == "cancelled"
    steps = Steps()
    running = await enqueue(store, queue, "go")
    worker = Worker(queue, store, {"a": two_step_agent(steps)}, concurrency=1, lease_s=LEASE_S)
    worker.start()
    try:
        await steps.at_step_two.wait()
        assert (await store.request_cancel(running)).status == "running"
        await wait_for(lambda: worker.stats.completed == 1)  # seen at its next lease renewal
    finally:
        await worker.aclose(0)
    assert (await store.get_run(running)).status == "cancelled"
    assert (await store.events(running))[-1].event.kind == "run-cancelled"
    assert worker.stats.skipped == 1  # the job of the run cancelled while queued


async def test_shutdown_hands_running_runs_back_and_the_next_worker_finishes_them(
    store: SQLStore, queue: JobQueue
) -> None:
    steps = Steps()
    agent = two_step_agent(steps)
    run_id = await enqueue(store, queue, "go")
    first = Worker(queue, store, {"a": agent}, concurrency=1, lease_s=LEASE_S)
    first.start()
    await steps.at_step_two.wait()
    await first.aclose(0)  # grace 0: handed back at once
    record = await store.get_run(run_id)
    assert record.status == "queued" and first.stats.released == 1
    steps.gate.set()
    second = Worker(queue, store, {"a": agent}, concurrency=1, lease_s=LEASE_S)
    second.start()
    try:
        await wait_for(lambda: second.stats.completed == 1)
    finally:
        await second.aclose(0)
    assert second.stats.resumed == 1 and steps.tool_calls == 1
    assert (await store.get_run(run_id)).status == "succeeded"


async def test_tenant_b_starts_before_tenant_a_exceeds_its_cap(store: SQLStore, queue: JobQueue) -> None:
    cap = 2
    started: list[str] = []
    release = anyio.Event()

    async def model(messages: list[ModelMessage], info: object) -> ModelResponse:
        text = str(messages[-1].parts[-1].content)  # type: ignore[union-attr]
        started.append(text)
        await release.wait()
        return ModelResponse([TextPart("ok")])

    agent: Agent[None, str] = Agent(FunctionModel(model), name="a")
    for i in range(6):  # tenant A's burst is queued first
        await enqueue(store, queue, f"A{i}", tenant="tenant-a")
    await enqueue(store, queue, "B0", tenant="tenant-b")
    worker = Worker(queue, store, {"a": agent}, concurrency=4, tenant_cap=cap, lease_s=LEASE_S, prefetch=10)
    worker.start()
    try:
        await wait_for(lambda: len(started) == cap + 1)
        assert worker.scheduler.running_of("tenant-a") == cap
        release.set()
        await wait_for(lambda: worker.stats.completed == 7)
    finally:
        await worker.aclose(0)
    b = started.index("B0")
    assert b <= cap  # B's single job started before A's (cap + 1)-th
    assert started.index("A2") > b


def test_fair_scheduler_round_robin_and_caps() -> None:
    scheduler: FairScheduler[str] = FairScheduler(concurrency=3, tenant_cap=2)
    for item in ("a1", "a2", "a3"):
        scheduler.add("a", item)
    scheduler.add("b", "b1")
    picked = [scheduler.next(), scheduler.next(), scheduler.next()]
    assert picked == [("a", "a1"), ("b", "b1"), ("a", "a2")]
    assert scheduler.next() is None  # concurrency reached
    scheduler.done("b")
    assert scheduler.next() is None  # a is at its cap, b has nothing
    scheduler.done("a")
    assert scheduler.next() == ("a", "a3") and scheduler.waiting == 0
    with pytest.raises(Exception, match="called twice"):
        scheduler.done("b")
    with pytest.raises(Exception, match="concurrency"):
        FairScheduler(concurrency=0, tenant_cap=1)


async def test_a_dead_lettered_job_can_be_replayed(store: SQLStore, queue: JobQueue) -> None:
    from miniagent.store import replay_dead_letter

    run_id = await enqueue(store, queue, "what is 2+2?", agent="retired")
    worker = Worker(queue, store, {"a": echo_agent()}, concurrency=1, lease_s=LEASE_S)
    worker.start()
    try:
        await wait_for(lambda: worker.stats.dead_lettered == 1)
    finally:
        await worker.aclose(0)
    [letter] = await store.list_dead_letters()
    assert letter.run_id == run_id and letter.prompt == "what is 2+2?"
    result = await replay_dead_letter(store, letter.id, echo_agent("retired"))
    assert result.output == "echo"
    assert (await store.get_run(result.run_id)).replay_of == run_id


async def test_a_second_copy_of_a_job_running_here_is_put_back_not_run_twice(store: SQLStore, queue: JobQueue) -> None:
    steps = Steps()
    agent = two_step_agent(steps)
    run_id = await enqueue(store, queue, "go")
    record = await store.get_run(run_id)
    # A second copy of the same job (a queue that handed it out again while this worker still runs it).
    await queue.enqueue(Job(run_id=run_id, tenant_id="default", user_id="u", agent="a", thread_id=record.thread_id))
    worker = Worker(queue, store, {"a": agent}, concurrency=2, tenant_cap=2, lease_s=LEASE_S)
    worker.start()
    try:
        await steps.at_step_two.wait()
        await wait_for(lambda: worker.stats.released >= 1)  # the copy went back while the run was going on
        assert steps.tool_calls == 1 and worker.stats.started == 1
        steps.gate.set()
        await wait_for(lambda: worker.stats.completed == 1 and worker.stats.skipped == 1)
    finally:
        await worker.aclose(0)
    assert steps.tool_calls == 1 and worker.stats.started == 1
    assert (await store.get_run(run_id)).status == "succeeded" and await queue.depth() == 0
