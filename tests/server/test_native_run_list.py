"""`GET /api/v1/runs`: the principal's runs, newest first, paged, filtered by `status` and `thread_id`; another
tenant's or user's runs never appear, whatever the filters. On SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from miniagent import Agent
from miniagent.testing import EchoModel

from ._native_support import Gate, auth, gated_agent, serving
from .conftest import ApiKeyFactory, AppFactory

pytestmark = pytest.mark.anyio

HELLO = {"role": "user", "content": "hi"}


async def listed(client: httpx.AsyncClient, key: str, **params: Any) -> list[str]:
    """The ids of every page of `GET /api/v1/runs` with `params`, checking the paging on the way."""
    ids: list[str] = []
    offset = 0
    while True:
        page = await client.get("/api/v1/runs", params={**params, "limit": 2, "offset": offset}, headers=auth(key))
        assert page.status_code == 200, page.text
        body = page.json()
        assert (body["limit"], body["offset"]) == (2, offset) and len(body["data"]) <= 2
        ids += [run["id"] for run in body["data"]]
        if not body["has_more"]:
            return ids
        offset += 2


@pytest.mark.parametrize("server_db", ["sqlite", "postgres"], indirect=True)
async def test_runs_are_listed_newest_first_paged_and_filtered(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    gate = Gate()
    app = make_app(agents=[Agent(EchoModel(), name="echo"), gated_agent(gate)])
    key = api_key(scopes=("chat", "threads"))
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url, headers=auth(key)) as client:
        thread = (await client.post("/api/v1/threads", json={})).json()["id"]
        created: list[str] = []
        for text in ("one", "two"):
            run = await client.post(f"/api/v1/threads/{thread}/messages", json={"content": text})
            assert run.status_code == 200, run.text
            created.append(run.json()["id"])
        other_thread = await client.post("/api/v1/runs", json={"prompt": "elsewhere"})
        created.append(other_thread.json()["id"])
        chat = await client.post("/v1/chat/completions", json={"model": "echo", "messages": [HELLO]})
        created.append(chat.json()["id"].removeprefix("chatcmpl-"))  # a run without a thread
        running = await client.post("/api/v1/runs", json={"prompt": "wait", "agent": "gated", "background": True})
        created.append(running.json()["id"])
        await gate.reached.wait()

        newest_first = created[::-1]
        assert await listed(client, key) == newest_first
        whole = (await client.get("/api/v1/runs")).json()
        assert whole["has_more"] is False and [r["id"] for r in whole["data"]] == newest_first
        assert [r["status"] for r in whole["data"]] == ["running", "succeeded", "succeeded", "succeeded", "succeeded"]
        assert whole["data"][1]["thread_id"] is None and whole["data"][1]["agent"] == "echo"
        assert whole["data"][0]["output"] is None and whole["data"][0]["messages"] is None

        assert await listed(client, key, status="running") == [created[-1]]
        assert await listed(client, key, status="succeeded") == newest_first[1:]
        assert await listed(client, key, status="failed") == []
        assert await listed(client, key, thread_id=thread) == [created[1], created[0]]
        assert await listed(client, key, thread_id=thread, status="running") == []
        assert await listed(client, key, thread_id="no-such-thread") == []
        for bad in ({"status": "done"}, {"limit": 0}, {"limit": 201}, {"offset": -1}, {"thread_id": "a b"}):
            refused = await client.get("/api/v1/runs", params=bad)
            assert refused.status_code == 422, bad
        gate.release.set()


@pytest.mark.parametrize("server_db", ["sqlite", "postgres"], indirect=True)
async def test_other_tenants_and_users_runs_never_appear(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    app = make_app(agents=[Agent(EchoModel(), name="echo")])
    principals = [("t1", "u1"), ("t1", "u2"), ("t2", "u1")]
    keys = {p: api_key(tenant=p[0], user=p[1], scopes=("chat", "threads")) for p in principals}
    runs: dict[tuple[str, str], list[str]] = {}
    threads: dict[tuple[str, str], str] = {}
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url) as client:
        for principal, key in keys.items():
            thread = (await client.post("/api/v1/threads", json={}, headers=auth(key))).json()["id"]
            threads[principal] = thread
            posted = await client.post(f"/api/v1/threads/{thread}/messages", json={"content": "x"}, headers=auth(key))
            chat = await client.post(
                "/v1/chat/completions",
                json={"model": "echo", "messages": [{"role": "user", "content": "x"}]},
                headers=auth(key),
            )
            runs[principal] = [chat.json()["id"].removeprefix("chatcmpl-"), posted.json()["id"]]
        for principal, key in keys.items():
            assert await listed(client, key) == runs[principal]
            assert await listed(client, key, status="succeeded") == runs[principal]
            for other, thread in threads.items():
                if other != principal:  # another's thread: no runs, and no 404 that would say it exists
                    assert await listed(client, key, thread_id=thread) == []
