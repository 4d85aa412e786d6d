"""Background runs executed by workers from a job queue.

The run row is the source of truth; the queue only says "look at run X".

[`QueuedRunsMixin`][miniagent.store._queued.QueuedRunsMixin] gives [`SQLStore`][miniagent.store.SQLStore]:

- `enqueue_run`: record a run as `queued` (with its prompt and a new thread if needed), before its job is published;
  an `idempotency_key` seen before returns the existing run instead.
- `claim_run`: a worker's atomic claim of a delivered job, which says what to do with it: `start` (never ran),
  `resume` (a worker that held it stopped, or a server handed it back: its committed steps are kept and not run
  again), `done` (it already ended: acknowledge the redelivery), `busy` (a live worker holds it: put the job back),
  `missing` (its thread was deleted) or `cancelled` (cancelled while queued).
- `renew_lease`: the running worker's heartbeat; it returns whether a client asked to cancel the run, and raises
  [`LeaseLost`][miniagent.store._queued.LeaseLost] if another worker took the run over.
- `release_run`: hand a run back to the queue (a worker or server shutting down).
- `request_cancel`: cancel a queued run at once, or flag a running one for its worker.
- `record_tool_intent` / `tool_intents`: non-idempotent tool calls about to run, committed before they run.

Leases use the database's clock as this process sees it (`now`), so workers on machines with skewed clocks should
keep `lease_s` well above the skew.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from sqlalchemy import func, select, update

from ..errors import StoreError, ThreadNotFound, UserError
from ._base import DEFAULT_USER, Now, RunRecord, traced
from ._models import MessageRow, RunEventRow, RunRow, ThreadRow, ToolIntentRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["ClaimKind", "LeaseLost", "QueuedRunsMixin", "RunClaim", "ToolIntent", "run_record"]

ClaimKind = Literal["start", "resume", "done", "busy", "missing", "cancelled"]

_TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")


class LeaseLost(StoreError):
    """Another worker took the run over (this one's lease expired): stop running it without recording anything."""


@dataclass(frozen=True, slots=True)
class ToolIntent:
    """A non-idempotent tool call that was about to run."""

    tool_call_id: str
    """The call's id."""
    tool_name: str
    """The tool."""
    step: int
    """The run's step it belongs to."""


@dataclass(frozen=True, slots=True)
class RunClaim:
    """What a worker should do with a delivered job (see the module docs)."""

    kind: ClaimKind
    """`start`, `resume`, `done`, `busy`, `missing` or `cancelled`."""
    _: KW_ONLY
    record: RunRecord | None = None
    """The run as it is now (after the claim)."""
    prompt: str | None = None
    """For `start`: the user's message to run on."""
    last_seq: int = 0
    """The sequence number of the run's last stored event (its next event is `last_seq + 1`)."""
    lease_until: dt.datetime | None = None
    """For `busy`: until when the other worker holds it."""
    unfinished_intents: list[ToolIntent] = field(default_factory=list[ToolIntent])
    """For `resume`: non-idempotent tool calls begun in a step that was never committed (they may have had their
    effect): the run must fail rather than repeat them."""


def run_record(row: RunRow) -> RunRecord:
    """A run's row as a `RunRecord`."""
    from ..usage import Usage
    from ._sql import _aware

    return RunRecord(
        row.id,
        thread_id=row.thread_id,
        status=cast(Any, row.status),
        steps=row.steps,
        usage=Usage(**row.usage),
        error=row.error,
        created_at=_aware(row.created_at),
        finished_at=_aware(row.finished_at) if row.finished_at else None,
        user_id=row.user_id,
        correlation_id=row.correlation_id,
        agent_name=row.agent_name,
        replay_of=row.replay_of,
        via_queue=bool(row.via_queue),
        attempts=row.attempts or 0,
        cancel_requested=bool(row.cancel_requested),
    )


class QueuedRunsMixin:
    """The queued-run methods of [`SQLStore`][miniagent.store.SQLStore]; each one is one transaction."""

    if TYPE_CHECKING:
        tenant_id: str
        now: Now

        def _session(self) -> AbstractAsyncContextManager[AsyncSession]: ...

        async def _ensure_user(self, session: AsyncSession, tenant_id: str, user_id: str) -> None: ...

        async def _thread(self, session: AsyncSession, thread_id: str, user_id: str, tenant_id: str) -> ThreadRow: ...

    @traced("enqueue_run")
    async def enqueue_run(
        self,
        *,
        agent_name: str,
        prompt: str | None,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        thread_id: str | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        run_id: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """Record a background run as `queued` (its job is published next); returns it and whether it is new.

        With no `thread_id`, a new thread is created for it in the same transaction. With an `idempotency_key` the
        user already used, nothing is written and that run is returned (`False`).

        Raises:
            ThreadNotFound: `thread_id` is not this user's thread.
            UserError: `prompt` is `None` without a thread to continue.
        """
        if prompt is None and thread_id is None:
            raise UserError("A queued run needs a prompt, or a thread to continue from its leaf.")
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 200):
            raise UserError("An idempotency key must be 1 to 200 characters long.")
        tenant = tenant_id or self.tenant_id
        now = self.now()
        async with self._session() as session:
            if idempotency_key is not None:
                existing = await session.scalar(
                    select(RunRow).where(
                        RunRow.tenant_id == tenant,
                        RunRow.user_id == user_id,
                        RunRow.idempotency_key == idempotency_key,
                    )
                )
                if existing is not None:
                    return run_record(existing), False
            if thread_id is None:
                await self._ensure_user(session, tenant, user_id)
                thread = ThreadRow(
                    id=uuid.uuid4().hex,
                    tenant_id=tenant,
                    user_id=user_id,
                    title=None,
                    leaf_id=None,
                    retention_days=None,
                    created_at=now,
                    updated_at=now,
                )
                session.add(thread)
                await session.flush()
            else:
                thread = await self._thread(session, thread_id, user_id, tenant)
            row = RunRow(
                id=run_id or uuid.uuid4().hex,
                tenant_id=tenant,
                thread_id=thread.id,
                user_id=user_id,
                status="queued",
                steps=0,
                usage={},
                cost_usd=0.0,
                error=None,
                owner=None,
                created_at=now,
                updated_at=now,
                finished_at=None,
                correlation_id=correlation_id,
                agent_name=agent_name[:200],
                replay_of=None,
                via_queue=True,
                prompt=prompt,
                lease_owner=None,
                lease_until=None,
                attempts=0,
                cancel_requested=False,
                idempotency_key=idempotency_key,
            )
            from ..usage import Usage
            from ._sql import _usage_dict

            row.usage = _usage_dict(Usage())
            session.add(row)
            await session.flush()
            return run_record(row), True

    @traced("claim_run")
    async def claim_run(self, run_id: str, *, tenant_id: str, worker: str, lease_s: float) -> RunClaim:
        """A worker's claim of the run a delivered job names (atomic: two workers never both get `start`/`resume`)."""
        now = self.now()
        async with self._session() as session:
            row = await session.scalar(select(RunRow).where(RunRow.id == run_id).with_for_update())
            if row is None or row.tenant_id != tenant_id:
                return RunClaim("missing")
            if row.status in _TERMINAL:
                return RunClaim("done", record=run_record(row))
            if row.status == "queued" and row.cancel_requested:
                row.status = "cancelled"
                row.error = "Cancelled by a client before a worker started it."
                row.finished_at = now
                row.updated_at = now
                return RunClaim("cancelled", record=run_record(row))
            from ._sql import _aware

            if row.status == "running":  # held under a live lease (by another worker, or by this one: a duplicate)
                until = _aware(row.lease_until) if row.lease_until is not None else None
                if until is not None and until > now:
                    return RunClaim("busy", record=run_record(row), lease_until=until)
            other = await session.scalar(
                select(RunRow).where(
                    RunRow.thread_id == row.thread_id,
                    RunRow.id != run_id,
                    RunRow.status == "running",
                    RunRow.lease_until > now,
                )
            )
            if other is not None and row.thread_id is not None:  # one run at a time on a thread: wait for it
                until = _aware(other.lease_until) if other.lease_until is not None else None
                return RunClaim("busy", record=run_record(row), lease_until=until)
            started = (
                await session.scalar(select(MessageRow.id).where(MessageRow.run_id == run_id).limit(1))
            ) is not None
            last_seq = await session.scalar(select(func.max(RunEventRow.seq)).where(RunEventRow.run_id == run_id)) or 0
            intents: list[ToolIntent] = []
            if started:
                rows = await session.execute(
                    select(ToolIntentRow).where(ToolIntentRow.run_id == run_id, ToolIntentRow.step > row.steps)
                )
                intents = [ToolIntent(r.tool_call_id, r.tool_name, r.step) for r in rows.scalars()]
            row.status = "running"
            row.lease_owner = worker
            row.owner = worker[:200]
            row.lease_until = now + dt.timedelta(seconds=lease_s)
            row.attempts = (row.attempts or 0) + 1
            row.updated_at = now
            return RunClaim(
                "resume" if started else "start",
                record=run_record(row),
                prompt=None if started else row.prompt,
                last_seq=last_seq,
                unfinished_intents=intents,
            )

    @traced("renew_lease")
    async def renew_lease(self, run_id: str, *, worker: str, lease_s: float) -> bool:
        """Extend `worker`'s lease on a run it runs; returns whether a client asked to cancel it.

        A run of this worker that has just ended (a renewal racing its last commit) answers `False`.

        Raises:
            LeaseLost: the run is no longer this worker's (another took it over after this lease expired).
        """
        now = self.now()
        async with self._session() as session:
            result = await session.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.lease_owner == worker, RunRow.status == "running")
                .values(lease_until=now + dt.timedelta(seconds=lease_s))
                .execution_options(synchronize_session=False)
            )
            if cast(Any, result).rowcount != 1:
                owner = await session.scalar(select(RunRow.lease_owner).where(RunRow.id == run_id))
                if owner == worker:  # still this worker's: the run has just ended (a renewal racing its last commit)
                    return False
                raise LeaseLost(f"Run {run_id!r} is no longer held by worker {worker!r}: another worker took it over.")
            return bool(await session.scalar(select(RunRow.cancel_requested).where(RunRow.id == run_id)))

    @traced("release_run")
    async def release_run(self, run_id: str, *, worker: str) -> bool:
        """Hand a running run back to the queue (`queued`, no lease); returns whether it was this worker's."""
        now = self.now()
        async with self._session() as session:
            result = await session.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.lease_owner == worker, RunRow.status == "running")
                .values(status="queued", lease_owner=None, lease_until=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return bool(cast(Any, result).rowcount == 1)

    @traced("request_cancel")
    async def request_cancel(self, run_id: str, *, tenant_id: str | None = None) -> RunRecord:
        """Cancel a `queued` run now, or ask the worker of a `running` one to cancel it (it does at its next lease
        renewal); an ended run is returned unchanged.

        Raises:
            ThreadNotFound: no such run in this tenant.
        """  # noqa: D205
        tenant = tenant_id or self.tenant_id
        now = self.now()
        async with self._session() as session:
            row = await session.scalar(select(RunRow).where(RunRow.id == run_id).with_for_update())
            if row is None or row.tenant_id != tenant:
                raise ThreadNotFound(f"No run {run_id!r}: check the id.")
            if row.status == "queued":
                row.status = "cancelled"
                row.cancel_requested = True
                row.error = "Cancelled by a client before a worker started it."
                row.finished_at = now
                row.updated_at = now
            elif row.status == "running":
                row.cancel_requested = True
                row.updated_at = now
            return run_record(row)

    @traced("busy_run")
    async def queued_run_on(self, thread_id: str, *, tenant_id: str | None = None) -> str | None:
        """The id of a queued run of the thread that is waiting or running in a live worker (`None`: none)."""
        tenant = tenant_id or self.tenant_id
        now = self.now()
        async with self._session() as session:
            found: str | None = await session.scalar(
                select(RunRow.id)
                .where(
                    RunRow.thread_id == thread_id,
                    RunRow.tenant_id == tenant,
                    RunRow.via_queue.is_(True),
                    (RunRow.status == "queued") | ((RunRow.status == "running") & (RunRow.lease_until > now)),
                )
                .limit(1)
            )
            return found

    @traced("clear_prompt")
    async def clear_queued_prompt(self, run_id: str) -> None:
        """Forget a queued run's prompt once its worker committed it to the thread."""
        async with self._session() as session:
            await session.execute(
                update(RunRow)
                .where(RunRow.id == run_id)
                .values(prompt=None)
                .execution_options(synchronize_session=False)
            )

    @traced("record_tool_intent")
    async def record_tool_intent(self, run_id: str, *, tool_call_id: str, tool_name: str, step: int) -> None:
        """Commit that a non-idempotent tool call is about to run (before it runs)."""
        async with self._session() as session:
            if await session.get(ToolIntentRow, (run_id, tool_call_id[:200])) is None:
                session.add(
                    ToolIntentRow(
                        run_id=run_id,
                        tool_call_id=tool_call_id[:200],
                        step=step,
                        tool_name=tool_name[:200],
                        created_at=self.now(),
                    )
                )

    @traced("tool_intents")
    async def tool_intents(self, run_id: str) -> Sequence[ToolIntent]:
        """The run's recorded tool intents, in step order."""
        async with self._session() as session:
            rows = await session.execute(
                select(ToolIntentRow).where(ToolIntentRow.run_id == run_id).order_by(ToolIntentRow.step)
            )
            return [ToolIntent(r.tool_call_id, r.tool_name, r.step) for r in rows.scalars()]
