"""Multi-tenancy: two tenants x two users, each with threads, branches, runs (one running), memories, feedback and a
profile. Every other principal tries to read, modify, branch, switch, regenerate, stream (SSE and WebSocket),
cancel, resume, delete and rate each one's objects by id (and by guessed ids): 404 every time, never listed (threads,
runs with any filter), nothing of the victim's in the answer, and the victim's data is unchanged afterwards. On
SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from miniagent import Agent
from miniagent.embeddings import HashEmbedder
from miniagent.memory import LongTermMemory
from miniagent.settings import Settings
from miniagent.store import MemoryStore, SQLStore
from miniagent.testing import EchoModel

from ._native_support import Gate, auth, gated_agent, serving, with_ws
from .conftest import ApiKeyFactory, AppFactory

pytestmark = pytest.mark.anyio

PRINCIPALS = [("t1", "u1"), ("t1", "u2"), ("t2", "u1"), ("t2", "u2")]


@dataclass
class Owned:
    """One principal's objects."""

    tenant: str
    user: str
    key: str
    marker: str
    thread: str = ""
    user_message: str = ""
    answer: str = ""
    run: str = ""
    memory: str = ""
    running_run: str = ""


async def snapshot(client: httpx.AsyncClient, owned: Owned) -> dict[str, Any]:
    """Everything the owner sees of their objects."""
    h = auth(owned.key)
    parts = {
        "thread": f"/api/v1/threads/{owned.thread}",
        "branches": f"/api/v1/threads/{owned.thread}/branches",
        "feedback": f"/api/v1/threads/{owned.thread}/feedback",
        "run": f"/api/v1/runs/{owned.run}",
        "memories": "/api/v1/me/memories",
        "profile": "/api/v1/me/profile",
        "threads": "/api/v1/threads",
        "runs": "/api/v1/runs",
    }
    out = {}
    for name, path in parts.items():
        response = await client.get(path, headers=h)
        assert response.status_code == 200, (name, response.text)
        out[name] = response.json()
    return out


def attacks(victim: Owned, mine: Owned) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(method, path, json body) of every attempt on the victim's objects."""
    t, m, a, r = victim.thread, victim.user_message, victim.answer, victim.run
    return [
        ("GET", f"/api/v1/threads/{t}", None),
        ("GET", f"/api/v1/threads/{t}/messages", None),
        ("GET", f"/api/v1/threads/{mine.thread}/messages?leaf_id={a}", None),
        ("DELETE", f"/api/v1/threads/{t}", None),
        ("POST", f"/api/v1/threads/{t}/messages", {"content": "hijack"}),
        ("POST", f"/api/v1/threads/{t}/messages", {"content": "hijack", "background": True}),
        ("PUT", f"/api/v1/threads/{t}/messages/{m}", {"content": "edited"}),
        ("PUT", f"/api/v1/threads/{mine.thread}/messages/{m}", {"content": "edited"}),
        ("POST", f"/api/v1/threads/{t}/messages/{a}/regenerate", {}),
        ("POST", f"/api/v1/threads/{mine.thread}/messages/{a}/regenerate", {}),
        ("GET", f"/api/v1/threads/{t}/branches", None),
        ("POST", f"/api/v1/threads/{t}/branches/{a}/switch", None),
        ("POST", f"/api/v1/threads/{mine.thread}/branches/{a}/switch", None),
        ("GET", f"/api/v1/threads/{t}/feedback", None),
        ("PUT", f"/api/v1/messages/{a}/feedback", {"rating": -1, "comment": "spam"}),
        ("GET", f"/api/v1/messages/{a}/feedback", None),
        ("DELETE", f"/api/v1/messages/{a}/feedback", None),
        ("GET", f"/api/v1/runs/{r}", None),
        ("POST", f"/api/v1/runs/{r}/cancel", None),
        ("POST", f"/api/v1/runs/{victim.running_run or r}/cancel", None),
        ("POST", f"/api/v1/runs/{r}/resume", {}),
        ("GET", f"/api/v1/runs/{r}/events", None),
        ("POST", "/api/v1/runs", {"prompt": "hijack", "thread_id": t}),
        ("GET", f"/api/v1/me/memories/{victim.memory}", None),
        ("PATCH", f"/api/v1/me/memories/{victim.memory}", {"text": "The user is evil."}),
        ("DELETE", f"/api/v1/me/memories/{victim.memory}", None),
    ]


async def test_no_principal_can_reach_another_ones_objects(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    gate = Gate()
    echo = Agent(EchoModel(), name="echo", long_term_memory=LongTermMemory(HashEmbedder(), extract=False))
    app = with_ws(make_app(agents=[echo, gated_agent(gate)]))
    owners = [
        Owned(t, u, api_key(tenant=t, user=u, scopes=("threads", "chat")), f"secret-{t}-{u}-{uuid.uuid4().hex[:6]}")
        for t, u in PRINCIPALS
    ]
    async with serving(app) as served, httpx.AsyncClient(base_url=served.url) as client:
        store = await SQLStore.open(server_settings.database_url, settings=server_settings)
        try:
            for owned in owners:
                h = auth(owned.key)
                thread = (await client.post("/api/v1/threads", json={"title": owned.marker}, headers=h)).json()
                owned.thread = thread["id"]
                run = await client.post(
                    f"/api/v1/threads/{owned.thread}/messages", json={"content": owned.marker}, headers=h
                )
                assert run.status_code == 200, run.text
                owned.run = run.json()["id"]
                messages = run.json()["messages"]
                owned.user_message = next(m["id"] for m in messages if m["role"] == "user")
                owned.answer = next(m["id"] for m in messages if m["role"] == "assistant")
                edited = await client.put(
                    f"/api/v1/threads/{owned.thread}/messages/{owned.user_message}",
                    json={"content": owned.marker + " v2"},
                    headers=h,
                )
                assert edited.status_code == 200  # a second branch
                rated = await client.put(
                    f"/api/v1/messages/{owned.answer}/feedback", json={"rating": 1, "comment": owned.marker}, headers=h
                )
                assert rated.status_code == 200
                profile = await client.put(
                    "/api/v1/me/profile", json={"preferences": {"tone": owned.marker}}, headers=h
                )
                assert profile.status_code == 200
                memories = MemoryStore(store, HashEmbedder())
                (memory,) = await memories.add(
                    [f"The user's code is {owned.marker}."], user_id=owned.user, tenant_id=owned.tenant
                )
                owned.memory = memory.id
            # One run of the last principal stays running (blocked in its tool) during the attacks.
            last = owners[-1]
            running = await client.post(
                "/api/v1/runs", json={"prompt": "wait", "agent": "gated", "background": True}, headers=auth(last.key)
            )
            last.running_run = running.json()["id"]
            await gate.reached.wait()
        finally:
            await store.close()

        before = {o.marker: await snapshot(client, o) for o in owners}
        attempts = 0
        for attacker in owners:
            h = auth(attacker.key)
            for victim in owners:
                if victim is attacker:
                    continue
                for method, path, body in attacks(victim, attacker):
                    response = await client.request(method, path, json=body, headers=h)
                    attempts += 1
                    assert response.status_code == 404, (attacker.marker, method, path, response.text)
                    assert victim.marker not in response.text
                    assert victim.user not in response.json()["error"]["message"] or victim.user == attacker.user
                listed = (await client.get("/api/v1/threads", headers=h)).json()["data"]
                assert victim.thread not in {t["id"] for t in listed}
                for query in ("", f"?thread_id={victim.thread}", "?status=running", "?status=succeeded"):
                    runs = (await client.get(f"/api/v1/runs{query}", headers=h)).json()["data"]
                    assert not {victim.run, victim.running_run} & {r["id"] for r in runs}, query
                memories = (await client.get("/api/v1/me/memories", headers=h)).json()["data"]
                assert victim.memory not in {m["id"] for m in memories}
            # Guessed ids: nothing there either.
            guess = uuid.uuid4().hex
            for path in (
                f"/api/v1/threads/{guess}",
                f"/api/v1/runs/{guess}",
                f"/api/v1/runs/{guess}/events",
                f"/api/v1/messages/{guess}/feedback",
                f"/api/v1/me/memories/{guess}",
            ):
                assert (await client.get(path, headers=h)).status_code == 404
            # WebSocket: subscribe to, cancel, and post into the others' runs and threads.
            async with connect(served.url.replace("http://", "ws://") + "/api/v1/ws", additional_headers=h) as ws:
                assert json.loads(await ws.recv())["type"] == "ready"
                for victim in owners:
                    if victim is attacker:
                        continue
                    for message, code in (
                        ({"type": "subscribe", "run_id": victim.run}, "run_not_found"),
                        ({"type": "subscribe", "run_id": victim.running_run or victim.run}, "run_not_found"),
                        ({"type": "cancel", "run_id": victim.running_run or victim.run}, "run_not_found"),
                        ({"type": "message", "content": "hijack", "thread_id": victim.thread}, "thread_not_found"),
                    ):
                        await ws.send(json.dumps(message))
                        answer = json.loads(await ws.recv())
                        assert answer["type"] == "error" and answer["code"] == code and answer["status"] == 404
                        attempts += 1
        assert attempts > 300
        after = {o.marker: await snapshot(client, o) for o in owners}
        assert after == before  # nothing changed: not a message, a branch, a rating, a memory, a profile
        running_state = await client.get(f"/api/v1/runs/{last.running_run}", headers=auth(last.key))
        assert running_state.json()["status"] == "running"  # nobody else could cancel it
        gate.release.set()


@pytest.mark.parametrize("server_db", ["postgres"], indirect=True)
async def test_tenancy_on_postgres(make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings) -> None:
    await test_no_principal_can_reach_another_ones_objects(make_app, api_key, server_settings)
