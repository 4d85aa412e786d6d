"""Background runs as durable jobs: the queue contract and three implementations.

Embedded (SQLite), RabbitMQ and Redis Streams, chosen by `MINIAGENT_QUEUE_URL`.

Example:
    ```python
    import asyncio, tempfile, pathlib
    from miniagent.queue import Job, open_queue


    async def main() -> None:
        path = pathlib.Path(tempfile.mkdtemp()) / "queue.db"
        queue = open_queue(f"sqlite:///{path}")
        await queue.connect()
        await queue.enqueue(Job(run_id="r1", tenant_id="t", user_id="u", agent="echo", prompt="hi"))
        async for delivery in queue.consume(prefetch=1):
            assert delivery.job is not None and delivery.job.run_id == "r1"
            await queue.ack(delivery)
            break
        await queue.close()


    asyncio.run(main())
    ```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import QueueUnavailable
from ._base import Delivery, Job, JobQueue, QueueKind, decode_job, queue_kind, safe_url

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "DEFAULT_QUEUE_NAME",
    "Delivery",
    "Job",
    "JobQueue",
    "QueueKind",
    "QueueUnavailable",
    "decode_job",
    "default_queue_url",
    "open_queue",
    "queue_from_settings",
    "queue_kind",
    "safe_url",
]

DEFAULT_QUEUE_NAME = "miniagent.runs"
"""The queue (RabbitMQ), stream (Redis) or table partition (SQLite) background runs go through."""


def default_queue_url(settings: Settings) -> str:
    """The queue `settings` name: `queue_url`, else an SQLite file beside the embedded store (`queue.db`)."""
    if settings.queue_url:
        return settings.queue_url
    return f"sqlite:///{settings.resolved_data_dir() / 'queue.db'}"


def queue_from_settings(settings: Settings) -> JobQueue:
    """The queue `settings` name (`queue_url`, `queue_name`, `queue_lease_s`, `queue_max_deliveries`), not connected.

    Raises:
        UserError: `queue_url` is not a queue URL.
        OptionalDependencyError: the extra the queue needs is not installed.
    """
    return open_queue(
        default_queue_url(settings),
        name=settings.queue_name,
        lease_s=settings.queue_lease_s,
        max_deliveries=settings.queue_max_deliveries,
    )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def open_queue(
    url: str,
    *,
    name: str = DEFAULT_QUEUE_NAME,
    lease_s: float = 30.0,
    max_deliveries: int = 5,
    **options: Any,
) -> JobQueue:
    """The queue at `url` (not connected yet: `await queue.connect()`).

    Args:
        url: `sqlite:///path.db`, `amqp://user:pw@host:5672/vhost` or `redis://host:6379/0`.
        name: The queue's name (a RabbitMQ queue, a Redis stream, an SQLite queue name); replicas and workers that
            share it share the jobs.
        lease_s: How long a delivered job stays with its consumer without being settled before another may take it
            (SQLite lease, Redis `XAUTOCLAIM` idle time; RabbitMQ redelivers when the consumer's connection drops).
        max_deliveries: Deliveries after which the broker itself gives up on a message (RabbitMQ's delivery limit
            routes it to the dead-letter exchange); the worker dead-letters a job delivered more often than this.
        **options: Passed to the implementation (e.g. `clock=` for SQLite, `consumer=` for Redis).

    Raises:
        UserError: the URL's scheme is unknown, or an option is out of range.
        OptionalDependencyError: the extra the queue needs is not installed.
    """
    from ..errors import OptionalDependencyError, UserError

    if not (lease_s > 0) or lease_s != lease_s or lease_s == float("inf"):
        raise UserError(f"`lease_s` must be a finite number of seconds > 0, got {lease_s!r}.")
    if not _positive_int(max_deliveries):
        raise UserError(f"`max_deliveries` must be an integer >= 1, got {max_deliveries!r}.")
    if not name or len(name) > 200:
        raise UserError(f"The queue's `name` must be a non-empty string of at most 200 characters, got {name!r}.")
    kind = queue_kind(url)
    if kind == "sqlite":
        from ._sqlite import SQLiteQueue

        return SQLiteQueue(url, name=name, lease_s=lease_s, max_deliveries=max_deliveries, **options)
    if kind == "rabbitmq":
        try:
            import aio_pika  # noqa: F401
        except ImportError as exc:
            raise OptionalDependencyError("A RabbitMQ job queue", "rabbitmq", missing=exc.name) from exc
        from ._rabbitmq import RabbitMQQueue

        return RabbitMQQueue(url, name=name, lease_s=lease_s, max_deliveries=max_deliveries, **options)
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        raise OptionalDependencyError("A Redis job queue", "redis", missing=exc.name) from exc
    from ._redis import RedisQueue

    return RedisQueue(url, name=name, lease_s=lease_s, max_deliveries=max_deliveries, **options)
