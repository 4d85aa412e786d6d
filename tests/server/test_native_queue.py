"""Background runs through the job queue, seen from the API: queued on `202`, executed by a worker of another
process (cancel through the store, events followed from the store), an `Idempotency-Key` that returns the same run,
and an unreachable queue that refuses background runs clearly while synchronous ones keep working."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest

from miniagent.queue import open_queue
from miniagent.settings import Settings
from miniagent.store import SQLStore
from miniagent.worker import Worker

from ._native_support import Gate, auth, gated_agent, read_sse, serving
from .conftest import ApiKeyFactory, AppFactory

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def remote_worker(settings: Settings, gate: Gate) -> AsyncIterator[Worker]:
    """A worker with its own store connection, queue consumer and run manager: another process, as far as the
    server can tell (it shares only the database and the queue file)."""
    store = await SQLStore.open(settings.database_url, settings=settings)
    queue = open_queue(f"sqlite:///{settings.data_dir}/queue.db", lease_s=3.0)
    await queue.connect()
    worker = Worker(queue, store, {"gated": gated_agent(gate)}, concurrency=2, lease_s=3.0)
    worker.start()
    try:
        yield worker
    finally:
        await worker.aclose(0)
        await queue.close()
        await store.close()


async def _wait_status(client: httpx.AsyncClient, run_id: str, *statuses: str) -> dict[str, object]:
    with anyio.fail_after(30):  # a hang guard, not a timing assertion
        while True:
            body: dict[str, object] = (await client.get(f"/api/v1/runs/{run_id}")).json()
            if body["status"] in statuses:
                return body
            await anyio.sleep(0.05)


async def test_a_run_executed_by_another_worker_streams_from_the_store_and_cancels_through_it(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    settings = server_settings.model_copy(update={"server_inprocess_worker": False})
    key = api_key(scopes=("chat", "threads"))
    gate = Gate()
    app = make_app(settings, agents=[gated_agent(Gate())])
    async with (
        serving(app) as served,
        httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client,
        remote_worker(settings, gate) as worker,
    ):
        finished = (await client.post("/api/v1/runs", json={"prompt": "one", "background": True})).json()
        assert finished["status"] == "queued"
        gate.release.set()
        await _wait_status(client, finished["id"], "succeeded")
        async with client.stream("GET", f"/api/v1/runs/{finished['id']}/events") as response:
            events = await read_sse(response)
        assert events[0].event == "run-started" and events[-1].event == "run-finished"
        assert [e.id for e in events] == list(range(1, len(events) + 1))

        gate.release = anyio.Event()
        gate.reached = anyio.Event()
        blocked = (await client.post("/api/v1/runs", json={"prompt": "two", "background": True})).json()
        await gate.reached.wait()  # inside the tool, in the other worker
        busy = await client.post(f"/api/v1/threads/{blocked['thread_id']}/messages", json={"content": "more"})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "thread_busy"
        cancelled = await client.post(f"/api/v1/runs/{blocked['id']}/cancel")
        assert cancelled.status_code in (200, 202), cancelled.text
        body = await _wait_status(client, blocked["id"], "cancelled")
        assert body["finished_at"] is not None
        assert not gate.release.is_set()  # the tool never got past its gate: the worker cancelled it
        with anyio.fail_after(30):  # the worker acknowledges the job once it saw the end committed
            while worker.stats.completed < 2:  # noqa: ASYNC110  # the worker's counters have no event
                await anyio.sleep(0.02)
        assert worker.stats.completed == 2 and worker.stats.dead_lettered == 0


async def test_the_same_idempotency_key_returns_the_same_run(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    key = api_key(scopes=("chat",))
    app = make_app()
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        headers = {"Idempotency-Key": "order-42"}
        first = await client.post("/api/v1/runs", json={"prompt": "hi", "background": True}, headers=headers)
        second = await client.post("/api/v1/runs", json={"prompt": "hi", "background": True}, headers=headers)
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
        other = await client.post(
            "/api/v1/runs", json={"prompt": "hi", "background": True}, headers={"Idempotency-Key": "order-43"}
        )
        assert other.json()["id"] != first.json()["id"]
        await _wait_status(client, first.json()["id"], "succeeded")
        await _wait_status(client, other.json()["id"], "succeeded")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_queue_refuses_background_runs_and_keeps_synchronous_ones(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    url = f"redis://:s3cret-pass@127.0.0.1:{_closed_port()}/0"
    settings = server_settings.model_copy(update={"queue_url": url})
    key = api_key(scopes=("chat",))
    app = make_app(settings)
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        inline = await client.post("/api/v1/runs", json={"prompt": "hi"})
        assert inline.status_code == 200 and inline.json()["status"] == "succeeded"
        refused = await client.post("/api/v1/runs", json={"prompt": "hi", "background": True})
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "queue_unavailable" and "127.0.0.1" in error["message"]
        assert "s3cret-pass" not in refused.text
        assert refused.headers["Retry-After"] == "5"
        ready = await client.get("/readyz")
        assert "s3cret-pass" not in ready.text
        checks = {c["name"]: c for c in ready.json()["checks"]}
        assert checks["queue"]["status"] == "fail" and "background runs are refused" in checks["queue"]["detail"]
