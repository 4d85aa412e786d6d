from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from miniagent import Agent
from miniagent.context import correlation_scope
from miniagent.errors import (
    AllModelsFailed,
    CircuitOpen,
    ModelAuthError,
    ModelOverloaded,
    RunTimeout,
    UsageLimitExceeded,
    UserError,
)
from miniagent.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart, prompt_part
from miniagent.store import DeadLetterNotFound, ErrorLink, SQLStore, error_chain, replay_dead_letter
from miniagent.testing import AgentInfo, FunctionModel, ScriptedModel
from miniagent.usage import UsageLimits

pytestmark = pytest.mark.anyio


def _auth_error(messages: list[ModelMessage], info: AgentInfo) -> str:
    raise ModelAuthError("the key was rejected", model_name="m", status_code=401, provider="openai", request_id="r-1")


def _texts(messages: list[ModelMessage]) -> list[str]:
    out = []
    for message in messages:
        for part in message.parts:
            if isinstance(part, UserPromptPart | TextPart):
                out.append(part.content)
    return out


@pytest.fixture
async def clocked(store_url: str) -> AsyncIterator[tuple[SQLStore, list[dt.datetime]]]:
    clock = [dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)]
    opened = await SQLStore.open(store_url, migrate=store_url.startswith("sqlite"), now=lambda: clock[0])
    try:
        yield opened, clock
    finally:
        await opened.close()


async def test_add_list_get_mark_and_purge(clocked: tuple[SQLStore, list[dt.datetime]]) -> None:
    store, clock = clocked
    first = await store.add_dead_letter(
        run_id="run-1", messages=[ModelRequest([prompt_part("one")])], error="broker gave up", user_id="alice"
    )
    clock[0] += dt.timedelta(days=10)
    second = await store.add_dead_letter(
        run_id="run-2",
        messages=[ModelRequest([prompt_part("two")])],
        error=ModelOverloaded("busy", model_name="m", status_code=503),
        user_id="bob",
        correlation_id="req-2",
        meta={"queue": "default"},
    )
    listed = await store.list_dead_letters()
    assert [d.id for d in listed] == [second.id, first.id]  # newest first
    assert [d.id for d in await store.list_dead_letters(limit=1)] == [second.id]
    assert [d.id for d in await store.list_dead_letters(before=second.created_at)] == [first.id]
    assert [d.id for d in await store.list_dead_letters(user_id="alice")] == [first.id]

    got = await store.get_dead_letter(second.id)
    assert got == second
    assert got.prompt == "two" and got.correlation_id == "req-2" and got.meta == {"queue": "default"}
    assert got.error == "ModelOverloaded: busy"
    assert got.error_chain == [
        ErrorLink("ModelOverloaded", "busy", relation="error", retryable=True, status_code=503, model_name="m")
    ]
    assert (await store.get_dead_letter(first.id)).error_chain == [ErrorLink("Error", "broker gave up")]

    marked = await store.mark_replayed(first.id, "run-9")
    assert marked.replayed_run_id == "run-9" and marked.replayed_at == clock[0]

    assert await store.purge_dead_letters(older_than_days=5) == 1  # only the first is older than 5 days
    with pytest.raises(DeadLetterNotFound, match="dlq list"):
        await store.get_dead_letter(first.id)
    assert await store.purge_dead_letters(ids=[second.id, "unknown"]) == 1
    assert await store.list_dead_letters() == []


async def test_dead_letters_are_per_tenant(store: SQLStore) -> None:
    mine = await store.add_dead_letter(run_id="r", messages=[], error="x")
    theirs = await store.add_dead_letter(run_id="r2", messages=[], error="y", tenant_id="acme")
    assert [d.id for d in await store.list_dead_letters()] == [mine.id]
    assert [d.id for d in await store.list_dead_letters(tenant_id="acme")] == [theirs.id]
    with pytest.raises(DeadLetterNotFound):
        await store.get_dead_letter(theirs.id)
    with pytest.raises(DeadLetterNotFound):
        await store.mark_replayed(theirs.id, "run")
    assert await store.purge_dead_letters(ids=[theirs.id]) == 0
    assert await store.purge_dead_letters(older_than_days=0, tenant_id="acme") == 1
    assert [d.id for d in await store.list_dead_letters()] == [mine.id]


async def test_bad_input_is_a_clear_error(store: SQLStore) -> None:
    with pytest.raises(UserError, match="limit"):
        await store.list_dead_letters(limit=0)
    with pytest.raises(UserError, match="aware"):
        await store.list_dead_letters(before=dt.datetime(2025, 1, 1))
    with pytest.raises(UserError, match="exactly one"):
        await store.purge_dead_letters()
    with pytest.raises(UserError, match="exactly one"):
        await store.purge_dead_letters(older_than_days=1, ids=["a"])
    with pytest.raises(UserError, match=">= 0"):
        await store.purge_dead_letters(older_than_days=-1)
    with pytest.raises(UserError, match="Invalid dead letter id"):
        await store.get_dead_letter("")
    with pytest.raises(UserError, match="run's id"):
        await store.add_dead_letter(run_id="", messages=[], error="x")


def test_error_chain_follows_causes_and_fallback_failures() -> None:
    auth = ModelAuthError("bad key", model_name="a", status_code=401)
    breaker = CircuitOpen("open", model_name="b", upstream="b-endpoint", retry_in_s=3.0)
    try:
        try:
            raise ConnectionError("reset by peer")
        except ConnectionError as exc:
            raise ModelOverloaded("down", model_name="c", status_code=503) from exc
    except ModelOverloaded as exc:
        overloaded = exc
    chain = error_chain(
        AllModelsFailed(
            "every model failed", model_name="chain", failures=[("a", auth), ("b", breaker), ("c", overloaded)]
        )
    )
    assert [(link.relation, link.type) for link in chain] == [
        ("error", "AllModelsFailed"),
        ("failure", "ModelAuthError"),
        ("failure", "CircuitOpen"),
        ("failure", "ModelOverloaded"),
        ("cause", "ConnectionError"),
    ]
    assert chain[1].upstream == "a" and chain[1].status_code == 401 and chain[1].retryable is False
    assert chain[2].upstream == "b-endpoint"  # the breaker's own upstream name wins
    assert chain[4].message == "reset by peer"
    timeout = error_chain(RunTimeout("too slow", stage="step", timeout_s=1.0))
    assert timeout == [ErrorLink("RunTimeout", "too slow", stage="step")]
    assert ErrorLink.from_json(chain[1].to_json()) == chain[1]


async def test_a_permanent_failure_writes_a_dead_letter_with_input_chain_and_correlation(store: SQLStore) -> None:
    agent = Agent(ScriptedModel(["first answer"]), name="helper", instructions="Be brief.", store=store)
    first = await agent.run("hello", user_id="alice")
    failing = Agent(FunctionModel(_auth_error), name="helper", instructions="Be brief.")
    with correlation_scope("req-42"), pytest.raises(ModelAuthError, match="rejected"):
        await failing.run("second question", thread_id=first.thread_id, user_id="alice", store=store)

    (letter,) = await store.list_dead_letters()
    assert letter.user_id == "alice" and letter.thread_id == first.thread_id and letter.agent_name == "helper"
    assert letter.correlation_id == "req-42"
    assert letter.prompt == "second question"
    assert _texts(letter.messages) == ["hello", "first answer", "second question"]  # the history, then the request
    assert letter.error == "ModelAuthError: the key was rejected"
    (link,) = letter.error_chain
    assert (link.type, link.status_code, link.provider, link.request_id, link.retryable) == (
        "ModelAuthError",
        401,
        "openai",
        "r-1",
        False,
    )
    run = await store.get_run(letter.run_id)
    assert run.status == "failed" and run.correlation_id == "req-42" and run.agent_name == "helper"
    assert run.user_id == "alice" and run.replay_of is None
    stored = await store.history(first.thread_id or "", user_id="alice")
    assert letter.meta["request_message_id"] == stored[-1].id  # the request it failed on, committed before the call


async def test_timeouts_are_dead_letters_but_usage_limits_and_bugs_are_not(store: SQLStore) -> None:
    limited = Agent(ScriptedModel(["a", "b"]), usage_limits=UsageLimits(request_limit=0), store=store)
    with pytest.raises(UsageLimitExceeded):
        await limited.run("hi", user_id="u")

    def bug(messages: list[ModelMessage], info: AgentInfo) -> str:
        raise ValueError("a bug in my model function")

    with pytest.raises(ValueError, match="a bug"):
        await Agent(FunctionModel(bug), store=store).run("hi", user_id="u")
    assert await store.list_dead_letters() == []

    def slow(messages: list[ModelMessage], info: AgentInfo) -> str:
        raise RunTimeout("the step took too long", stage="step", timeout_s=2.0)

    with pytest.raises(RunTimeout):
        await Agent(FunctionModel(slow), store=store).run("hi", user_id="u")
    (letter,) = await store.list_dead_letters()
    assert letter.error_chain[0].stage == "step"


async def test_runs_without_a_store_write_no_dead_letter(store: SQLStore) -> None:
    with pytest.raises(ModelAuthError):
        await Agent(FunctionModel(_auth_error)).run("hi")
    assert await store.list_dead_letters() == []


async def test_replay_runs_the_input_again_in_the_same_thread_and_links_the_runs(store: SQLStore) -> None:
    thread = await store.create_thread(user_id="alice")
    with pytest.raises(ModelAuthError):
        await Agent(FunctionModel(_auth_error), name="helper").run(
            "what is 2+2?", thread_id=thread.id, user_id="alice", store=store
        )
    (letter,) = await store.list_dead_letters()
    seen: list[list[str]] = []

    def answer(messages: list[ModelMessage], info: AgentInfo) -> str:
        seen.append(_texts(messages))
        return "4"

    result = await replay_dead_letter(store, letter.id, Agent(FunctionModel(answer)))
    assert result.output == "4" and result.thread_id == thread.id
    assert seen == [["what is 2+2?"]]  # the stored request, once (not sent again as a second user message)
    assert _texts(await store.messages(thread.id, user_id="alice")) == ["what is 2+2?", "4"]
    run = await store.get_run(result.run_id)
    assert run.replay_of == letter.run_id and run.status == "succeeded"
    replayed = await store.get_dead_letter(letter.id)
    assert replayed.replayed_run_id == result.run_id and replayed.replayed_at is not None


async def test_replay_after_the_thread_was_deleted_uses_a_new_thread(store: SQLStore) -> None:
    thread = await store.create_thread(user_id="alice")
    await store.append(
        thread.id, [ModelRequest([prompt_part("earlier")]), ModelResponse([TextPart("ok")])], expected_leaf=None,
        user_id="alice",
    )  # fmt: skip
    with pytest.raises(ModelAuthError):
        await Agent(FunctionModel(_auth_error)).run("again", thread_id=thread.id, user_id="alice", store=store)
    await store.delete_thread(thread.id, user_id="alice")
    (letter,) = await store.list_dead_letters()
    result = await replay_dead_letter(store, letter.id, Agent(ScriptedModel(["done"])))
    assert result.thread_id is not None and result.thread_id != thread.id
    assert _texts(await store.messages(result.thread_id, user_id="alice")) == ["earlier", "ok", "again", "done"]


async def test_a_replay_that_fails_again_writes_a_linked_dead_letter(store: SQLStore) -> None:
    with pytest.raises(ModelAuthError):
        await Agent(FunctionModel(_auth_error)).run("hi", user_id="alice", store=store)
    (letter,) = await store.list_dead_letters()
    with pytest.raises(ModelAuthError):
        await replay_dead_letter(store, letter.id, Agent(FunctionModel(_auth_error)))
    newer, older = await store.list_dead_letters()
    assert older.id == letter.id and older.replayed_run_id is None  # not replayed successfully
    assert newer.replay_of == letter.id and newer.prompt == "hi"
    assert (await store.get_run(newer.run_id)).replay_of == letter.run_id
    with pytest.raises(DeadLetterNotFound):
        await replay_dead_letter(store, "no-such-letter", Agent(ScriptedModel(["x"])))


async def test_another_tenants_dead_letter_cannot_be_replayed(store: SQLStore) -> None:
    acme = SQLStore(store.url, tenant_id="acme")
    try:
        with pytest.raises(ModelAuthError):
            await Agent(FunctionModel(_auth_error)).run("hi", user_id="alice", store=acme)
        (letter,) = await acme.list_dead_letters()
        assert letter.tenant_id == "acme"
        assert await store.list_dead_letters() == []
        with pytest.raises(DeadLetterNotFound):
            await replay_dead_letter(store, letter.id, Agent(ScriptedModel(["x"])))
    finally:
        await acme.close()


async def test_a_failing_dead_letter_write_never_masks_the_runs_error(store: SQLStore) -> None:
    # A real fault: the table is gone, so every write of the dead letter fails; the run's state is still recorded.
    async with store.engine.begin() as conn:
        await conn.execute(text("DROP TABLE dead_letters"))
    thread = await store.create_thread(user_id="alice")
    with pytest.raises(ModelAuthError, match="rejected"):
        await Agent(FunctionModel(_auth_error)).run("hi", thread_id=thread.id, user_id="alice", store=store)
    (stored,) = await store.history(thread.id, user_id="alice")
    run = await store.get_run(stored.run_id or "")
    assert run.status == "failed" and "rejected" in (run.error or "")
