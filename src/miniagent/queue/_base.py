"""The job queue contract: background runs as durable jobs, consumed by workers, at least once.

A [`Job`][miniagent.queue.Job] asks a worker to execute one run that the server already recorded in the store
(status `queued`). The run's id is the job's idempotency key: a job delivered twice (a worker crashed before it
acknowledged, a broker restarted) finds its run already ended, or still held by a live worker, and is not run twice.

Three implementations behind one [`JobQueue`][miniagent.queue.JobQueue] protocol, chosen by URL
([`open_queue`][miniagent.queue.open_queue]):

- `sqlite:///path/queue.db`: embedded, durable (WAL), leases: a job taken by a consumer that stops renewing its lease
  is delivered again (the single-process default, so a restart loses no job).
- `amqp://user:pw@host:5672/vhost`: RabbitMQ (the `rabbitmq` extra): a durable quorum queue, persistent messages,
  publisher confirms, manual acks, prefetch, a dead-letter exchange for messages delivered too often.
- `redis://host:6379/0`: Redis Streams (the `redis` extra): a consumer group; jobs pending on a consumer that went
  silent are claimed by another with `XAUTOCLAIM`.

Semantics every implementation keeps (tested once for all three in `tests/queue/test_contract.py`):

- `enqueue` returns once the job is durable (committed, confirmed by the broker, appended to the stream); if it
  cannot be made durable it raises [`QueueUnavailable`][miniagent.errors.QueueUnavailable] and nothing was accepted.
- `consume()` yields [`Delivery`][miniagent.queue.Delivery] items, at most `prefetch` unacknowledged at a time, in
  enqueue order per consumer (no global order is promised across consumers).
- Each delivery is settled exactly once by its consumer: `ack` (done; never delivered again), `release` (back to the
  queue, delivered again, counting one more delivery) or `reject` (removed: the worker has recorded it as a dead
  letter in the store, the one record of failed jobs; RabbitMQ also routes it to its dead-letter exchange).
- A delivery that is never settled (its consumer crashed or hung) is delivered again to another consumer, with
  `deliveries` one higher: after the connection drops (RabbitMQ), the lease expires (SQLite) or the job was idle
  for `lease_s` (Redis, `XAUTOCLAIM`).
- A body that does not decode to a `Job` is still delivered (`job` is `None`, `error` says why) so the worker
  dead-letters it instead of looping on it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import QueueUnavailable, UserError

__all__ = ["Delivery", "Job", "JobQueue", "QueueKind", "decode_job", "queue_kind"]

QueueKind = Literal["sqlite", "rabbitmq", "redis"]

_MAX_FIELD = 200
_MAX_PROMPT = 1_000_000


@dataclass(frozen=True, slots=True)
class Job:
    """One background run for a worker to execute (its run is already recorded in the store as `queued`)."""

    run_id: str
    """The run to execute; also the job's idempotency key (a redelivered job carries the same one)."""
    tenant_id: str
    """The run's tenant (fair scheduling goes round-robin over tenants)."""
    user_id: str
    """The user it runs for."""
    agent: str
    """The name of the agent that runs it (a worker that does not serve it fails the run with a clear error)."""
    thread_id: str | None = None
    """The run's thread."""
    prompt: str | None = None
    """The user's message (`None`: continue the thread from its leaf)."""
    correlation_id: str | None = None
    """The request's correlation id, restored around the run in the worker."""
    key_id: str | None = None
    """The API key that started it (its usage counts against that key's daily budgets too)."""
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """The message's own id (a release or a redelivery keeps it)."""
    enqueued_at: float = field(default_factory=time.time)
    """When it was enqueued (epoch seconds), for the queue-latency metric."""

    @property
    def idempotency_key(self) -> str:
        """What makes two deliveries the same job: the run's id."""
        return self.run_id

    def to_bytes(self) -> bytes:
        """The job as a JSON message body."""
        return json.dumps(
            {
                "v": 1,
                "run_id": self.run_id,
                "tenant_id": self.tenant_id,
                "user_id": self.user_id,
                "agent": self.agent,
                "thread_id": self.thread_id,
                "prompt": self.prompt,
                "correlation_id": self.correlation_id,
                "key_id": self.key_id,
                "job_id": self.job_id,
                "enqueued_at": self.enqueued_at,
            },
            separators=(",", ":"),
        ).encode()

    def __post_init__(self) -> None:
        for name in ("run_id", "tenant_id", "user_id", "agent", "job_id"):
            value: object = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > _MAX_FIELD:
                raise UserError(f"A job's `{name}` must be a non-empty string of at most {_MAX_FIELD} characters.")
        for name in ("thread_id", "correlation_id", "key_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or len(value) > _MAX_FIELD):
                raise UserError(f"A job's `{name}` must be a string of at most {_MAX_FIELD} characters, or None.")
        prompt: object = self.prompt
        if prompt is not None and (not isinstance(prompt, str) or len(prompt) > _MAX_PROMPT):
            raise UserError(f"A job's `prompt` must be a string of at most {_MAX_PROMPT} characters, or None.")


def decode_job(body: bytes) -> Job:
    """The job in a message body.

    Raises:
        ValueError: the body is not a job (not JSON, another version, a field missing or of the wrong type); the
            message says which.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON job ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("v") != 1:
        raise ValueError(f"unknown job version {data.get('v')!r} (this worker reads version 1)")
    fields: dict[str, Any] = {k: data.get(k) for k in Job.__dataclass_fields__ if k in data}
    for name, value in fields.items():
        if name != "enqueued_at" and value is not None and not isinstance(value, str):
            raise ValueError(f"`{name}` must be a string, got {type(value).__name__}")
    enqueued = fields.get("enqueued_at")
    if not isinstance(enqueued, int | float) or isinstance(enqueued, bool):
        raise ValueError("`enqueued_at` must be a number")
    fields["enqueued_at"] = float(enqueued)
    try:
        return Job(**fields)
    except (TypeError, UserError) as exc:
        raise ValueError(str(exc)) from None


@dataclass(eq=False)
class Delivery:
    """A job handed to one consumer; settle it once with the queue's `ack`, `release` or `reject`."""

    job: Job | None
    """The job (`None` when the body could not be decoded: dead-letter it)."""
    body: bytes
    """The raw message body."""
    deliveries: int
    """How many times this message has been delivered, this time included (1 the first time)."""
    error: str | None = None
    """Why the body is not a job (with `job` `None`)."""
    token: Any = None
    """The implementation's handle (a lease id, an AMQP message, a stream entry id)."""
    settled: bool = False
    """Whether it was acked, released or rejected (set by the queue)."""


@runtime_checkable
class JobQueue(Protocol):
    """A durable queue of [`Job`][miniagent.queue.Job]s with at-least-once delivery (see the module docs)."""

    kind: QueueKind
    """Which implementation: `sqlite`, `rabbitmq` or `redis`."""

    async def connect(self) -> None:
        """Connect (and declare what the queue needs); idempotent.

        Raises:
            QueueUnavailable: the broker or file cannot be reached; the message says which URL (without its
                password) and what to check.
        """
        ...

    async def enqueue(self, job: Job) -> None:
        """Add `job`; returns once it is durable.

        Raises:
            QueueUnavailable: it could not be made durable (nothing was accepted).
        """
        ...

    def consume(self, *, prefetch: int) -> AsyncIterator[Delivery]:
        """Deliveries for this consumer, at most `prefetch` unsettled at a time, until `close()` or cancellation.

        Survives broker restarts (reconnects); a delivery taken before a reconnect may no longer be settled (its
        settlement is then a no-op: the broker delivers it again, which idempotency makes harmless).
        """
        ...

    async def ack(self, delivery: Delivery) -> None:
        """The job is done (its run's end state is committed): never deliver it again."""
        ...

    async def release(self, delivery: Delivery, *, delay_s: float = 0.0) -> None:
        """Put the job back (a shutting-down worker, a run held elsewhere), available again after `delay_s`."""
        ...

    async def reject(self, delivery: Delivery, *, reason: str) -> None:
        """Remove a job that failed for good (the worker recorded the dead letter in the store first)."""
        ...

    async def depth(self) -> int:
        """Jobs waiting (not delivered, or released), for metrics, readiness and benchmarks."""
        ...

    async def check(self) -> None:
        """A cheap round trip to the broker or file (for `/readyz` and `miniagent doctor`).

        Raises:
            QueueUnavailable: it does not answer.
        """
        ...

    async def close(self) -> None:
        """Stop consuming and disconnect; unsettled deliveries are left for redelivery."""
        ...


def queue_kind(url: str) -> QueueKind:
    """The implementation a queue URL names.

    Raises:
        UserError: the scheme is not `sqlite`, `amqp`/`amqps` or `redis`/`rediss`/`unix`.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        return "sqlite"
    if scheme in ("amqp", "amqps"):
        return "rabbitmq"
    if scheme in ("redis", "rediss", "unix"):
        return "redis"
    raise UserError(
        f"MINIAGENT_QUEUE_URL must start with sqlite://, amqp:// or redis:// (got {safe_url(url)!r}): "
        "e.g. sqlite:////var/lib/miniagent/queue.db, amqp://guest:guest@localhost:5672/, redis://localhost:6379/0."
    )


def safe_url(url: str) -> str:
    """`url` with its password replaced by `***` (for messages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def unavailable(kind: str, url: str, exc: BaseException | str, hint: str) -> QueueUnavailable:
    """A `QueueUnavailable` naming the queue, its URL (no password), the cause and what to check."""
    cause = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return QueueUnavailable(f"The {kind} job queue at {safe_url(url)} is unavailable ({cause}). {hint}")
