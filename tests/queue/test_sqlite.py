"""What only the SQLite queue does: a file that outlives the process, claims shared by connections and processes,
leases that a live consumer renews, the URL, and a file that cannot be used.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from miniagent.errors import QueueUnavailable, UserError
from miniagent.queue import Delivery, JobQueue, open_queue
from miniagent.queue._sqlite import SQLiteQueue
from miniagent.store._sqlite_driver import sqlite_module

from .conftest import WAIT_S, consuming, make_job, next_delivery, run_ids

pytestmark = pytest.mark.anyio

LEASE_S = 30.0


class FrozenClock:
    """A clock that moves only when the test advances it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SteppedSleep:
    """The lease renewer's sleep: it returns only when the test calls `step`, which waits for one whole round."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.asleep = anyio.Event()
        self._resume = anyio.Event()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self._resume = anyio.Event()
        self.asleep.set()
        await self._resume.wait()

    async def step(self) -> None:
        """Wake the renewer and wait until it renewed and went back to sleep."""
        with anyio.fail_after(WAIT_S):
            await self.asleep.wait()
            self.asleep = anyio.Event()
            self._resume.set()
            await self.asleep.wait()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'queue.db'}"


@pytest.fixture
async def opened() -> AsyncIterator[Callable[..., SQLiteQueue]]:
    """Opens `SQLiteQueue`s (named `jobs`, a 30 s lease) and closes them after the test."""
    queues: list[SQLiteQueue] = []

    def open_one(url: str, **options: Any) -> SQLiteQueue:
        options.setdefault("poll_interval_s", 0.02)
        queue = SQLiteQueue(url, name=options.pop("name", "jobs"), lease_s=LEASE_S, max_deliveries=5, **options)
        queues.append(queue)
        return queue

    try:
        yield open_one
    finally:
        for queue in queues:
            await queue.close()


async def test_a_restart_loses_no_job(url: str, opened: Callable[..., SQLiteQueue]) -> None:
    clock = FrozenClock()
    before = opened(url, clock=clock)
    for i in range(3):
        await before.enqueue(make_job(i))
    consume = before.consume(prefetch=1)
    done = await anext(consume)
    await before.ack(done)
    await anext(consume)  # run-1: taken, never settled (the process dies with it)
    await before.close()

    clock.now += LEASE_S + 1
    after = opened(url, clock=clock)
    assert await after.depth() == 2
    async with consuming(after, prefetch=2) as deliveries:
        back = [await next_delivery(deliveries), await next_delivery(deliveries)]
        for delivery in back:
            await after.ack(delivery)
    assert {delivery.job.run_id: delivery.deliveries for delivery in back if delivery.job} == {"run-1": 2, "run-2": 1}
    assert await after.depth() == 0
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_jobs_claimed_but_not_handed_out_go_back_as_they_were(
    url: str, opened: Callable[..., SQLiteQueue]
) -> None:
    queue, other = opened(url), opened(url)
    for i in range(4):
        await queue.enqueue(make_job(i))
    consume = queue.consume(prefetch=3)
    first = await anext(consume)  # three claimed, one handed out
    assert await other.depth() == 1
    await consume.aclose()  # type: ignore[attr-defined]  # an async generator
    assert await other.depth() == 3
    consume = queue.consume(prefetch=3)
    second = await anext(consume)  # run-1..3 claimed again, run-1 handed out
    await queue.close()  # puts back run-2 and run-3; run-0 and run-1 stay leased
    async with consuming(other, prefetch=4) as deliveries:
        rest = [await next_delivery(deliveries), await next_delivery(deliveries)]
    assert run_ids([first, second, *rest]) == ["run-0", "run-1", "run-2", "run-3"]
    assert [delivery.deliveries for delivery in rest] == [1, 1]  # never handed out: not counted


async def test_two_connections_claim_each_job_exactly_once(url: str, opened: Callable[..., SQLiteQueue]) -> None:
    total = 50
    queues = (opened(url), opened(url))
    for i in range(total):
        await queues[0].enqueue(make_job(i))
    taken: list[tuple[int, Delivery]] = []
    all_taken = anyio.Event()

    async def work(index: int) -> None:
        queue = queues[index]
        async for delivery in queue.consume(prefetch=3):
            taken.append((index, delivery))
            await anyio.lowlevel.checkpoint()  # let the other consumer claim meanwhile
            await queue.ack(delivery)
            if len(taken) == total:
                all_taken.set()

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(work, 0)
            tg.start_soon(work, 1)
            await all_taken.wait()
            for queue in queues:
                await queue.close()  # ends both iterators
    ids = run_ids([delivery for _, delivery in taken])
    assert sorted(ids) == sorted(f"run-{i}" for i in range(total))
    assert {delivery.deliveries for _, delivery in taken} == {1}


_WORKER = textwrap.dedent(
    """
    import json, sys
    import anyio
    from miniagent.queue._sqlite import SQLiteQueue

    async def main() -> None:
        queue = SQLiteQueue(sys.argv[1], name="jobs", lease_s=30.0, max_deliveries=5, poll_interval_s=0.005)
        await queue.connect()
        print("ready", flush=True)
        async for delivery in queue.consume(prefetch=2):
            job = delivery.job
            assert job is not None
            await queue.ack(delivery)
            if job.agent == "stop":
                break
            print(json.dumps([job.run_id, delivery.deliveries]), flush=True)
        await queue.close()

    anyio.run(main)
    """
)


def _start_worker(url: str) -> subprocess.Popen[str]:
    """A process that consumes `url` until it takes a job of the agent `stop`, printing `[run_id, deliveries]`."""
    command = [sys.executable, "-c", _WORKER, url]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_two_processes_claim_each_job_exactly_once(url: str, opened: Callable[..., SQLiteQueue]) -> None:
    total = 50
    producer = opened(url)
    await producer.connect()
    workers = [await anyio.to_thread.run_sync(_start_worker, url) for _ in range(2)]
    try:
        for worker in workers:
            assert worker.stdout is not None
            with anyio.fail_after(60):  # a cold interpreter importing miniagent
                line = await anyio.to_thread.run_sync(worker.stdout.readline, abandon_on_cancel=True)
            assert line == "ready\n", worker.stderr.read() if worker.stderr else line
        for i in range(total):
            await producer.enqueue(make_job(i))
        for i in range(len(workers)):
            await producer.enqueue(make_job(total + i, agent="stop"))
        outputs = []
        for worker in workers:
            out, err = await anyio.to_thread.run_sync(functools.partial(worker.communicate, timeout=60))
            assert worker.returncode == 0, err
            outputs.append([json.loads(line) for line in out.splitlines()])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    delivered = [run_id for output in outputs for run_id, _ in output]
    assert sorted(delivered) == sorted(f"run-{i}" for i in range(total))
    assert {count for output in outputs for _, count in output} == {1}
    assert await producer.depth() == 0


async def test_a_live_consumer_keeps_its_job_by_renewing_the_lease(
    url: str, opened: Callable[..., SQLiteQueue], caplog: pytest.LogCaptureFixture
) -> None:
    clock, sleep = FrozenClock(), SteppedSleep()
    holder, other = opened(url, clock=clock, sleep=sleep), opened(url, clock=clock)
    await holder.enqueue(make_job(1))
    held = await anext(holder.consume(prefetch=1))
    clock.now += LEASE_S - 1
    await sleep.step()  # renewed: the lease now ends LEASE_S from here
    clock.now += LEASE_S - 1  # past the first lease's end
    assert await other.depth() == 0
    assert sleep.delays[0] == LEASE_S / 3

    clock.now += 2  # no renewal this time (the holder's loop is stuck, say): another consumer takes the job
    assert await other.depth() == 1
    taken = await anext(other.consume(prefetch=1))
    assert taken.job == held.job and taken.deliveries == 2
    with caplog.at_level(logging.DEBUG, logger="miniagent.queue"):
        await holder.ack(held)  # too late: changes nothing
    assert held.settled
    assert any("changed nothing" in record.getMessage() for record in caplog.records)
    assert await other.depth() == 0
    await other.ack(taken)  # the new holder's lease is intact
    await sleep.step()  # the renewer forgot the lost lease (nothing to renew, nothing fails)


@pytest.mark.parametrize("settle", ["release", "reject"])
async def test_settling_a_lost_lease_leaves_the_new_holder_alone(
    url: str, opened: Callable[..., SQLiteQueue], settle: str
) -> None:
    clock = FrozenClock()
    first, second = opened(url, clock=clock), opened(url, clock=clock)
    await first.enqueue(make_job(1))
    lost = await anext(first.consume(prefetch=1))
    clock.now += LEASE_S + 1
    held = await anext(second.consume(prefetch=1))
    if settle == "release":
        await first.release(lost)
    else:
        await first.reject(lost, reason="too late")
    assert await second.depth() == 0  # still leased by `second`
    await second.ack(held)
    clock.now += LEASE_S + 1
    assert await second.depth() == 0


async def test_an_enqueue_wakes_the_consumers_of_the_same_file_in_this_process(
    url: str, opened: Callable[..., SQLiteQueue]
) -> None:
    waiting = opened(url, poll_interval_s=3600)  # polls once, then only a wake can deliver within the test
    producer = opened(url)
    async with consuming(waiting, prefetch=1) as deliveries:
        await producer.connect()
        await anyio.lowlevel.checkpoint()
        await producer.enqueue(make_job(1))
        assert run_ids([await next_delivery(deliveries)]) == ["run-1"]


async def test_a_consumer_rides_out_a_locked_file(url: str, opened: Callable[..., SQLiteQueue]) -> None:
    queue = opened(url, publish_timeout_s=0.05)
    await queue.enqueue(make_job(1))
    # Through the queue's own SQLite library: two libraries in one process do not see each other's locks.
    blocker = sqlite_module().connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=5)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # as if another process held the write lock
        with pytest.raises(QueueUnavailable, match="write lock"):
            await queue.enqueue(make_job(2))
        failed = anyio.Event()

        class Watch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.getMessage().startswith("Polling"):
                    failed.set()

        watch = Watch(logging.WARNING)
        logging.getLogger("miniagent.queue").addHandler(watch)
        try:
            async with consuming(queue, prefetch=1) as deliveries:
                with anyio.fail_after(WAIT_S):
                    await failed.wait()  # a claim timed out on the lock: the consumer goes on
                blocker.execute("COMMIT")
                delivery = await next_delivery(deliveries)
        finally:
            logging.getLogger("miniagent.queue").removeHandler(watch)
        assert run_ids([delivery]) == ["run-1"] and delivery.deliveries == 1
    finally:
        blocker.close()


async def test_a_closed_queue_refuses_work_until_reconnected(url: str, opened: Callable[..., SQLiteQueue]) -> None:
    queue = opened(url)
    await queue.enqueue(make_job(1))
    delivery = await anext(queue.consume(prefetch=1))
    await queue.close()
    await queue.close()
    with pytest.raises(UserError, match="closed"):
        await queue.enqueue(make_job(2))
    with pytest.raises(UserError, match="closed"):
        await queue.ack(delivery)
    assert not delivery.settled
    await queue.connect()
    await queue.connect()
    assert await queue.depth() == 0  # still leased (30 s)
    await queue.ack(delivery)  # the lease is still valid: the reopened queue settles it
    assert await queue.depth() == 0


@pytest.mark.parametrize(
    "make_url",
    [
        pytest.param(lambda tmp: f"sqlite:///{tmp / 'a-file' / 'queue.db'}", id="directory-is-a-file"),
        pytest.param(lambda tmp: f"sqlite:///{tmp / 'garbage.db'}", id="not-a-database"),
        pytest.param(lambda tmp: f"sqlite:///{tmp}", id="a-directory"),
    ],
)
async def test_a_file_that_cannot_be_used_is_unavailable(tmp_path: Path, make_url: Callable[[Path], str]) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "garbage.db").write_bytes(b"this is not an SQLite database, " * 100)
    url = make_url(tmp_path)
    queue = open_queue(url, name="jobs")
    for attempt in (queue.connect, queue.check, lambda: queue.enqueue(make_job(1))):
        with pytest.raises(QueueUnavailable) as caught:
            await attempt()
        assert url in str(caught.value) and "MINIAGENT_QUEUE_URL" in str(caught.value)
    await queue.close()


async def test_relative_and_aiosqlite_urls_name_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_queue("sqlite:///rel/queue.db", name="jobs")
    absolute = open_queue(f"sqlite+aiosqlite:///{tmp_path / 'rel' / 'queue.db'}", name="jobs")
    try:
        await relative.enqueue(make_job(1))
        assert (tmp_path / "rel" / "queue.db").is_file()
        assert await absolute.depth() == 1
    finally:
        await relative.close()
        await absolute.close()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite:///:memory:", "must be a file"),
        ("sqlite://", "sqlite:///relative"),
        ("sqlite:///", "must be a file"),
        ("sqlite:///file::memory:?cache=shared", "must be a file"),
        ("sqlite:///queue.db?mode=rw", "no query parameters"),
        ("sqlite://host/queue.db", "sqlite:///relative"),
    ],
)
def test_urls_that_are_not_a_file_are_refused(url: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        open_queue(url)


@pytest.mark.parametrize(
    "options",
    [
        {"lease_s": 0},
        {"poll_interval_s": 0},
        {"poll_interval_s": float("nan")},
        {"publish_timeout_s": -1},
        {"publish_timeout_s": True},
        {"max_deliveries": 0},
        {"name": ""},
        {"name": "x" * 201},
    ],
)
def test_options_out_of_range_are_refused(tmp_path: Path, options: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"name": "jobs", "lease_s": 1.0, "max_deliveries": 5, **options}
    with pytest.raises(UserError):
        SQLiteQueue(f"sqlite:///{tmp_path / 'q.db'}", **arguments)


async def test_prefetch_and_delay_out_of_range_are_refused(url: str, opened: Callable[..., SQLiteQueue]) -> None:
    queue: JobQueue = opened(url)
    for prefetch in (0, True, 1.5):
        with pytest.raises(UserError, match="prefetch"):
            queue.consume(prefetch=prefetch)  # type: ignore[arg-type]  # what a caller might pass
    await queue.enqueue(make_job(1))
    delivery = await anext(queue.consume(prefetch=1))
    for delay in (-1.0, float("inf"), float("nan")):
        with pytest.raises(UserError, match="delay_s"):
            await queue.release(delivery, delay_s=delay)
    assert not delivery.settled
    with pytest.raises(UserError, match="did not hand out"):
        await queue.ack(Delivery(job=None, body=b"", deliveries=1))
