"""The worker: consumes background runs from the job queue and executes them with the same runtime as the server.

For each delivered job the worker claims the run in the store ([`SQLStore.claim_run`][miniagent.store.SQLStore]),
which makes redeliveries harmless (at least once, effectively once):

| claim       | what the worker does                                                                            |
|-------------|-------------------------------------------------------------------------------------------------|
| `start`     | runs the agent on the queued prompt, renewing its lease on the run while it runs                |
| `resume`    | a worker that held it stopped (or a server handed it back): continues from the committed steps; |
|             | a non-idempotent tool call begun in the lost step fails the run (`ToolNotReplayable`)           |
| `done`      | the run already ended (a redelivery after a crash or a broker restart): acknowledged, not rerun  |
| `busy`      | a live worker holds it: the job is put back until that lease ends                               |
| `missing`   | the run is gone (its thread was deleted): acknowledged                                          |
| `cancelled` | cancelled while queued: acknowledged                                                            |

The job is acknowledged only once the run's end state is committed. Jobs that fail for good — a body that is not a
job, a job delivered more than `max_deliveries` times, an agent this worker does not serve — are recorded in the
store's dead-letter table (the one record) and then rejected from the queue.

Shutdown (`aclose`, SIGTERM for `miniagent worker`): no new job is taken, waiting jobs are released, running ones
may finish within the grace period; the rest are handed back (nothing recorded; the next worker resumes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import StoreError, ToolNotReplayable, UserError
from ._fair import FairScheduler, _positive_int

if TYPE_CHECKING:
    from ..agent import Agent
    from ..queue import Delivery, Job, JobQueue
    from ..server._runs import RunHandle, RunManager
    from ..settings import Settings
    from ..store import SQLStore
    from ..store._queued import RunClaim

__all__ = ["Worker", "WorkerStats"]

_log = logging.getLogger("miniagent.worker")


@dataclass
class WorkerStats:
    """What a worker did since it started (for logs, tests and benchmarks)."""

    started: int = 0
    """Runs it started or resumed."""
    resumed: int = 0
    """Of those, runs it took over (a previous worker stopped, or a server handed them back)."""
    completed: int = 0
    """Runs whose end state it committed (succeeded, failed or cancelled) and acknowledged."""
    skipped: int = 0
    """Deliveries of runs that had already ended, were cancelled while queued, or are gone: acknowledged."""
    released: int = 0
    """Jobs put back (held by another worker, handed back at shutdown, store unavailable)."""
    dead_lettered: int = 0
    """Jobs recorded as dead letters and rejected."""
    queue_latency_s: list[float] = field(default_factory=list[float])
    """For each started run: seconds from its enqueue to its start (clocks of two machines may differ)."""


class Worker:
    """Executes the background runs of a job queue.

    Args:
        queue: The job queue (connected by the caller, who also closes it).
        store: The store (any tenant's view: each run uses its own tenant's).
        agents: The agents it serves, by name (jobs name their agent).
        concurrency: Runs executed at once.
        tenant_cap: Runs of one tenant executed at once (fair scheduling); default: half of `concurrency`.
        lease_s: How long a run stays this worker's without a renewal (renewed every `lease_s / 3`, at most every
            2 s, which is also how soon a cancel requested through another process is seen).
        max_deliveries: Deliveries after which a job is dead-lettered instead of run again.
        prefetch: Jobs taken from the queue ahead of free slots (so fair scheduling sees other tenants' jobs);
            default: `2 * concurrency`.
        worker_id: This worker's name in the store's leases (default: host, pid and a random suffix).
        runs: The run manager that executes the runs (the server shares its own); default: one of its own.
        grace_s: At shutdown, how long running runs may take to finish before they are handed back.
        job_context: Entered around the start of each run (its task copies the context): the server uses it to
            charge a run's usage to the API key and user that queued it.
    """

    def __init__(
        self,
        queue: JobQueue,
        store: SQLStore,
        agents: Mapping[str, Agent[Any, Any]],
        *,
        concurrency: int = 4,
        tenant_cap: int | None = None,
        lease_s: float = 30.0,
        max_deliveries: int = 5,
        prefetch: int | None = None,
        worker_id: str | None = None,
        runs: RunManager | None = None,
        grace_s: float = 30.0,
        job_context: Callable[[Job], AbstractContextManager[object]] | None = None,
    ) -> None:
        from ..server._runs import RunManager

        if not (lease_s > 0 and math.isfinite(lease_s)):
            raise UserError(f"`lease_s` must be a finite number of seconds > 0, got {lease_s!r}.")
        if not _positive_int(max_deliveries):
            raise UserError(f"`max_deliveries` must be an integer >= 1, got {max_deliveries!r}.")
        if not (grace_s >= 0 and math.isfinite(grace_s)):
            raise UserError(f"`grace_s` must be a finite number of seconds >= 0, got {grace_s!r}.")
        cap = tenant_cap if tenant_cap is not None else max(1, concurrency // 2)
        self.scheduler: FairScheduler[Delivery] = FairScheduler(concurrency=concurrency, tenant_cap=cap)
        if prefetch is None:
            prefetch = 2 * concurrency
        if not _positive_int(prefetch) or prefetch < concurrency:
            raise UserError(f"`prefetch` must be an integer >= `concurrency` ({concurrency}), got {prefetch!r}.")
        self.queue = queue
        self.store = store
        self.agents = dict(agents)
        self.lease_s = float(lease_s)
        self.renew_every_s = min(self.lease_s / 3, 2.0)
        self.max_deliveries = max_deliveries
        self.prefetch = prefetch
        self.grace_s = grace_s
        self.job_context = job_context
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._own_runs = runs is None
        self.runs: RunManager = runs if runs is not None else RunManager(grace_s=grace_s)
        self.stats = WorkerStats()
        self._consumer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handles: dict[str, RunHandle] = {}
        self._stopping = False
        self._stopped = asyncio.Event()
        self.error: BaseException | None = None
        """Why consuming stopped, if it stopped on an error (the queue failed for good)."""

    @classmethod
    def from_settings(
        cls,
        queue: JobQueue,
        store: SQLStore,
        agents: Mapping[str, Agent[Any, Any]],
        settings: Settings,
        **options: Any,
    ) -> Worker:
        """A worker configured by `settings` (`worker_concurrency`, `worker_tenant_cap`, `queue_lease_s`,
        `queue_max_deliveries`); `options` add or override constructor arguments (`runs=`, `grace_s=`...)."""  # noqa: D205, D209
        configured: dict[str, Any] = {
            "concurrency": settings.worker_concurrency,
            "tenant_cap": settings.worker_tenant_cap,
            "lease_s": settings.queue_lease_s,
            "max_deliveries": settings.queue_max_deliveries,
        }
        return cls(queue, store, agents, **{**configured, **options})

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start consuming in the background (returns at once)."""
        if self._consumer is not None:
            raise UserError("This worker has already been started.")
        self._consumer = asyncio.get_running_loop().create_task(self._consume(), name="miniagent-worker-consume")

    async def run(self) -> None:
        """Consume until `stop()` (or a signal handler calling it), then shut down gracefully."""
        self.start()
        await self._stopped.wait()
        await self.aclose()

    def stop(self) -> None:
        """Ask `run()` to shut down (safe from a signal handler)."""
        self._stopped.set()

    @property
    def active(self) -> int:
        """Runs executing now."""
        return self.scheduler.running

    async def aclose(self, grace_s: float | None = None) -> None:
        """Stop taking jobs, release waiting ones, and let running runs finish, then hand the rest back.

        Running runs get `grace_s` (default: the worker's) to finish. Idempotent.
        """
        self._stopping = True
        self._stopped.set()
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        for delivery in self.scheduler.drain():
            await self._settle(self.queue.release(delivery))
            self.stats.released += 1
        grace = self.grace_s if grace_s is None else grace_s
        with anyio.move_on_after(grace):
            while self._tasks:
                await asyncio.wait(list(self._tasks))
        for handle in {*self._handles.values(), *(h for h in self.runs.active if h.request.via_queue)}:
            handle.interrupt()  # a queued run (also one still starting): handed back, nothing recorded
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._own_runs:
            await self.runs.shutdown(0)

    # ---- consuming -------------------------------------------------------------------------------------------

    async def _consume(self) -> None:
        try:
            deliveries = self.queue.consume(prefetch=self.prefetch)
            try:
                async for delivery in deliveries:
                    if self._stopping:
                        await self._settle(self.queue.release(delivery))
                        continue
                    tenant = delivery.job.tenant_id if delivery.job is not None else ""
                    self.scheduler.add(tenant, delivery)
                    self._dispatch()
            finally:
                close = getattr(deliveries, "aclose", None)
                if close is not None:
                    with anyio.CancelScope(shield=True):
                        await close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the queue failed for good: say so, and let `run()` end
            self.error = exc
            _log.error("The worker stopped consuming: %s", exc)
            self._stopped.set()

    def _dispatch(self) -> None:
        while not self._stopping:
            picked = self.scheduler.next()
            if picked is None:
                return
            tenant, delivery = picked
            task = asyncio.get_running_loop().create_task(self._job(tenant, delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _job(self, tenant: str, delivery: Delivery) -> None:
        try:
            await self._handle(delivery)
        except Exception:  # never lose the job: put it back for another try
            _log.exception("Job failed in the worker; released for another delivery")
            await self._settle(self.queue.release(delivery, delay_s=min(self.lease_s, 5.0)))
            self.stats.released += 1
        finally:
            self.scheduler.done(tenant)
            self._dispatch()

    async def _settle(self, settling: Any) -> None:
        """Await a settlement; a queue that fails now leaves the job to be delivered again (idempotent)."""
        try:
            await settling
        except Exception as exc:
            _log.warning("Could not settle a job (%s); the queue will deliver it again", exc)

    # ---- one job -----------------------------------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        from ..context import correlation_scope

        job = delivery.job
        if job is None:
            await self._poison(delivery)
            return
        if job.run_id in self._handles or any(h.run_id == job.run_id for h in self.runs.active):
            # Running here already: the queue gave its job out again (its lease there ran out, e.g. a stalled
            # loop). Put this copy back; once the run ends, it is found done and acknowledged.
            await self._settle(self.queue.release(delivery, delay_s=self.lease_s))
            self.stats.released += 1
            return
        with correlation_scope(job.correlation_id):
            store = self.store.for_tenant(job.tenant_id)
            try:
                claim = await store.claim_run(
                    job.run_id, tenant_id=job.tenant_id, worker=self.worker_id, lease_s=self.lease_s
                )
            except StoreError as exc:
                _log.warning("Could not claim run %s (%s); released", job.run_id, exc)
                await self._settle(self.queue.release(delivery, delay_s=min(self.lease_s, 5.0)))
                self.stats.released += 1
                return
            if claim.kind in ("done", "missing", "cancelled"):
                await self._settle(self.queue.ack(delivery))
                self.stats.skipped += 1
                return
            if claim.kind == "busy":
                await self._settle(self.queue.release(delivery, delay_s=self._busy_delay(claim)))
                self.stats.released += 1
                return
            if delivery.deliveries > self.max_deliveries:  # only once nobody else holds it: it would run here
                await self._fail(
                    store,
                    job,
                    delivery,
                    f"The job of run {job.run_id!r} was delivered {delivery.deliveries} times without completing "
                    f"(more than max_deliveries={self.max_deliveries}): its workers kept stopping while running it. "
                    "It is kept as a dead letter: check the workers' logs, then replay it (`miniagent dlq replay`).",
                    claim=claim,
                )
                return
            await self._execute(store, job, delivery, claim)

    def _busy_delay(self, claim: RunClaim) -> float:
        if claim.lease_until is None:
            return 1.0
        left = (claim.lease_until - dt.datetime.now(dt.UTC)).total_seconds()
        return max(0.2, min(left + 0.1, self.lease_s))

    async def _execute(self, store: SQLStore, job: Job, delivery: Delivery, claim: RunClaim) -> None:
        from ..server._runs import RunRequest, ServerShuttingDown, ThreadBusy

        assert claim.record is not None
        agent = self.agents.get(job.agent)
        if agent is None:
            served = ", ".join(repr(n) for n in self.agents) or "none"
            await self._fail(
                store,
                job,
                delivery,
                f"No agent {job.agent!r} is served by this worker (it serves {served}): deploy the agent on the "
                "workers (`miniagent worker module:agent`), then replay the run (`miniagent dlq replay`).",
                claim=claim,
            )
            return
        if claim.unfinished_intents:
            intent = claim.unfinished_intents[0]
            error = ToolNotReplayable(
                f"Run {job.run_id!r} was taken over after its worker stopped in step {intent.step}, while the tool "
                f"{intent.tool_name!r} (call {intent.tool_call_id!r}) may have been running; the tool is not "
                "idempotent, so it is not called again. Check whether its effect happened, then continue the "
                "thread (`POST /api/v1/runs/{id}/resume`).",
                tool_name=intent.tool_name,
                tool_call_id=intent.tool_call_id,
            )
            await self._fail(store, job, delivery, error, claim=claim)
            return
        request = RunRequest(
            agent,
            claim.prompt,
            store,
            tenant_id=job.tenant_id,
            user_id=job.user_id,
            thread_id=claim.record.thread_id,
            run_id=job.run_id,
            base_seq=claim.last_seq,
            via_queue=True,
        )
        try:
            with self.job_context(job) if self.job_context is not None else contextlib.nullcontext():
                handle = await self.runs.start(request)
        except (ThreadBusy, ServerShuttingDown) as exc:
            await store.release_run(job.run_id, worker=self.worker_id)
            await self._settle(self.queue.release(delivery, delay_s=1.0))
            self.stats.released += 1
            _log.info("Run %s not started here (%s); released", job.run_id, exc)
            return
        self.stats.started += 1
        if claim.kind == "resume":
            self.stats.resumed += 1
        self.stats.queue_latency_s.append(max(0.0, time.time() - job.enqueued_at))
        self._handles[job.run_id] = handle
        lost = False
        try:
            async with anyio.create_task_group() as tg:

                async def heartbeat() -> None:
                    nonlocal lost
                    from ..store._queued import LeaseLost

                    while True:
                        await anyio.sleep(self.renew_every_s)
                        try:
                            cancel = await store.renew_lease(job.run_id, worker=self.worker_id, lease_s=self.lease_s)
                        except LeaseLost:
                            lost = True
                            handle.interrupt()  # another worker has it: stop, record nothing
                            return
                        except StoreError as exc:
                            _log.warning("Could not renew the lease on run %s: %s", job.run_id, exc)
                            continue
                        if cancel:
                            handle.scope.cancel()  # recorded `cancelled` with its partial usage
                            return

                tg.start_soon(heartbeat)
                await handle.done.wait()
                tg.cancel_scope.cancel()
        finally:
            self._handles.pop(job.run_id, None)
        if lost:
            await self._settle(self.queue.release(delivery))
            self.stats.released += 1
            return
        if handle.interrupted:  # handed back at shutdown
            with contextlib.suppress(StoreError):
                await store.release_run(job.run_id, worker=self.worker_id)
            await self._settle(self.queue.release(delivery))
            self.stats.released += 1
            return
        try:
            record = await store.get_run(job.run_id)
        except StoreError:
            record = None
        if record is None or record.status in ("running", "queued"):
            # Its end could not be committed (the store failed): another delivery finishes it.
            await self._settle(self.queue.release(delivery, delay_s=min(self.lease_s, 5.0)))
            self.stats.released += 1
            return
        await self._settle(self.queue.ack(delivery))
        self.stats.completed += 1

    # ---- failures ------------------------------------------------------------------------------------------

    async def _fail(
        self,
        store: SQLStore,
        job: Job,
        delivery: Delivery,
        error: BaseException | str,
        *,
        claim: RunClaim | None = None,
    ) -> None:
        """Record the run as failed with a dead letter (one transaction), then reject the job."""
        from ..events import RunFailed
        from ..store._dead_letters import new_dead_letter
        from ..usage import Usage

        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        try:
            record = claim.record if claim is not None and claim.record is not None else await store.get_run(job.run_id)
        except StoreError:
            record = None
        if record is not None and record.status in ("succeeded", "failed", "cancelled", "interrupted"):
            await self._settle(self.queue.ack(delivery))  # it ended meanwhile: nothing to fail
            self.stats.skipped += 1
            return
        usage = record.usage if record is not None else Usage()
        thread_id = record.thread_id if record is not None else job.thread_id
        messages, request_id = await self._input_of(store, job, thread_id, claim)
        meta: dict[str, object] = {
            "deliveries": delivery.deliveries,
            "worker": self.worker_id,
            "queue": self.queue.kind,
        }
        if request_id is not None:
            meta["request_message_id"] = request_id  # a replay answers this request again, in the same thread
        letter = new_dead_letter(
            run_id=job.run_id,
            messages=messages,
            prompt=job.prompt,
            error=error,
            tenant_id=job.tenant_id,
            created_at=store.now(),
            user_id=job.user_id,
            thread_id=thread_id,
            agent_name=job.agent,
            correlation_id=job.correlation_id,
            meta=meta,
        )
        try:
            if record is not None:
                await store.finish_run(
                    job.run_id,
                    status="failed",
                    steps=record.steps,
                    usage=usage,
                    error=message,
                    events=[
                        RunFailed(
                            job.run_id,
                            type(error).__name__ if not isinstance(error, str) else "JobFailed",
                            message,
                            usage,
                        )
                    ],
                    dead_letter=letter,
                )
            else:
                await store.add_dead_letter(
                    run_id=job.run_id,
                    messages=messages,
                    error=error,
                    user_id=job.user_id,
                    tenant_id=job.tenant_id,
                    thread_id=job.thread_id,
                    agent_name=job.agent,
                    prompt=job.prompt,
                    correlation_id=job.correlation_id,
                    meta=meta,
                )
        except StoreError as exc:
            _log.warning("Could not record the failure of run %s (%s); released", job.run_id, exc)
            await self._settle(self.queue.release(delivery, delay_s=min(self.lease_s, 5.0)))
            self.stats.released += 1
            return
        _log.warning("Run %s failed for good and was dead-lettered: %s", job.run_id, message)
        await self._settle(self.queue.reject(delivery, reason=message[:500]))
        self.stats.dead_lettered += 1

    @staticmethod
    async def _input_of(
        store: SQLStore, job: Job, thread_id: str | None, claim: RunClaim | None
    ) -> tuple[list[Any], str | None]:
        """What a replay needs: the history up to the request to answer, and that request's id.

        For a run that never started, the queued prompt becomes the request (no id: a replay starts a new thread).
        """
        from ..messages import ModelRequest, prompt_part

        history = []
        if thread_id is not None:
            try:
                history = await store.history(thread_id, user_id=job.user_id)
            except StoreError:
                history = []
        started = claim is None or claim.kind != "start"
        if history and started and isinstance(history[-1].message, ModelRequest):
            return [m.message for m in history], history[-1].id
        prompt = claim.prompt if claim is not None and claim.prompt is not None else job.prompt
        if prompt is not None:
            return [*(m.message for m in history), ModelRequest([prompt_part(prompt)])], None
        return [m.message for m in history], history[-1].id if history else None

    async def _poison(self, delivery: Delivery) -> None:
        """A body that is not a job: kept as a dead letter (with the body, redacted), then rejected."""
        digest = hashlib.sha256(delivery.body).hexdigest()[:24]
        body = delivery.body[:2000].decode("utf-8", errors="replace")
        try:
            await self.store.add_dead_letter(
                run_id=f"job-{digest}",
                messages=[],
                error=f"Undecodable job ({delivery.error or 'not a job'}): dropped from the queue.",
                agent_name=None,
                prompt=None,
                meta={"body": body, "deliveries": delivery.deliveries, "queue": self.queue.kind},
            )
        except StoreError as exc:
            _log.warning("Could not record an undecodable job (%s); released", exc)
            await self._settle(self.queue.release(delivery, delay_s=min(self.lease_s, 5.0)))
            self.stats.released += 1
            return
        _log.warning("Undecodable job dead-lettered: %s", delivery.error)
        await self._settle(self.queue.reject(delivery, reason=f"undecodable: {delivery.error}"))
        self.stats.dead_lettered += 1
