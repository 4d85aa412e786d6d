"""Fixtures of the queue tests: `queue_url` (one per implementation), `queues` to open queues on it, and helpers.

`queue_url` is parametrized over `sqlite` (a file in `tmp_path`), `rabbitmq` (the `rabbitmq_url` fixture of
`tests/rabbitmq_service.py`, looked up by name so this module imports without it) and `redis` (`redis_url`).
"""

from __future__ import annotations

import math
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from miniagent.queue import Delivery, Job, JobQueue, QueueKind, open_queue, queue_kind

WAIT_S = 20.0
"""How long a test waits for something that must happen (a hang guard, never a timing assertion)."""

LONG_LEASE_S = 30.0
"""A lease no test outlives in real time: only a jumped clock (SQLite) or a closed connection ends it."""

SHORT_LEASE_S = 0.3
"""The real idle time after which Redis claims an abandoned job (Redis has no clock to jump)."""


class ShiftedClock:
    """Real time plus an offset that [`jump`][tests.queue.conftest.ShiftedClock.jump] grows.

    SQLite leases expire at once when the clock jumps past them, while time still flows (a release's delay passes).
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


def make_job(i: int, **changes: Any) -> Job:
    """A job whose run id is `run-<i>`."""
    fields: dict[str, Any] = {"run_id": f"run-{i}", "tenant_id": "t1", "user_id": "u1", "agent": "echo"}
    fields["prompt"] = f"prompt {i}"
    fields.update(changes)
    return Job(**fields)


def run_ids(deliveries: list[Delivery]) -> list[str]:
    """The run ids of `deliveries` (all decodable)."""
    ids = []
    for delivery in deliveries:
        assert delivery.job is not None, delivery.error
        ids.append(delivery.job.run_id)
    return ids


def free_port() -> int:
    """A loopback port nothing listens on (just now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def consuming(queue: JobQueue, *, prefetch: int) -> AsyncIterator[MemoryObjectReceiveStream[Delivery]]:
    """Run `queue.consume(prefetch=...)` in a task that forwards every delivery to the stream it yields.

    The stream ends when the iterator ends (`close()`); leaving the block cancels the consuming task.
    """
    send, receive = anyio.create_memory_object_stream[Delivery](math.inf)

    async def pump() -> None:
        async with send:
            async for delivery in queue.consume(prefetch=prefetch):
                send.send_nowait(delivery)

    with receive:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            try:
                yield receive
            finally:
                tg.cancel_scope.cancel()


async def next_delivery(deliveries: MemoryObjectReceiveStream[Delivery]) -> Delivery:
    """The next delivery (failing the test if none comes within `WAIT_S`)."""
    with anyio.fail_after(WAIT_S):
        return await deliveries.receive()


@dataclass
class Queues:
    """Opens queues of one implementation for a test, all on one unique queue name, and closes them after it."""

    url: str
    kind: QueueKind
    tmp_path: Path
    name: str = field(default_factory=lambda: f"test.{uuid.uuid4().hex}")
    clock: ShiftedClock = field(default_factory=ShiftedClock)
    """SQLite's clock (shared by the test's queues); `lapse` jumps it."""
    opened: list[JobQueue] = field(default_factory=list)

    def open(
        self, *, url: str | None = None, name: str | None = None, short_lease: bool = False, **options: Any
    ) -> JobQueue:
        """A queue (not connected); `short_lease` for tests where Redis must claim an abandoned job soon."""
        lease_s = SHORT_LEASE_S if short_lease and self.kind == "redis" else LONG_LEASE_S
        if self.kind == "sqlite":
            options.setdefault("clock", self.clock)
            options.setdefault("poll_interval_s", 0.02)
        queue = open_queue(url or self.url, name=name or self.name, lease_s=lease_s, max_deliveries=5, **options)
        self.opened.append(queue)
        return queue

    async def connected(self, *, name: str | None = None, short_lease: bool = False, **options: Any) -> JobQueue:
        """A connected queue."""
        queue = self.open(name=name, short_lease=short_lease, **options)
        await queue.connect()
        return queue

    def lapse(self) -> None:
        """Let the leases of consumers that stopped lapse: SQLite's clock jumps past them.

        RabbitMQ needs nothing (closing the connection returned the jobs); Redis claims them once they were idle for
        `SHORT_LEASE_S` (open those queues with `short_lease=True`).
        """
        if self.kind == "sqlite":
            self.clock.jump(LONG_LEASE_S + 1)

    def unreachable_url(self) -> str:
        """A URL of this kind that cannot be connected to, with the password `s3cret-pw` where URLs have one."""
        if self.kind == "sqlite":
            blocker = self.tmp_path / "not-a-directory"
            blocker.write_text("a file where the queue's directory should be")
            return f"sqlite:///{blocker / 'queue.db'}"
        if self.kind == "rabbitmq":
            return f"amqp://guest:s3cret-pw@127.0.0.1:{free_port()}/"
        return f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"


@pytest.fixture(params=["sqlite", "rabbitmq", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A queue URL of each implementation: an SQLite file, the test broker's RabbitMQ, the test Redis (emptied)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queues' / 'queue.db'}"
    return cast(str, request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def queues(queue_url: str, tmp_path: Path) -> AsyncIterator[Queues]:
    """Opens queues on `queue_url` for the test and closes them at its end."""
    opener = Queues(queue_url, queue_kind(queue_url), tmp_path)
    try:
        yield opener
    finally:
        for queue in opener.opened:
            await queue.close()
