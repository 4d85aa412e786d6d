"""The native API's resources in process (the app's lifespan, httpx over ASGI): threads, messages and branches,
feedback, memories, profile, usage, and its answers to bad input and missing scopes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from miniagent import Agent
from miniagent.embeddings import HashEmbedder
from miniagent.memory import LongTermMemory
from miniagent.settings import Settings
from miniagent.store import MemoryStore, SQLStore
from miniagent.testing import EchoModel

from ._native_support import auth
from .conftest import ApiKeyFactory, AppFactory

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def client_of(app: FastAPI, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", headers=auth(key)) as c,
    ):
        yield c


def memory_agent() -> Agent[None, str]:
    return Agent(EchoModel(), name="echo", long_term_memory=LongTermMemory(HashEmbedder(), extract=False))


async def test_threads_are_created_listed_in_pages_read_and_deleted(
    make_app: AppFactory, api_key: ApiKeyFactory
) -> None:
    async with client_of(make_app(), api_key(scopes=("threads",))) as client:
        ids = []
        for i in range(3):
            created = await client.post("/api/v1/threads", json={"title": f"t{i}"})
            assert created.status_code == 201
            assert created.json()["title"] == f"t{i}" and created.json()["leaf_id"] is None
            ids.append(created.json()["id"])
        untitled = await client.post("/api/v1/threads")
        assert untitled.status_code == 201 and untitled.json()["title"] is None
        ids.append(untitled.json()["id"])
        page = (await client.get("/api/v1/threads?limit=3")).json()
        assert len(page["data"]) == 3 and page["has_more"] is True
        rest = (await client.get("/api/v1/threads?limit=3&offset=3")).json()
        assert len(rest["data"]) == 1 and rest["has_more"] is False
        assert {t["id"] for t in page["data"] + rest["data"]} == set(ids)
        detail = (await client.get(f"/api/v1/threads/{ids[0]}")).json()
        assert detail["messages"] == [] and detail["title"] == "t0"
        assert (await client.delete(f"/api/v1/threads/{ids[0]}")).status_code == 204
        gone = await client.get(f"/api/v1/threads/{ids[0]}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "thread_not_found"


async def test_messages_edit_regenerate_branches_and_switch(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    async with client_of(make_app(), api_key(scopes=("threads",))) as client:
        thread = (await client.post("/api/v1/threads")).json()["id"]
        first = await client.post(f"/api/v1/threads/{thread}/messages", json={"content": "hello"})
        assert first.status_code == 200
        run = first.json()
        assert run["status"] == "succeeded" and run["output"] == "echo: hello" and run["agent"] == "echo"
        assert [(m["role"], m["text"]) for m in run["messages"]] == [("user", "hello"), ("assistant", "echo: hello")]
        user_id, answer_id = (m["id"] for m in run["messages"])
        # Edit: a new branch with the edited message and a new answer.
        edited = await client.put(f"/api/v1/threads/{thread}/messages/{user_id}", json={"content": "bonjour"})
        assert edited.status_code == 200, edited.text
        assert [m["text"] for m in edited.json()["messages"]] == ["bonjour", "echo: bonjour"]
        detail = (await client.get(f"/api/v1/threads/{thread}")).json()
        assert [m["text"] for m in detail["messages"]] == ["bonjour", "echo: bonjour"]
        # Regenerate the edited branch's answer: a third branch.
        regen = await client.post(f"/api/v1/threads/{thread}/messages/{detail['messages'][1]['id']}/regenerate")
        assert regen.status_code == 200 and regen.json()["output"] == "echo: bonjour"
        branches = (await client.get(f"/api/v1/threads/{thread}/branches")).json()["data"]
        assert len(branches) == 3 and sum(b["current"] for b in branches) == 1
        assert {b["preview"] for b in branches} == {"hello", "bonjour"}
        # Switch back to the first answer.
        switched = await client.post(f"/api/v1/threads/{thread}/branches/{answer_id}/switch")
        assert switched.status_code == 200
        assert [m["text"] for m in switched.json()["messages"]] == ["hello", "echo: hello"]
        listed = (await client.get(f"/api/v1/threads/{thread}/messages")).json()
        assert [m["id"] for m in listed] == [user_id, answer_id]
        other = branches[-1]["leaf_id"]
        by_leaf = (await client.get(f"/api/v1/threads/{thread}/messages?leaf_id={other}")).json()
        assert by_leaf[-1]["id"] == other
        # Only user messages are edited, only answers regenerated.
        not_user = await client.put(f"/api/v1/threads/{thread}/messages/{answer_id}", json={"content": "x"})
        assert not_user.status_code == 422 and not_user.json()["error"]["code"] == "not_editable"
        not_answer = await client.post(f"/api/v1/threads/{thread}/messages/{user_id}/regenerate")
        assert not_answer.status_code == 422 and not_answer.json()["error"]["code"] == "not_regenerable"


async def test_background_message_returns_202_and_the_run(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    async with client_of(make_app(), api_key(scopes=("threads",))) as client:
        thread = (await client.post("/api/v1/threads")).json()["id"]
        accepted = await client.post(f"/api/v1/threads/{thread}/messages", json={"content": "hi", "background": True})
        assert accepted.status_code == 202
        run_id = accepted.json()["id"]
        assert accepted.json()["thread_id"] == thread
        # The run exists in the store as soon as 202 is answered (running or, with this instant model, done).
        assert (await client.get(f"/api/v1/runs/{run_id}")).status_code == 200


async def test_runs_start_new_threads_and_continue_them(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    async with client_of(make_app(), api_key(scopes=("chat",))) as client:
        first = (await client.post("/api/v1/runs", json={"prompt": "one"})).json()
        assert first["thread_id"] and first["output"] == "echo: one"
        second = (await client.post("/api/v1/runs", json={"prompt": "two", "thread_id": first["thread_id"]})).json()
        assert second["thread_id"] == first["thread_id"] and second["steps"] == 1
        status = (await client.get(f"/api/v1/runs/{second['id']}")).json()
        assert status["status"] == "succeeded" and status["usage"]["requests"] == 1
        assert status["finished_at"] is not None and status["output"] is None
        unknown = await client.post("/api/v1/runs", json={"prompt": "x", "agent": "nope"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "agent_not_found"
        finished = await client.post(f"/api/v1/runs/{first['id']}/cancel")
        assert finished.status_code == 409 and finished.json()["error"]["code"] == "run_not_running"
        not_resumable = await client.post(f"/api/v1/runs/{first['id']}/resume")
        assert not_resumable.status_code == 409


async def test_feedback_is_set_changed_listed_and_removed(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    async with client_of(make_app(), api_key(scopes=("threads",))) as client:
        thread = (await client.post("/api/v1/threads")).json()["id"]
        run = (await client.post(f"/api/v1/threads/{thread}/messages", json={"content": "hi"})).json()
        answer = run["messages"][1]["id"]
        assert (await client.get(f"/api/v1/messages/{answer}/feedback")).status_code == 404
        up = await client.put(f"/api/v1/messages/{answer}/feedback", json={"rating": 1})
        assert up.status_code == 200 and up.json()["rating"] == 1 and up.json()["comment"] is None
        down = await client.put(f"/api/v1/messages/{answer}/feedback", json={"rating": -1, "comment": "wrong"})
        assert down.json()["id"] == up.json()["id"]  # one rating per message, replaced
        assert (await client.get(f"/api/v1/messages/{answer}/feedback")).json()["comment"] == "wrong"
        listed = (await client.get(f"/api/v1/threads/{thread}/feedback")).json()["data"]
        assert [(f["message_id"], f["rating"], f["comment"]) for f in listed] == [(answer, -1, "wrong")]
        bad = await client.put(f"/api/v1/messages/{answer}/feedback", json={"rating": 5})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
        assert (await client.delete(f"/api/v1/messages/{answer}/feedback")).status_code == 204
        assert (await client.get(f"/api/v1/threads/{thread}/feedback")).json()["data"] == []
        # Deleting the thread deletes its feedback with it.
        await client.put(f"/api/v1/messages/{answer}/feedback", json={"rating": 1})
        assert (await client.delete(f"/api/v1/threads/{thread}")).status_code == 204
        assert (await client.get(f"/api/v1/messages/{answer}/feedback")).status_code == 404


async def test_memories_profile_and_usage_of_the_current_user(
    make_app: AppFactory, api_key: ApiKeyFactory, server_settings: Settings
) -> None:
    key = api_key(tenant="t1", user="u1", scopes=("threads",))
    store = await SQLStore.open(server_settings.database_url, settings=server_settings)
    try:
        memories = MemoryStore(store, HashEmbedder())
        added = await memories.add(["The user lives in Lyon.", "The user likes tea."], user_id="u1", tenant_id="t1")
        other = MemoryStore(store, HashEmbedder(dimensions=64))  # an embedder no served agent has
        (orphan,) = await other.add(["The user plays chess."], user_id="u1", tenant_id="t1")
    finally:
        await store.close()
    async with client_of(make_app(agents=[memory_agent()]), key) as client:
        listed = (await client.get("/api/v1/me/memories")).json()["data"]
        assert [m["text"] for m in listed] == [
            "The user lives in Lyon.",
            "The user likes tea.",
            "The user plays chess.",
        ]
        one = await client.get(f"/api/v1/me/memories/{added[0].id}")
        assert one.json()["text"] == "The user lives in Lyon."
        edited = await client.patch(f"/api/v1/me/memories/{added[0].id}", json={"text": "The user lives in Paris."})
        assert edited.status_code == 200 and edited.json()["text"] == "The user lives in Paris."
        # A run of the agent with long-term memory recalls through the edited vector (no stale row breaks it).
        run = (await client.post("/api/v1/runs", json={"prompt": "Where does the user live, Paris?"})).json()
        assert run["status"] == "succeeded"
        assert (await client.delete(f"/api/v1/me/memories/{added[1].id}")).status_code == 204
        stuck = await client.patch(f"/api/v1/me/memories/{orphan.id}", json={"text": "x"})
        assert stuck.status_code == 409 and stuck.json()["error"]["code"] == "memory_embedder_unavailable"
        left = [m["text"] for m in (await client.get("/api/v1/me/memories")).json()["data"]]
        assert left == ["The user lives in Paris.", "The user plays chess."]

        empty = (await client.get("/api/v1/me/profile")).json()
        assert empty == {"preferences": {}, "instructions": None, "updated_at": None}
        put = await client.put(
            "/api/v1/me/profile", json={"preferences": {"tone": "brief"}, "instructions": "Be kind."}
        )
        assert put.status_code == 200 and put.json()["preferences"] == {"tone": "brief"}
        assert (await client.get("/api/v1/me/profile")).json()["instructions"] == "Be kind."
        assert (await client.delete("/api/v1/me/profile")).status_code == 204
        assert (await client.get("/api/v1/me/profile")).json()["updated_at"] is None

        report = (await client.get("/api/v1/me/usage?group_by=model")).json()
        assert report["group_by"] == ["model"]
        assert [(r["model"], r["requests"]) for r in report["rows"]] == [("test", 1)]
        assert report["total"]["requests"] == 1
        by_day = (await client.get("/api/v1/me/usage", params={"group_by": ["day", "thread"]})).json()
        assert by_day["rows"][0]["thread_id"] == run["thread_id"] and by_day["rows"][0]["day"] is not None
        none = (await client.get("/api/v1/me/usage?since=2000-01-01&until=2000-01-02")).json()
        assert none["rows"] == [] and none["total"]["requests"] == 0
        swapped = await client.get("/api/v1/me/usage?since=2000-01-02&until=2000-01-01")
        assert swapped.status_code == 422
        assert (await client.get("/api/v1/me/usage?group_by=user")).status_code == 422


async def test_bad_input_is_a_clear_4xx(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    async with client_of(make_app(), api_key(scopes=("threads", "chat"))) as client:
        thread = (await client.post("/api/v1/threads")).json()["id"]
        cases = [
            ("POST", f"/api/v1/threads/{thread}/messages", {"content": ""}),
            ("POST", f"/api/v1/threads/{thread}/messages", {"content": "x", "surprise": 1}),
            ("POST", f"/api/v1/threads/{thread}/messages", {"content": 3}),
            ("POST", "/api/v1/threads", {"title": "x" * 201}),
            ("POST", "/api/v1/runs", {"prompt": "x", "thread_id": "bad id!"}),
            ("PUT", "/api/v1/me/profile", {"preferences": {"tone": 1}}),
            ("GET", "/api/v1/threads?limit=0", None),
            ("GET", "/api/v1/threads?offset=-1", None),
            ("GET", "/api/v1/threads/bad%00id", None),
            ("GET", "/api/v1/runs/a%20b", None),
            ("POST", "/api/v1/threads", {"title": "nul\u0000"}),
            ("PUT", "/api/v1/me/profile", {"preferences": {"to\u0000ne": "x"}}),
            ("GET", f"/api/v1/threads/{thread}/messages?leaf_id=%00", None),
            ("PUT", "/api/v1/me/profile", {"preferences": {"  ": "x"}}),  # refused by the store: still a 422
            ("GET", "/api/v1/me/usage?until=0", None),  # a day is YYYY-MM-DD, not a Unix time
        ]
        for method, path, body in cases:
            response = await client.request(method, path, json=body)
            assert response.status_code == 422, (path, body, response.text)
            assert response.json()["error"]["code"] == "invalid_request"
        run = (await client.post("/api/v1/runs", json={"prompt": "x"})).json()
        bad_id = await client.get(f"/api/v1/runs/{run['id']}/events", headers={"Last-Event-ID": "abc"})
        assert bad_id.status_code == 422 and "Last-Event-ID" in bad_id.json()["error"]["message"]
        huge = await client.get(f"/api/v1/runs/{run['id']}/events", headers={"Last-Event-ID": "9" * 19})
        assert huge.status_code == 422
        not_json = await client.post(
            "/api/v1/threads", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert not_json.status_code == 422


async def test_scopes(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    app = make_app()
    async with client_of(app, api_key(scopes=("chat",))) as chat:
        denied = await chat.get("/api/v1/threads")
        assert denied.status_code == 403 and denied.json()["error"]["required_scope"] == "threads"
        assert (await chat.post("/api/v1/runs", json={"prompt": "x"})).status_code == 200
    async with client_of(app, api_key(scopes=("threads",), user="u9")) as threads:
        assert (await threads.post("/api/v1/runs", json={"prompt": "x"})).status_code == 200
    async with client_of(app, api_key(scopes=("reports",), user="u8")) as other:
        assert (await other.post("/api/v1/runs", json={"prompt": "x"})).status_code == 403
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as anonymous:
        async with app.router.lifespan_context(app):
            response = await anonymous.get("/api/v1/threads")
        assert response.status_code == 401


async def test_openapi_documents_every_native_route(make_app: AppFactory, api_key: ApiKeyFactory) -> None:
    async with client_of(make_app(), api_key(scopes=("threads",))) as client:
        spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path, method in [
        ("/api/v1/threads", "post"),
        ("/api/v1/threads/{thread_id}/messages/{message_id}", "put"),
        ("/api/v1/threads/{thread_id}/branches/{leaf_id}/switch", "post"),
        ("/api/v1/runs/{run_id}/cancel", "post"),
        ("/api/v1/runs/{run_id}/events", "get"),
        ("/api/v1/messages/{message_id}/feedback", "put"),
        ("/api/v1/me/memories/{memory_id}", "patch"),
        ("/api/v1/me/usage", "get"),
    ]:
        operation = paths[path][method]
        assert "200" in operation["responses"] or "201" in operation["responses"] or "204" in operation["responses"]
    assert "text/event-stream" in paths["/api/v1/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]
    assert "404" in paths["/api/v1/runs/{run_id}"]["get"]["responses"]
