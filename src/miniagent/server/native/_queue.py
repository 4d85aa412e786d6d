"""Background runs through the job queue.

The server records a run as `queued`, publishes its job, and answers 202; a worker (`miniagent worker`, or this
server's own in-process worker with the embedded queue) executes it.

`setup_queue` (called by the app's lifespan) opens the queue `MINIAGENT_QUEUE_URL` names (default: an SQLite file
beside the embedded store) and, when `server_inprocess_worker` says so (default: with the SQLite queue), starts a
[`Worker`][miniagent.worker.Worker] sharing the app's run manager, so runs it executes stream live to this server's
clients. A queue that cannot be reached at start-up is reported (log, `/readyz` detail, `503 queue_unavailable` on
background runs) and retried on the next background request; synchronous requests keep working.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from ...errors import QueueUnavailable, StoreError, ThreadNotFound
from .._errors import ApiError

if TYPE_CHECKING:
    from ...agent import Agent
    from ...queue import JobQueue
    from ...worker import Worker
    from .._deps import TenantStore
    from .._state import ServerState
    from ._schemas import RunOut

__all__ = ["QueueState", "enqueue_run", "queue_state", "setup_queue"]

_log = logging.getLogger("miniagent.server")
_KEY = "queue"


class QueueState:
    """The app's job queue, its in-process worker (if any) and the last connection error."""

    def __init__(self, url: str, queue: JobQueue) -> None:
        self.url = url
        self.queue = queue
        self.connected = False
        self.error: str | None = None
        self.worker: Worker | None = None

    async def ensure_connected(self) -> JobQueue:
        """The queue, connecting it if the start-up connection failed.

        Raises:
            QueueUnavailable: it still cannot be reached.
        """
        if not self.connected:
            try:
                await self.queue.connect()
            except QueueUnavailable as exc:
                self.error = str(exc)
                raise
            self.connected = True
            self.error = None
        return self.queue


def queue_state(state: ServerState) -> QueueState | None:
    """The app's queue state (`None` before the lifespan set it up)."""
    found: QueueState | None = state.extras.get(_KEY)
    return found


async def setup_queue(state: ServerState, stack: AsyncExitStack) -> None:
    """Open the job queue (and the in-process worker); their shutdown is pushed on `stack`.

    It runs before the run manager's: the worker hands its runs back first.
    """
    from ...queue import default_queue_url, queue_from_settings, queue_kind

    settings = state.settings
    url = default_queue_url(settings)
    queue = queue_from_settings(settings)
    qs = QueueState(url, queue)
    state.extras[_KEY] = qs
    stack.callback(state.extras.pop, _KEY, None)
    stack.push_async_callback(queue.close)
    try:
        await qs.ensure_connected()
    except QueueUnavailable as exc:
        _log.error("%s Background runs answer 503 until it is reachable; synchronous runs keep working.", exc)
    inprocess = settings.server_inprocess_worker
    if inprocess is None:
        inprocess = queue_kind(url) == "sqlite"
    if not inprocess or not qs.connected:
        return
    from ...worker import Worker
    from .._runs import RunManager

    runs = state.runs
    assert isinstance(runs, RunManager)
    agents = {name: state.agents.get(name) for name in state.agents.names()}
    worker = Worker.from_settings(queue, state.store, agents, settings, runs=runs, grace_s=runs.grace_s)
    qs.worker = worker
    from .._limits import charging

    worker.job_context = lambda job: charging(state, job)
    worker.start()
    stack.push_async_callback(worker.aclose)


async def enqueue_run(
    state: ServerState,
    tenant: TenantStore,
    *,
    agent: Agent[Any, Any],
    agent_name: str,
    prompt: str | None,
    thread_id: str | None,
    idempotency_key: str | None = None,
) -> RunOut:
    """Record a background run as `queued` and publish its job; the run (202).

    Raises:
        ApiError: 503 `queue_unavailable` (nothing was accepted: the run is recorded `failed` with why), 404 for a
            thread that is not the principal's.
    """
    from ...context import current_correlation_id
    from ...queue import Job
    from ._schemas import RunOut

    qs = queue_state(state)
    assert qs is not None
    try:
        queue = await qs.ensure_connected()
    except QueueUnavailable as exc:
        raise ApiError(503, "queue_unavailable", str(exc), headers={"Retry-After": "5"}) from exc
    store = tenant.run_store
    try:
        record, new = await store.enqueue_run(
            agent_name=agent_name,
            prompt=prompt,
            user_id=tenant.user_id,
            tenant_id=tenant.tenant_id,
            thread_id=thread_id,
            correlation_id=current_correlation_id(),
            idempotency_key=idempotency_key,
        )
    except ThreadNotFound:
        raise ApiError(404, "thread_not_found", "No such thread: check the id (GET /api/v1/threads).") from None
    except StoreError as exc:
        raise ApiError(503, "store_unavailable", "The server's store is unavailable; retry later.") from exc
    if not new:
        return RunOut.of(record)  # the same Idempotency-Key: that run, not a second one
    if thread_id is not None and idempotency_key is not None:
        busy = await store.queued_run_on(thread_id, tenant_id=tenant.tenant_id)
        if busy is not None and busy != record.id:
            from ...usage import Usage

            await store.finish_run(
                record.id, status="failed", steps=0, usage=Usage(), error=f"Not queued: run {busy!r} is on the thread."
            )
            raise ApiError(
                409,
                "thread_busy",
                f"Run {busy!r} is queued or in progress on this thread: wait for it or cancel it, then retry.",
                extra={"run_id": busy},
            )
    job = Job(
        run_id=record.id,
        tenant_id=tenant.tenant_id,
        user_id=tenant.user_id,
        agent=agent_name,
        thread_id=record.thread_id,
        prompt=prompt,
        correlation_id=record.correlation_id,
        key_id=tenant.principal.key_id,
    )
    try:
        await queue.enqueue(job)
    except QueueUnavailable as exc:
        from ...usage import Usage

        try:  # not accepted: say so on the run too, so nothing waits for it
            await store.finish_run(record.id, status="failed", steps=0, usage=Usage(), error=f"Not queued: {exc}")
        except StoreError:
            _log.warning("Could not record run %s as not queued", record.id)
        raise ApiError(503, "queue_unavailable", str(exc), headers={"Retry-After": "5"}) from exc
    del agent  # validated by the caller; the worker resolves it by name
    return RunOut.of(record)
