"""What only the RabbitMQ queue does, on a real broker: durability across a broker restart, consumers that ride out an
outage, redelivery after a consumer's connection closes, the delivery limit and the dead queue, delay queues,
refusals that retrying cannot fix, and passwords kept out of errors and logs.

The shared semantics (order, prefetch, release, reject, settling twice...) are in `test_contract.py`. The broker is
stopped and started once in this file (it costs seconds).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from miniagent.errors import QueueUnavailable, UserError
from miniagent.queue import Delivery, Job, open_queue
from miniagent.queue._rabbitmq import RabbitMQQueue
from tests.rabbitmq_service import RabbitMQServer

from .conftest import WAIT_S, consuming, free_port, make_job, next_delivery, run_ids

pytestmark = pytest.mark.anyio


class Queues:
    """Makes `RabbitMQQueue`s (by default all on one new queue name) and closes them all at the end of the test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = f"test.{uuid.uuid4().hex}"
        self.made: list[RabbitMQQueue] = []

    def __call__(self, *, url: str | None = None, max_deliveries: int = 5, **options: Any) -> RabbitMQQueue:
        queue = RabbitMQQueue(
            url or self.url, name=options.pop("name", self.name), lease_s=30.0, max_deliveries=max_deliveries, **options
        )
        self.made.append(queue)
        return queue

    async def connected(self, **options: Any) -> RabbitMQQueue:
        queue = self(**options)
        await queue.connect()
        return queue


@pytest.fixture
async def queues(rabbitmq_url: str) -> AsyncIterator[Queues]:
    made = Queues(rabbitmq_url)
    try:
        yield made
    finally:
        for queue in made.made:
            await queue.close()


@asynccontextmanager
async def broker(url: str) -> AsyncIterator[Any]:
    """A plain aio-pika channel on the test broker, to look at queues the way an operator would."""
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


async def ready_count(url: str, queue: str) -> int:
    """The messages ready in `queue`, as the broker reports them (a passive declare)."""
    async with broker(url) as channel:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count)


async def dead_messages(url: str, queue: RabbitMQQueue, count: int) -> list[tuple[bytes, str]]:
    """Wait until `<name>.dead` holds `count` messages; their bodies and dead-lettering reasons (`x-death`)."""
    with anyio.fail_after(WAIT_S):
        while await queue.dead_count() < count:  # noqa: ASYNC110  # the broker dead-letters asynchronously: no event
            await anyio.sleep(0.02)
    found = []
    async with broker(url) as channel:
        dead = await channel.declare_queue(queue.dead_queue, passive=True)
        for _ in range(count):
            message = await dead.get(no_ack=True)
            deaths = message.headers["x-death"]
            found.append((message.body, deaths[0]["reason"]))
    return found


async def wait_for_event(logs: list[MutableMapping[str, Any]], event: str) -> None:
    """Wait until `event` was logged."""
    with anyio.fail_after(WAIT_S):
        while not any(entry["event"] == event for entry in logs):  # noqa: ASYNC110  # logs have no event to set
            await anyio.sleep(0.01)


@pytest.fixture
def outage(rabbitmq_server: RabbitMQServer) -> Iterator[RabbitMQServer]:
    """The test broker, running again after the test even if the test stopped it and then failed."""
    yield rabbitmq_server
    if not rabbitmq_server.running:
        rabbitmq_server.stop()
        rabbitmq_server.start()


# --- durability and outages (the two tests that restart the broker) -------------------------------------------


async def test_a_broker_restart_loses_no_job_and_consumers_ride_it_out(queues: Queues, outage: RabbitMQServer) -> None:
    # Persistent jobs in a durable queue nobody consumes yet, and a consumer holding a job of another queue.
    stored = await queues.connected(name=f"{queues.name}.stored")
    stored_jobs = [make_job(10), make_job(11)]
    for job in stored_jobs:
        await stored.enqueue(job)
    queue = await queues.connected()
    await queue.enqueue(make_job(1))
    with capture_logs() as logs:
        async with consuming(queue, prefetch=1) as deliveries:
            held = await next_delivery(deliveries)
            assert run_ids([held]) == ["run-1"] and held.deliveries == 1

            await anyio.to_thread.run_sync(outage.stop)
            # Publishing fails once `publish_timeout_s` is spent retrying; nothing answers a check.
            impatient = queues(publish_timeout_s=0.3)
            with anyio.fail_after(WAIT_S), pytest.raises(QueueUnavailable) as caught:
                await impatient.enqueue(make_job(9))
            assert "Nothing was enqueued (retried for 0.3 s)" in str(caught.value)
            with pytest.raises(QueueUnavailable):
                await queue.check()
            # A patient publisher retries until the broker is back.
            patient = queues(publish_timeout_s=WAIT_S * 3)
            async with anyio.create_task_group() as tg:
                tg.start_soon(patient.enqueue, make_job(2))
                await wait_for_event(logs, "queue_publish_retry")  # it tried while the broker was down
                await anyio.to_thread.run_sync(outage.start)

            # The consumer reconnected by itself: the job it held comes again, counting one more delivery.
            again = await next_delivery(deliveries)
            assert run_ids([again]) == ["run-1"] and again.deliveries == 2
            await queue.ack(held)  # taken before the outage: the broker forgot it, so this is a no-op
            assert held.settled
            await queue.ack(again)
            later = await next_delivery(deliveries)
            assert run_ids([later]) == ["run-2"] and later.deliveries == 1
            await queue.ack(later)
    assert await queue.depth() == 0

    assert await stored.depth() == 2  # its publishing connection went down with the broker: a new one is opened
    async with consuming(stored, prefetch=2) as deliveries:
        received = [await next_delivery(deliveries), await next_delivery(deliveries)]
        assert [(d.job, d.deliveries) for d in received] == [(stored_jobs[0], 1), (stored_jobs[1], 1)]
        for delivery in received:
            await stored.ack(delivery)
    events = [(entry["event"], entry["log_level"]) for entry in logs if entry.get("kind") == "rabbitmq"]
    assert ("queue_unavailable", "warning") in events
    assert ("queue_reconnected", "info") in events
    skipped = [entry for entry in logs if entry["event"] == "queue_settle_skipped"]
    assert held.job is not None
    assert [(e["log_level"], e["verb"], e["job_id"]) for e in skipped] == [("debug", "ack", held.job.job_id)]
    assert outage.password not in repr(logs)


# --- redelivery, the delivery limit, the dead queue -----------------------------------------------------------


async def test_unsettled_deliveries_come_back_when_the_consumer_connection_closes(queues: Queues) -> None:
    first = await queues.connected()
    jobs = [make_job(1), make_job(2)]
    for job in jobs:
        await first.enqueue(job)
    async with consuming(first, prefetch=2) as deliveries:
        held = [await next_delivery(deliveries), await next_delivery(deliveries)]
    await first.close()  # as if its worker died: neither delivery was settled

    with capture_logs() as logs:
        await first.ack(held[0])  # its channel is gone: a no-op, not an error for the worker
    assert held[0].settled and [e["event"] for e in logs] == ["queue_settle_skipped"]

    second = await queues.connected()
    async with consuming(second, prefetch=2) as deliveries:
        again = [await next_delivery(deliveries), await next_delivery(deliveries)]
        assert sorted((d.job.run_id if d.job else "", d.deliveries) for d in again) == [("run-1", 2), ("run-2", 2)]
        for delivery in again:
            await second.ack(delivery)
    assert await second.depth() == 0


async def test_deliveries_handed_out_can_be_settled_after_consuming_stops(queues: Queues) -> None:
    first = await queues.connected()
    for i in range(3):
        await first.enqueue(make_job(i))
    with anyio.fail_after(WAIT_S):
        async with aclosing(first.consume(prefetch=3)) as deliveries:
            held = await anext(deliveries)  # the broker sends the other two as well, but they are not handed out
    # Consuming stopped (a worker shutting down): the two never handed out go back to the queue, but the one the
    # worker holds stays on a live channel until it is settled.
    second = await queues.connected()
    async with consuming(second, prefetch=3) as others:
        rest = [await next_delivery(others), await next_delivery(others)]
        assert sorted(run_ids(rest)) == sorted({"run-0", "run-1", "run-2"} - set(run_ids([held])))
        with capture_logs() as logs:
            await first.ack(held)
        assert logs == []  # acked for real (not skipped)
        for delivery in rest:
            await second.ack(delivery)
    await first.close()
    assert await second.depth() == 0


async def test_the_delivery_limit_dead_letters_a_job_whose_consumers_keep_vanishing(queues: Queues) -> None:
    job = make_job(1)
    await (await queues.connected(max_deliveries=2)).enqueue(job)
    for expected in (1, 2, 3):  # the worker would dead-letter delivery 3 itself; here it dies before it can
        consumer = await queues.connected(max_deliveries=2)
        async with consuming(consumer, prefetch=1) as deliveries:
            delivery = await next_delivery(deliveries)
            assert delivery.job == job and delivery.deliveries == expected
        await consumer.close()  # the delivery returns to the queue, counted

    observer = queues(max_deliveries=2)
    assert await dead_messages(queues.url, observer, 1) == [(job.to_bytes(), "delivery_limit")]
    assert await observer.depth() == 0


async def test_a_rejected_job_lands_in_the_dead_queue(queues: Queues) -> None:
    queue = await queues.connected()
    job = make_job(1)
    await queue.enqueue(job)
    async with consuming(queue, prefetch=1) as deliveries:
        with capture_logs() as logs:
            await queue.reject(await next_delivery(deliveries), reason="the agent does not exist")
    assert await dead_messages(queues.url, queue, 1) == [(job.to_bytes(), "rejected")]
    assert await queue.depth() == 0
    assert logs == [
        {
            "event": "queue_job_rejected",
            "log_level": "info",
            "kind": "rabbitmq",
            "queue": queue.name,
            "job_id": job.job_id,
            "deliveries": 1,
            "reason": "the agent does not exist",
        }
    ]


async def test_prefetch_bounds_what_the_broker_sends_to_a_consumer(queues: Queues) -> None:
    queue = await queues.connected()
    for i in range(4):
        await queue.enqueue(make_job(i))
    async with consuming(queue, prefetch=2) as deliveries:
        first, second = await next_delivery(deliveries), await next_delivery(deliveries)
        assert await queue.depth() == 2  # the broker holds the other two back: `basic.qos(prefetch_count=2)`
        await queue.ack(first)
        third = await next_delivery(deliveries)  # one settled: one more sent
        assert await queue.depth() == 1
        assert run_ids([first, second, third]) == ["run-0", "run-1", "run-2"]
        await queue.ack(second)
        await queue.ack(third)


# --- releases ---------------------------------------------------------------------------------------------------


async def test_a_delayed_release_waits_in_the_delay_queue_of_its_level(queues: Queues) -> None:
    queue = await queues.connected()
    job = make_job(1)
    await queue.enqueue(job)
    async with consuming(queue, prefetch=1) as deliveries:
        await queue.release(await next_delivery(deliveries), delay_s=40)  # rounded up to 64 s
    assert await ready_count(queues.url, f"{queue.name}.delay.64000") == 1
    assert await queue.depth() == 0  # not due yet

    await queue.enqueue(make_job(2))
    async with consuming(queue, prefetch=1) as deliveries:
        first = await next_delivery(deliveries)
        await queue.release(first, delay_s=0.3)  # rounded up to 500 ms
        again = await next_delivery(deliveries)
        assert run_ids([first, again]) == ["run-2", "run-2"] and again.deliveries == 2
        await queue.release(again)  # no delay: straight back, counting on
        third = await next_delivery(deliveries)
        assert run_ids([third]) == ["run-2"] and third.deliveries == 3
        await queue.ack(third)
    assert await ready_count(queues.url, f"{queue.name}.delay.500") == 0


async def test_a_release_that_cannot_be_published_puts_the_job_back_at_once(queues: Queues) -> None:
    queue = await queues.connected(publish_timeout_s=0.3)
    await queue.enqueue(make_job(1))
    async with broker(queues.url) as channel:
        # A delay queue declared by someone else with other settings: the copy cannot be parked there.
        await channel.declare_queue(f"{queue.name}.delay.1000", durable=True, arguments={"x-max-length": 1})
    async with consuming(queue, prefetch=1) as deliveries:
        with capture_logs() as logs:
            await queue.release(await next_delivery(deliveries), delay_s=1)
        assert [e["event"] for e in logs] == ["queue_delay_failed"]
        again = await next_delivery(deliveries)
        assert run_ids([again]) == ["run-1"] and again.deliveries == 2
        await queue.ack(again)


# --- the topology, refusals, secrets ------------------------------------------------------------------------------


async def test_a_queue_deleted_under_a_consumer_is_declared_again(queues: Queues) -> None:
    queue = await queues.connected()
    async with consuming(queue, prefetch=1) as deliveries:
        await anyio.lowlevel.checkpoint()  # the consumer starts (either order must work)
        async with broker(queues.url) as channel:
            await channel.queue_delete(queue.name)
        await queue.enqueue(make_job(1))  # unroutable now: the publisher declares the queue again and retries
        delivery = await next_delivery(deliveries)  # the consumer was cancelled by the broker, and came back
        assert run_ids([delivery]) == ["run-1"] and delivery.deliveries == 1
        await queue.ack(delivery)


async def test_a_queue_declared_with_other_settings_is_refused_with_the_fix(queues: Queues) -> None:
    await queues.connected(max_deliveries=5)
    other = queues(max_deliveries=3)
    with anyio.fail_after(WAIT_S), pytest.raises(QueueUnavailable) as caught:
        await other.connect()
    assert "inequivalent arg 'x-delivery-limit'" in str(caught.value)
    assert "exists with other settings" in str(caught.value)


async def test_a_wrong_password_is_refused_at_once_and_never_shown(
    queues: Queues, rabbitmq_server: RabbitMQServer
) -> None:
    url = queues.url.replace(rabbitmq_server.password, "not-the-password")
    queue = queues(url=url, publish_timeout_s=WAIT_S * 3)
    with anyio.fail_after(WAIT_S):  # refused for good: no retrying for `publish_timeout_s`
        with pytest.raises(QueueUnavailable) as connecting:
            await queue.connect()
        with pytest.raises(QueueUnavailable) as enqueuing:
            await queue.enqueue(make_job(1))
        with pytest.raises(QueueUnavailable) as consuming_:
            await anext(aiter(queue.consume(prefetch=1)))
    for caught in (connecting, enqueuing, consuming_):
        message = str(caught.value)
        assert "refused the login" in message and "miniagent:***@127.0.0.1" in message
        assert "not-the-password" not in message
    assert "not-the-password" not in repr(queue)


async def test_a_missing_vhost_is_refused_with_the_fix(queues: Queues) -> None:
    queue = queues(url=queues.url.rstrip("/") + "/no-such-vhost")
    with anyio.fail_after(WAIT_S), pytest.raises(QueueUnavailable) as caught:
        await queue.connect()
    assert "refused to open the vhost" in str(caught.value) and "closed the connection" in str(caught.value)


async def test_an_unreachable_broker_fails_every_call_after_retrying_and_hides_the_password() -> None:
    url = f"amqp://guest:s3cret-pw@127.0.0.1:{free_port()}/"
    queue = RabbitMQQueue(url, name="test.unreachable", lease_s=30, max_deliveries=5, publish_timeout_s=0.3)
    try:
        with capture_logs() as logs, anyio.fail_after(WAIT_S):
            with pytest.raises(QueueUnavailable) as enqueuing:
                await queue.enqueue(make_job(1))
            with pytest.raises(QueueUnavailable) as checking:
                await queue.check()
            with pytest.raises(QueueUnavailable) as measuring:
                await queue.depth()
            with pytest.raises(QueueUnavailable):
                await anext(aiter(queue.consume(prefetch=1)))
    finally:
        await queue.close()
    assert "retried for 0.3 s" in str(enqueuing.value)
    assert sum(entry["event"] == "queue_publish_retry" for entry in logs) >= 1
    for caught in (enqueuing, checking, measuring):
        assert "amqp://guest:***@127.0.0.1" in str(caught.value) and "s3cret-pw" not in str(caught.value)
    assert "s3cret-pw" not in repr(logs)


# --- input checks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options", "complaint"),
    [
        ("redis://127.0.0.1/0", {}, "must be amqp://"),
        ("amqp://guest:pw@127.0.0.1/", {"name": ""}, "`name`"),
        ("amqp://guest:pw@127.0.0.1/", {"publish_timeout_s": 0}, "`publish_timeout_s`"),
        ("amqp://guest:pw@127.0.0.1/", {"connect_timeout_s": math.inf}, "`connect_timeout_s`"),
        ("amqp://guest:pw@127.0.0.1/", {"lease_s": math.nan}, "`lease_s`"),
        ("amqp://guest:pw@127.0.0.1/", {"max_deliveries": 0}, "`max_deliveries`"),
    ],
)
def test_options_are_checked(url: str, options: dict[str, Any], complaint: str) -> None:
    arguments: dict[str, Any] = {"name": "jobs", "lease_s": 30.0, "max_deliveries": 5} | options
    with pytest.raises(UserError) as caught:
        RabbitMQQueue(url, **arguments)
    assert complaint in str(caught.value) and ":pw@" not in str(caught.value)


async def test_settling_arguments_and_prefetch_are_checked() -> None:
    queue = open_queue("amqp://guest:pw@127.0.0.1:1/", name="jobs")
    delivery = Delivery(Job(run_id="r", tenant_id="t", user_id="u", agent="a"), b"{}", 1)
    with pytest.raises(UserError, match="`delay_s`"):
        await queue.release(delivery, delay_s=-1)
    with pytest.raises(UserError, match="`delay_s`"):
        await queue.release(delivery, delay_s=math.nan)
    with pytest.raises(UserError, match="`reason`"):
        await queue.reject(delivery, reason=None)  # type: ignore[arg-type]  # what a caller might pass
    with pytest.raises(UserError, match="did not come from the RabbitMQ queue 'jobs'"):
        await queue.ack(delivery)
    with pytest.raises(UserError, match="`prefetch`"):
        await anext(aiter(queue.consume(prefetch=0)))
    assert not delivery.settled
    await queue.close()
    with pytest.raises(UserError, match="is closed"):
        await queue.enqueue(delivery.job)  # type: ignore[arg-type]  # a job, checked above


def test_the_heartbeat_follows_the_lease_unless_the_url_sets_one() -> None:
    def heartbeat(url: str, lease_s: float) -> str:
        queue = RabbitMQQueue(url, name="jobs", lease_s=lease_s, max_deliveries=5)
        return str(queue._amqp_url.query["heartbeat"])

    assert heartbeat("amqp://h/", 30) == "15"
    assert heartbeat("amqp://h/", 0.5) == "5"
    assert heartbeat("amqp://h/", 3600) == "60"
    assert heartbeat("amqp://h/?heartbeat=7", 30) == "7"
