"""What only the Redis Streams queue does, on a real redis-server: leases kept by renewal and taken over after a
crash, delivery counts that survive releases, delayed releases, the dead stream, restarts of Redis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from structlog.testing import capture_logs

from miniagent.errors import QueueUnavailable, UserError
from miniagent.queue import Delivery, Job, JobQueue, open_queue
from miniagent.queue._redis import RedisQueue
from miniagent.testing import ManualClock
from tests.redis_service import RedisServer

pytestmark = pytest.mark.anyio

LEASE_S = 0.3
BLOCK_MS = 50
HANG_GUARD_S = 20.0  # only stops a broken test from hanging; no assertion depends on it


def job(run_id: str = "r1") -> Job:
    return Job(
        run_id=run_id,
        tenant_id="t1",
        user_id="u1",
        agent="echo",
        prompt=f"prompt of {run_id}",
        job_id=f"job-{run_id}",
        enqueued_at=1_700_000_000.0,
    )


@pytest.fixture
def name() -> str:
    return f"test.{uuid.uuid4().hex}"


class Queues:
    """Makes queues on one stream and closes them all at the end of the test."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.made: list[RedisQueue] = []

    def __call__(self, consumer: str = "a", **options: Any) -> RedisQueue:
        options.setdefault("lease_s", LEASE_S)
        options.setdefault("max_deliveries", 5)
        options.setdefault("block_ms", BLOCK_MS)
        queue = RedisQueue(options.pop("url", self.url), name=self.name, consumer=consumer, **options)
        self.made.append(queue)
        return queue


@pytest.fixture
async def queues(redis_url: str, name: str) -> AsyncIterator[Queues]:
    made = Queues(redis_url, name)
    try:
        yield made
    finally:
        for queue in made.made:
            await queue.close()


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait for a state (checked between event-loop turns)."""
    with anyio.fail_after(HANG_GUARD_S):
        while not predicate():  # noqa: ASYNC110  # the state belongs to code that has no event to set
            await anyio.sleep(0.01)


async def take(queue: RedisQueue, count: int, *, prefetch: int | None = None) -> list[Delivery]:
    """The next `count` deliveries (consuming with `prefetch`, `count` by default, then stopping)."""
    got: list[Delivery] = []
    with anyio.fail_after(HANG_GUARD_S):
        async with aclosing(queue.consume(prefetch=prefetch or count)) as deliveries:
            async for delivery in deliveries:
                got.append(delivery)
                if len(got) == count:
                    break
    return got


class Collector:
    """Consumes in the background into `got` until cancelled."""

    def __init__(self, queue: RedisQueue, prefetch: int = 1) -> None:
        self.queue = queue
        self.prefetch = prefetch
        self.got: list[Delivery] = []

    async def run(self) -> None:
        async with aclosing(self.queue.consume(prefetch=self.prefetch)) as deliveries:
            async for delivery in deliveries:
                self.got.append(delivery)


def pending(server: RedisServer, name: str) -> list[tuple[str, str, int]]:
    """The group's pending entries: (id, consumer, times delivered)."""
    with redis.Redis(host="127.0.0.1", port=server.port) as client:
        reply = client.xpending_range(name, f"{name}.workers", "-", "+", 100)
    return [(_s(p["message_id"]), _s(p["consumer"]), int(p["times_delivered"])) for p in reply]


def xlen(server: RedisServer, key: str) -> int:
    reply = server.command("XLEN", key)
    assert isinstance(reply, int)
    return reply


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def entry_id(delivery: Delivery) -> str:
    return _s(delivery.token.entry_id)


# --- the basics -----------------------------------------------------------------------------------------------


async def test_open_queue_makes_a_redis_queue(redis_url: str, name: str) -> None:
    queue = open_queue(redis_url, name=name, lease_s=5, max_deliveries=3, consumer="w1", block_ms=100)
    try:
        assert isinstance(queue, RedisQueue) and isinstance(queue, JobQueue)
        assert (queue.kind, queue.name, queue.group, queue.consumer) == ("redis", name, f"{name}.workers", "w1")
        await queue.connect()
        await queue.check()
    finally:
        await queue.close()


async def test_the_default_consumer_name_is_unique_per_queue(redis_url: str, name: str) -> None:
    first = RedisQueue(redis_url, name=name, lease_s=1, max_deliveries=1)
    second = RedisQueue(redis_url, name=name, lease_s=1, max_deliveries=1)
    try:
        assert first.consumer != second.consumer
        host, pid, suffix = first.consumer.rsplit(":", 2)
        assert (host, int(pid), len(suffix)) == (socket.gethostname(), os.getpid(), 8)
    finally:
        await first.close()
        await second.close()


async def test_jobs_come_in_order_and_ack_deletes_their_entries(
    queues: Queues, redis_server: RedisServer, name: str
) -> None:
    queue = queues()
    await queue.connect()
    jobs = [job(f"r{i}") for i in range(3)]
    for each in jobs:
        await queue.enqueue(each)
    assert xlen(redis_server, name) == 3 and await queue.depth() == 3

    got = await take(queue, 3)

    assert [d.job for d in got] == jobs
    assert [(d.deliveries, d.error, d.settled) for d in got] == [(1, None, False)] * 3
    assert [d.body for d in got] == [each.to_bytes() for each in jobs]
    assert await queue.depth() == 0  # delivered, not settled: not waiting
    assert [p[1:] for p in pending(redis_server, name)] == [("a", 1)] * 3
    for delivery in got:
        await queue.ack(delivery)
        assert delivery.settled
    assert xlen(redis_server, name) == 0
    assert pending(redis_server, name) == []
    assert queue.unsettled == 0


async def test_a_job_enqueued_before_any_worker_connected_is_delivered(queues: Queues) -> None:
    producer = queues("producer")
    await producer.enqueue(job())  # no connect: the stream exists, the group does not yet

    worker = queues("worker")
    (delivery,) = await take(worker, 1)

    assert delivery.job == job() and delivery.deliveries == 1


async def test_at_most_prefetch_deliveries_are_unsettled(queues: Queues) -> None:
    queue = queues()
    await queue.connect()
    for i in range(3):
        await queue.enqueue(job(f"r{i}"))
    collector = Collector(queue, prefetch=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(collector.run)
        await wait_until(lambda: len(collector.got) == 2)
        assert await queue.depth() == 1 and queue.unsettled == 2

        await queue.ack(collector.got[0])
        await wait_until(lambda: len(collector.got) == 3)

        assert [d.job.run_id for d in collector.got if d.job] == ["r0", "r1", "r2"]
        assert queue.unsettled == 2
        tg.cancel_scope.cancel()


async def test_a_body_that_is_not_a_job_is_delivered_without_a_job(
    queues: Queues, redis_server: RedisServer, name: str
) -> None:
    queue = queues()
    await queue.connect()
    await queue._enqueue_raw(b"\xff not json")
    redis_server.command("XADD", name, "*", "other", "field")

    first, second = await take(queue, 2)

    assert (first.job, first.body, first.deliveries) == (None, b"\xff not json", 1)
    assert first.error is not None and "not a JSON job" in first.error
    assert (second.job, second.body, second.error) == (None, b"", "the stream entry has no `body` field")
    await queue.reject(first, reason="not a job")
    await queue.reject(second, reason="not a job")
    assert xlen(redis_server, name) == 0 and await queue.dead_count() == 2


# --- leases ---------------------------------------------------------------------------------------------------


async def test_a_crashed_consumers_job_is_taken_over_after_the_lease(
    queues: Queues, redis_server: RedisServer, name: str
) -> None:
    crashed = queues("crashed")
    await crashed.connect()
    await crashed.enqueue(job())
    (first,) = await take(crashed, 1)
    await crashed.close()  # gone without settling: its lease is no longer renewed
    assert pending(redis_server, name) == [(entry_id(first), "crashed", 1)]

    survivor = queues("survivor")
    (second,) = await take(survivor, 1)

    assert second.job == first.job and second.deliveries == 2
    assert entry_id(second) == entry_id(first)
    assert pending(redis_server, name) == [(entry_id(first), "survivor", 2)]
    await survivor.ack(second)
    assert xlen(redis_server, name) == 0


async def test_a_live_consumer_keeps_its_job_while_it_renews_the_lease(
    queues: Queues, redis_server: RedisServer, name: str
) -> None:
    holder = queues("holder")
    await holder.connect()
    await holder.enqueue(job())
    (held,) = await take(holder, 1)  # renewal goes on after the iterator stopped (a worker draining its jobs)

    other = Collector(queues("other"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(other.run)
        # Each poll of `other` tries XAUTOCLAIM and then blocks BLOCK_MS, and each renewal waits lease_s / 3: for
        # four leases, the job stayed with its holder.
        polls, renewals = other.queue.polls, holder.renewals
        await wait_until(lambda: other.queue.polls >= polls + 4 * LEASE_S * 1000 / BLOCK_MS)
        await wait_until(lambda: holder.renewals >= renewals + 4 * 3)
        assert other.got == []
        assert pending(redis_server, name) == [(entry_id(held), "holder", 1)]

        await holder.close()  # now it is gone: the other takes the job over
        await wait_until(lambda: len(other.got) == 1)
        tg.cancel_scope.cancel()
    assert other.got[0].deliveries == 2 and other.got[0].job == held.job


async def test_settling_a_job_another_consumer_took_over_is_a_no_op(
    queues: Queues, redis_server: RedisServer, name: str
) -> None:
    slow = queues("slow")
    await slow.connect()
    await slow.enqueue(job())
    (delivery,) = await take(slow, 1)
    redis_server.command("XCLAIM", name, f"{name}.workers", "fast", "0", entry_id(delivery))  # as XAUTOCLAIM would

    with capture_logs() as logs:
        await wait_until(lambda: any(e["event"] == "queue_lease_lost" for e in logs))
        await slow.release(delivery)

    assert pending(redis_server, name) == [(entry_id(delivery), "fast", 2)]  # not taken back, nor settled
    assert xlen(redis_server, name) == 1
    events = [(entry["event"], entry["log_level"]) for entry in logs]
    assert events == [("queue_lease_lost", "warning"), ("queue_settle_skipped", "debug")]
    assert delivery.settled and slow.unsettled == 0


async def test_close_removes_this_consumer_from_the_group_when_it_holds_nothing(
    queues: Queues, redis_server: RedisServer, name: str
) -> None:
    idle, holding = queues("idle"), queues("holding")
    await idle.connect()
    await idle.enqueue(job())
    (delivery,) = await take(holding, 1)
    await take_nothing(idle)

    await idle.close()
    await holding.close()

    consumers = redis_server.command("XINFO", "CONSUMERS", name, f"{name}.workers")
    assert isinstance(consumers, list)
    assert [_s(c[b"name"]) for c in consumers] == ["holding"]
    assert pending(redis_server, name) == [(entry_id(delivery), "holding", 1)]


async def take_nothing(queue: RedisQueue) -> None:
    """Poll once (registering the consumer in the group) and stop."""
    collector = Collector(queue)
    async with anyio.create_task_group() as tg:
        tg.start_soon(collector.run)
        polls = queue.polls
        await wait_until(lambda: queue.polls >= polls + 2)
        tg.cancel_scope.cancel()
    assert collector.got == []


# --- release and reject ---------------------------------------------------------------------------------------


async def test_release_puts_the_job_back_and_counts_the_delivery(
    queues: Queues, redis_server: RedisServer, name: str
) -> None:
    first = queues("first")
    await first.connect()
    await first.enqueue(job())
    counts = []
    for _ in range(3):
        (delivery,) = await take(first, 1)
        counts.append(delivery.deliveries)
        await first.release(delivery)
        assert xlen(redis_server, name) == 1 and await first.depth() == 1  # a new entry; the old one deleted
    (delivery,) = await take(first, 1)
    await first.close()  # a crash after three releases: the count goes on

    (taken_over,) = await take(queues("second"), 1)

    assert counts + [delivery.deliveries, taken_over.deliveries] == [1, 2, 3, 4, 5]
    assert taken_over.job == job() and taken_over.job.job_id == job().job_id


async def test_a_delayed_release_waits_until_it_is_due(queues: Queues, redis_server: RedisServer, name: str) -> None:
    clock = ManualClock(1_000_000.0)
    queue = queues(clock=clock.now)
    await queue.connect()
    await queue.enqueue(job())
    (delivery,) = await take(queue, 1)

    await queue.release(delivery, delay_s=60)

    assert xlen(redis_server, name) == 0 and await queue.depth() == 0
    assert redis_server.command("ZRANGE", f"{name}.delayed", "0", "-1", "WITHSCORES") == [
        [b"1:" + delivery.token.entry_id + b":" + delivery.body, 1_000_060.0]
    ]
    collector = Collector(queue)
    async with anyio.create_task_group() as tg:
        tg.start_soon(collector.run)
        polls = queue.polls
        await wait_until(lambda: queue.polls >= polls + 3)
        assert collector.got == []  # not due: every poll left it where it is

        clock.advance(59.9)
        assert await queue.depth() == 0
        clock.advance(0.1)
        assert await queue.depth() == 1
        await wait_until(lambda: len(collector.got) == 1)
        tg.cancel_scope.cancel()
    assert collector.got[0].job == job() and collector.got[0].deliveries == 2
    assert redis_server.command("ZCARD", f"{name}.delayed") == 0


async def test_without_a_clock_a_delayed_release_is_due_on_redis_time(
    queues: Queues, redis_server: RedisServer, name: str
) -> None:
    queue = queues()
    await queue.connect()
    await queue.enqueue(job())
    (delivery,) = await take(queue, 1)

    before = redis_time(redis_server)
    await queue.release(delivery, delay_s=30)
    after = redis_time(redis_server)

    score = redis_server.command("ZSCORE", f"{name}.delayed", b"1:" + delivery.token.entry_id + b":" + delivery.body)
    assert isinstance(score, bytes | float)
    assert before + 30 <= float(score) <= after + 30


def redis_time(server: RedisServer) -> float:
    reply = server.command("TIME")
    assert isinstance(reply, list | tuple)
    return int(reply[0]) + int(reply[1]) / 1_000_000


async def test_reject_moves_the_message_to_the_dead_stream(
    queues: Queues, redis_server: RedisServer, name: str
) -> None:
    queue = queues(dead_max=2)
    await queue.connect()
    for i in range(3):
        await queue.enqueue(job(f"r{i}"))
    got = await take(queue, 3)

    for delivery in got:
        await queue.reject(delivery, reason=f"failed for good: {delivery.job and delivery.job.run_id}")

    assert xlen(redis_server, name) == 0 and pending(redis_server, name) == []
    assert await queue.dead_count() == 2  # capped at dead_max: the oldest went
    dead = redis_server.command("XRANGE", f"{name}.dead", "-", "+")
    assert isinstance(dead, list)
    assert [fields for _, fields in dead] == [
        {b"body": d.body, b"deliveries": b"1", b"reason": f"failed for good: r{i}".encode(), b"entry": d.token.entry_id}
        for i, d in enumerate(got)
        if i > 0
    ]


async def test_settling_twice_or_on_another_queue_is_a_user_error(queues: Queues) -> None:
    queue, other = queues("a"), queues("b")
    await queue.connect()
    await queue.enqueue(job("r1"))
    await queue.enqueue(job("r2"))
    first, second = await take(queue, 2)
    await queue.ack(first)

    with pytest.raises(UserError, match="already acked, released or rejected"):
        await queue.release(first)
    with pytest.raises(UserError, match="did not come from the Redis job queue"):
        await other.ack(second)
    with pytest.raises(UserError, match="did not come from the Redis job queue"):
        await queue.ack(Delivery(job("r3"), b"", 1))
    with pytest.raises(UserError, match="`delay_s` must be a finite number of seconds >= 0"):
        await queue.release(second, delay_s=-1)
    assert not second.settled
    await queue.reject(second, reason="done")


# --- lifecycle and outages ------------------------------------------------------------------------------------


async def test_close_ends_a_blocked_consume(queues: Queues) -> None:
    queue = queues(block_ms=600_000)  # one read would block for ten minutes: close must interrupt it
    collector = Collector(queue)
    with anyio.fail_after(HANG_GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collector.run)
            await wait_until(lambda: queue.polls == 1)
            await queue.close()  # the collector's `async for` ends: the task group exits
    assert collector.got == []
    with pytest.raises(UserError, match=r"was closed: call `await queue.connect\(\)` to open it again"):
        await queue.enqueue(job())
    with pytest.raises(UserError, match="was closed"):
        await anext(queue.consume(prefetch=1))

    await queue.connect()  # open again, as the same consumer
    await queue.enqueue(job())
    (delivery,) = await take(queue, 1)
    assert delivery.job == job()
    await queue.ack(delivery)


async def test_a_delivery_taken_before_close_is_settled_after_opening_again(
    queues: Queues, redis_server: RedisServer, name: str
) -> None:
    queue = queues(lease_s=30)
    await queue.connect()
    await queue.enqueue(job())
    (delivery,) = await take(queue, 1)
    await queue.close()

    with pytest.raises(UserError, match="was closed"):
        await queue.ack(delivery)
    refused_settled = delivery.settled
    assert refused_settled is False and queue.unsettled == 1

    await queue.connect()
    await queue.ack(delivery)  # still pending on this consumer: settled for real
    assert delivery.settled and queue.unsettled == 0
    assert xlen(redis_server, name) == 0 and pending(redis_server, name) == []


async def test_options_are_checked(redis_url: str, name: str) -> None:
    with pytest.raises(UserError, match="`lease_s` must be a finite number of seconds > 0"):
        RedisQueue(redis_url, name=name, lease_s=0, max_deliveries=1)
    with pytest.raises(UserError, match="`block_ms` must be an integer >= 1"):
        RedisQueue(redis_url, name=name, lease_s=1, max_deliveries=1, block_ms=0)
    with pytest.raises(UserError, match="is not valid"):
        RedisQueue("redis://:secret@host:notaport/0", name=name, lease_s=1, max_deliveries=1)
    queue = RedisQueue(redis_url, name=name, lease_s=1, max_deliveries=1)
    try:
        with pytest.raises(UserError, match="`prefetch` must be an integer >= 1"):
            await anext(queue.consume(prefetch=0))
    finally:
        await queue.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]  # bound but not listening: connections are refused


async def test_an_unreachable_redis_is_queue_unavailable_without_the_password(closed_port: int, name: str) -> None:
    url = f"redis://:hunter2secret@127.0.0.1:{closed_port}/0"
    queue = RedisQueue(url, name=name, lease_s=1, max_deliveries=1, publish_timeout_s=0.2)
    try:
        for call in (queue.connect, queue.check, lambda: queue.enqueue(job()), queue.depth):
            with pytest.raises(QueueUnavailable) as caught:
                await call()
            message = str(caught.value)
            assert "hunter2secret" not in message
            assert f"redis://:***@127.0.0.1:{closed_port}/0" in message and "MINIAGENT_QUEUE_URL" in message
        with pytest.raises(QueueUnavailable, match=r"Nothing was enqueued \(retried for 0.2 s\)"):
            await queue.enqueue(job())
    finally:
        await queue.close()


def unix_redis(directory: Path) -> subprocess.Popen[bytes]:
    """A redis-server on a unix socket in `directory` (`redis.sock`: no port another test session could take while
    it is down), no persistence, once it answers PING."""
    binary = shutil.which("redis-server")
    assert binary is not None
    args = [binary, "--port", "0", "--unixsocket", str(directory / "redis.sock"), "--save", "", "--appendonly", "no"]
    args += ["--dir", str(directory), "--logfile", str(directory / "redis.log"), "--daemonize", "no"]
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + HANG_GUARD_S
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with redis.Redis(unix_socket_path=str(directory / "redis.sock"), socket_timeout=5) as client:
                if client.ping():
                    return process
        except redis.RedisError:  # not up yet
            time.sleep(0.05)
    stop(process)
    pytest.fail(f"redis-server did not start on {directory / 'redis.sock'}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mq-") as directory:  # a short path: unix socket paths are limited
        yield Path(directory)


async def test_consume_rides_out_a_redis_restart(socket_dir: Path, name: str) -> None:
    server = unix_redis(socket_dir)
    queues = Queues(f"unix://{socket_dir / 'redis.sock'}?db=0", name)
    try:
        worker, producer = queues("worker"), queues("producer", publish_timeout_s=0.2)
        await worker.connect()
        await producer.enqueue(job("before"))
        collector = Collector(worker, prefetch=2)  # room for one more: it keeps polling through the outage
        with capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(collector.run)
                await wait_until(lambda: len(collector.got) == 1)

                stop(server)  # no persistence: the stream and its group are gone with it
                await wait_until(lambda: any(e["event"] == "queue_unavailable" for e in logs))
                polls = worker.polls
                await wait_until(lambda: worker.polls >= polls + 3)  # still trying, not crashed
                await worker.ack(collector.got[0])  # cannot reach Redis: logged, and left for redelivery
                with pytest.raises(QueueUnavailable, match="Nothing was enqueued"):
                    await producer.enqueue(job("during"))

                server = unix_redis(socket_dir)
                await queues("late").enqueue(job("after"))  # the group is recreated from the stream's start
                await wait_until(lambda: len(collector.got) == 2)
                tg.cancel_scope.cancel()
    finally:
        for queue in queues.made:
            await queue.close()
        stop(server)

    assert [(d.job and d.job.run_id, d.deliveries) for d in collector.got] == [("before", 1), ("after", 1)]
    warnings = [(e["event"], e.get("action")) for e in logs if e["log_level"] == "warning"]
    assert warnings == [("queue_unavailable", None), ("queue_settle_failed", "ack")]
    assert [e["event"] for e in logs if e["log_level"] == "info"] == ["queue_reconnected"]
