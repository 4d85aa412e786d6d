"""Queued runs in the store, on SQLite and PostgreSQL: concurrent first writes of a new tenant and user, atomic
claims (two workers never both run a run), and a lease renewal racing the run's own end."""

from __future__ import annotations

import asyncio

import pytest

from miniagent.store import SQLStore
from miniagent.store._queued import LeaseLost
from miniagent.usage import Usage

pytestmark = pytest.mark.anyio


async def test_concurrent_first_runs_of_a_new_tenant_and_user_all_enqueue(store: SQLStore) -> None:
    results = await asyncio.gather(
        *(
            store.enqueue_run(agent_name="a", prompt=f"p{i}", user_id="new-user", tenant_id="new-tenant")
            for i in range(8)
        )
    )
    assert len({record.id for record, created in results if created}) == 8
    assert all(record.status == "queued" and record.via_queue for record, _ in results)


async def test_only_one_of_two_workers_claims_a_queued_run(store: SQLStore) -> None:
    record, _ = await store.enqueue_run(agent_name="a", prompt="hi", user_id="u")
    claims = await asyncio.gather(
        *(store.claim_run(record.id, tenant_id=store.tenant_id, worker=f"w{i}", lease_s=30) for i in range(4))
    )
    kinds = sorted(claim.kind for claim in claims)
    assert kinds == ["busy", "busy", "busy", "start"]
    started = next(c for c in claims if c.kind == "start")
    assert started.prompt == "hi" and started.record is not None and started.record.attempts == 1


async def test_a_renewal_after_the_run_ended_is_not_a_lost_lease(store: SQLStore) -> None:
    record, _ = await store.enqueue_run(agent_name="a", prompt="hi", user_id="u")
    await store.claim_run(record.id, tenant_id=store.tenant_id, worker="w1", lease_s=30)
    assert await store.renew_lease(record.id, worker="w1", lease_s=30) is False
    await store.finish_run(record.id, status="succeeded", steps=1, usage=Usage())
    assert await store.renew_lease(record.id, worker="w1", lease_s=30) is False  # its own run, just ended
    with pytest.raises(LeaseLost, match="another worker"):
        await store.renew_lease(record.id, worker="w2", lease_s=30)


async def test_a_cancel_request_reaches_the_renewal_and_a_queued_run_is_cancelled_at_once(store: SQLStore) -> None:
    running, _ = await store.enqueue_run(agent_name="a", prompt="one", user_id="u")
    await store.claim_run(running.id, tenant_id=store.tenant_id, worker="w1", lease_s=30)
    assert (await store.request_cancel(running.id)).status == "running"
    assert await store.renew_lease(running.id, worker="w1", lease_s=30) is True
    queued, _ = await store.enqueue_run(agent_name="a", prompt="two", user_id="u")
    cancelled = await store.request_cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.cancel_requested
    claim = await store.claim_run(queued.id, tenant_id=store.tenant_id, worker="w1", lease_s=30)
    assert claim.kind == "done"
