"""The job queue contract (the `miniagent.queue._base` module docs), checked on SQLite, RabbitMQ and Redis alike.

Each implementation must also provide `async def _enqueue_raw(self, body: bytes) -> None` (a body that may not be a
job), used here to check that undecodable messages are still delivered.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from miniagent.errors import QueueUnavailable, UserError
from miniagent.queue import Delivery, Job, JobQueue, safe_url

from .conftest import WAIT_S, Queues, consuming, make_job, next_delivery, run_ids

pytestmark = pytest.mark.anyio

Deliveries = MemoryObjectReceiveStream[Delivery]


async def _take_from_both(
    queues: tuple[JobQueue, JobQueue], streams: tuple[Deliveries, Deliveries], count: int
) -> list[tuple[int, Delivery]]:
    """`count` deliveries from whichever of two consumers gets them, each acked at once; `(consumer, delivery)`."""
    taken: list[tuple[int, Delivery]] = []
    done = anyio.Event()

    async def take(index: int) -> None:
        while True:
            delivery = await streams[index].receive()
            taken.append((index, delivery))
            await queues[index].ack(delivery)
            if len(taken) >= count:
                done.set()

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, 0)
            tg.start_soon(take, 1)
            await done.wait()
            tg.cancel_scope.cancel()
    return taken


async def test_a_job_is_delivered_whole_once_and_acked(queues: Queues) -> None:
    queue = await queues.connected()
    assert isinstance(queue, JobQueue)
    assert queue.kind == queues.kind
    job = Job(
        run_id="run-1",
        tenant_id="tenant-1",
        user_id="user-1",
        agent="echo",
        thread_id="thread-1",
        prompt="Héllo, wörld ✓\nsecond line",
        correlation_id="corr-1",
        key_id="key-1",
        enqueued_at=1_700_000_000.25,
    )
    await queue.enqueue(job)
    assert await queue.depth() == 1
    async with consuming(queue, prefetch=1) as deliveries:
        delivery = await next_delivery(deliveries)
        assert delivery.job == job
        assert delivery.body == job.to_bytes()
        assert (delivery.deliveries, delivery.error, delivery.settled) == (1, None, False)
        await queue.ack(delivery)
        assert delivery.settled
    assert await queue.depth() == 0


async def test_one_consumer_gets_the_jobs_in_enqueue_order(queues: Queues) -> None:
    queue = await queues.connected()
    jobs = [make_job(i) for i in range(6)]
    for job in jobs:
        await queue.enqueue(job)
    received: list[Delivery] = []
    async with consuming(queue, prefetch=3) as deliveries:
        for _ in jobs:
            received.append(await next_delivery(deliveries))
            await queue.ack(received[-1])
    assert [delivery.job for delivery in received] == jobs
    assert {delivery.deliveries for delivery in received} == {1}


async def test_a_waiting_consumer_gets_a_job_enqueued_later(queues: Queues) -> None:
    queue = await queues.connected()
    async with consuming(queue, prefetch=1) as deliveries:
        await anyio.lowlevel.checkpoint()  # the consumer starts waiting on an empty queue (either order must work)
        await queue.enqueue(make_job(1))
        delivery = await next_delivery(deliveries)
        assert run_ids([delivery]) == ["run-1"]
        await queue.ack(delivery)


async def test_prefetch_bounds_the_unsettled_deliveries_of_a_consumer(queues: Queues) -> None:
    first = await queues.connected()
    jobs = [make_job(i) for i in range(5)]
    for job in jobs:
        await first.enqueue(job)
    async with consuming(first, prefetch=2) as held:
        two = [await next_delivery(held), await next_delivery(held)]
        assert [delivery.job for delivery in two] == jobs[:2]
        # `first` now waits for a third delivery. The three other jobs were left in the queue: a second consumer
        # gets all of them.
        second = await queues.connected()
        async with consuming(second, prefetch=5) as others:
            rest = [await next_delivery(others) for _ in range(3)]
        assert [delivery.job for delivery in rest] == jobs[2:]
        for delivery in rest:
            await second.release(delivery)
        # Settling one of its two lets `first` take one more (one of the released jobs).
        await first.ack(two[0])
        third = await next_delivery(held)
        assert third.job in jobs[2:] and third.deliveries == 2
        await first.ack(third)
        await first.ack(two[1])


async def test_two_consumers_share_the_jobs_never_holding_the_same_one(queues: Queues) -> None:
    jobs = [make_job(i) for i in range(6)]
    first, second = await queues.connected(), await queues.connected()
    for job in jobs:
        await first.enqueue(job)
    async with consuming(first, prefetch=2) as from_first, consuming(second, prefetch=2) as from_second:
        held_first = [await next_delivery(from_first), await next_delivery(from_first)]
        held_second = [await next_delivery(from_second), await next_delivery(from_second)]
        # Four jobs held at once, two by each consumer: four different jobs.
        assert len(set(run_ids(held_first + held_second))) == 4
        for delivery in held_first:
            await first.ack(delivery)
        for delivery in held_second:
            await second.ack(delivery)
        rest = await _take_from_both((first, second), (from_first, from_second), 2)
    delivered = held_first + held_second + [delivery for _, delivery in rest]
    assert sorted(run_ids(delivered)) == sorted(job.run_id for job in jobs)
    assert {delivery.deliveries for delivery in delivered} == {1}
    assert await first.depth() == 0


async def test_an_acked_job_is_never_delivered_again(queues: Queues) -> None:
    first = await queues.connected(short_lease=True)
    await first.enqueue(make_job(1))
    async with consuming(first, prefetch=1) as deliveries:
        await first.ack(await next_delivery(deliveries))
    await first.close()
    queues.lapse()  # had the ack been lost, the job would now be delivered again
    second = await queues.connected(short_lease=True)
    assert await second.depth() == 0
    await second.enqueue(make_job(2))
    async with consuming(second, prefetch=1) as deliveries:
        only = await next_delivery(deliveries)
        assert run_ids([only]) == ["run-2"] and only.deliveries == 1
        await second.ack(only)
    assert await second.depth() == 0


async def test_a_released_job_comes_back_counting_one_more_delivery(queues: Queues) -> None:
    queue = await queues.connected()
    job = make_job(1)
    await queue.enqueue(job)
    async with consuming(queue, prefetch=1) as deliveries:
        first = await next_delivery(deliveries)
        await queue.release(first)
        assert first.settled
        again = await next_delivery(deliveries)
        assert again.job == job and again.body == first.body and again.deliveries == 2
        await queue.release(again)
        third = await next_delivery(deliveries)
        assert third.job == job and third.deliveries == 3
        await queue.ack(third)
    assert await queue.depth() == 0


async def test_a_job_released_with_a_delay_comes_back(queues: Queues) -> None:
    queue = await queues.connected()
    job = make_job(1)
    await queue.enqueue(job)
    async with consuming(queue, prefetch=1) as deliveries:
        await queue.release(await next_delivery(deliveries), delay_s=0.2)
        again = await next_delivery(deliveries)
        assert again.job == job and again.deliveries == 2
        await queue.ack(again)


async def test_a_rejected_job_is_removed(queues: Queues) -> None:
    queue = await queues.connected(short_lease=True)
    await queue.enqueue(make_job(1))
    async with consuming(queue, prefetch=1) as deliveries:
        delivery = await next_delivery(deliveries)
        await queue.reject(delivery, reason="failed for good")
        assert delivery.settled
        assert await queue.depth() == 0
        queues.lapse()
        await queue.enqueue(make_job(2))
        after = await next_delivery(deliveries)
        assert run_ids([after]) == ["run-2"] and after.deliveries == 1
        await queue.ack(after)


async def test_settling_a_delivery_twice_is_an_error(queues: Queues) -> None:
    queue = await queues.connected()
    for i in range(2):
        await queue.enqueue(make_job(i))
    async with consuming(queue, prefetch=2) as deliveries:
        acked, released = await next_delivery(deliveries), await next_delivery(deliveries)
        await queue.ack(acked)
        await queue.release(released, delay_s=60)  # not delivered again during the test
    with pytest.raises(UserError):
        await queue.ack(acked)
    with pytest.raises(UserError):
        await queue.release(acked)
    with pytest.raises(UserError):
        await queue.reject(acked, reason="twice")
    with pytest.raises(UserError):
        await queue.ack(released)
    assert acked.settled and released.settled


async def test_a_delivery_cannot_be_settled_through_another_queue(queues: Queues) -> None:
    queue = await queues.connected()
    other = await queues.connected(name=f"{queues.name}.other")
    await queue.enqueue(make_job(1))
    async with consuming(queue, prefetch=1) as deliveries:
        delivery = await next_delivery(deliveries)
        with pytest.raises(UserError):
            await other.ack(delivery)
        assert not delivery.settled
        await queue.ack(delivery)


async def test_an_undecodable_body_is_delivered_for_dead_lettering(queues: Queues) -> None:
    queue = await queues.connected()
    bodies = [b"\xff\xfe not json", b'{"v": 2, "run_id": "r"}', b'{"v": 1, "run_id": "r"}']
    for body in bodies:
        await queue._enqueue_raw(body)  # type: ignore[attr-defined]  # each implementation's test helper
    async with consuming(queue, prefetch=1) as deliveries:
        for body in bodies:
            delivery = await next_delivery(deliveries)
            assert delivery.job is None and delivery.body == body and delivery.deliveries == 1
            assert isinstance(delivery.error, str) and delivery.error
            await queue.reject(delivery, reason=delivery.error)
    assert await queue.depth() == 0


async def test_an_abandoned_delivery_goes_to_another_consumer_counting_one_more(queues: Queues) -> None:
    first = await queues.connected(short_lease=True)
    job = make_job(1)
    await first.enqueue(job)
    async with consuming(first, prefetch=1) as deliveries:
        abandoned = await next_delivery(deliveries)
        assert abandoned.deliveries == 1
    await first.close()  # as if its worker crashed: the delivery is never settled
    queues.lapse()
    second = await queues.connected(short_lease=True)
    async with consuming(second, prefetch=1) as deliveries:
        again = await next_delivery(deliveries)
        assert again.job == job and again.deliveries == 2
        await second.ack(again)
    assert await second.depth() == 0


async def test_depth_counts_the_jobs_waiting_not_the_ones_in_flight(queues: Queues) -> None:
    queue = await queues.connected()
    assert await queue.depth() == 0
    for i in range(3):
        await queue.enqueue(make_job(i))
    assert await queue.depth() == 3
    async with consuming(queue, prefetch=1) as deliveries:
        in_flight = await next_delivery(deliveries)
    assert await queue.depth() == 2
    await queue.release(in_flight)
    assert await queue.depth() == 3


async def test_check_answers(queues: Queues) -> None:
    queue = await queues.connected()
    await queue.check()


async def test_an_unreachable_queue_is_unavailable_and_the_message_hides_the_password(queues: Queues) -> None:
    url = queues.unreachable_url()
    queue = queues.open(url=url, publish_timeout_s=1.0)
    with anyio.fail_after(WAIT_S), pytest.raises(QueueUnavailable) as caught:
        await queue.connect()
    message = str(caught.value)
    assert safe_url(url) in message
    assert "s3cret-pw" not in message


async def test_close_ends_a_running_consume(queues: Queues) -> None:
    queue = await queues.connected()
    await queue.enqueue(make_job(1))
    async with consuming(queue, prefetch=2) as deliveries:
        await queue.ack(await next_delivery(deliveries))  # the iterator runs, waiting for another job
        await queue.close()
        with anyio.fail_after(WAIT_S), pytest.raises(anyio.EndOfStream):
            await deliveries.receive()
