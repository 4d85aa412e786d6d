from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator

import pytest

from miniagent import Agent
from miniagent.errors import ModelAuthError, UserError
from miniagent.messages import ModelMessage, ModelResponse, TextPart
from miniagent.models._prices import register_price, reload_prices
from miniagent.store import SQLStore, UsageRow
from miniagent.testing import AgentInfo, FunctionModel, ScriptedModel, tool_call_response
from miniagent.usage import Usage

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def prices() -> Iterator[None]:
    register_price("priced-model", input=1.0, output=2.0)  # USD per million tokens
    try:
        yield
    finally:
        reload_prices()


@pytest.fixture
async def clocked(store_url: str) -> AsyncIterator[tuple[SQLStore, list[dt.datetime]]]:
    clock = [dt.datetime(2025, 3, 1, 23, 30, tzinfo=dt.UTC)]
    opened = await SQLStore.open(store_url, migrate=store_url.startswith("sqlite"), now=lambda: clock[0])
    try:
        yield opened, clock
    finally:
        await opened.close()


def _model(name: str, input_tokens: int = 1_000, output_tokens: int = 500) -> FunctionModel:
    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(
            [TextPart("ok")], usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens), model_name=name
        )

    return FunctionModel(answer, name=name)


async def test_one_record_per_response_in_the_steps_transaction(store: SQLStore) -> None:
    model = ScriptedModel(
        [
            ModelResponse(
                [*tool_call_response(("add", {"a": 1, "b": 2})).parts], usage=Usage(input_tokens=10, output_tokens=5)
            ),
            ModelResponse([TextPart("3")], usage=Usage(input_tokens=20, output_tokens=1)),
        ],
        name="priced-model",
    )
    agent = Agent(model, store=store)

    @agent.tool
    def add(a: int, b: int) -> int:
        return a + b

    result = await agent.run("1+2?", user_id="alice")
    totals = await store.usage_totals(run_id=result.run_id)
    assert (totals.requests, totals.input_tokens, totals.output_tokens) == (2, 30, 6)
    run = await store.get_run(result.run_id)
    assert totals.cost_usd == pytest.approx(run.usage.cost_usd) == pytest.approx((30 * 1.0 + 6 * 2.0) / 1e6)
    assert await store.usage_totals(thread_id=result.thread_id) == totals
    assert await store.usage_totals(user_id="alice") == totals
    assert await store.usage_totals() == totals  # the whole tenant


async def test_failed_runs_keep_the_cost_of_their_responses(store: SQLStore) -> None:
    calls = 0

    def then_fail(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            response = tool_call_response(("noop", {}))
            return ModelResponse(
                response.parts, usage=Usage(input_tokens=100, output_tokens=10), model_name="priced-model"
            )
        raise ModelAuthError("revoked", model_name="priced-model", status_code=403)

    agent = Agent(FunctionModel(then_fail, name="priced-model"), store=store)

    @agent.tool
    def noop() -> str:
        return "done"

    with pytest.raises(ModelAuthError):
        await agent.run("go", user_id="alice")
    (letter,) = await store.list_dead_letters()
    totals = await store.usage_totals(run_id=letter.run_id)
    assert (totals.requests, totals.input_tokens) == (1, 100)
    assert totals.cost_usd == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6)


async def test_report_groups_by_day_model_and_user_and_says_unknown(
    clocked: tuple[SQLStore, list[dt.datetime]],
) -> None:
    store, clock = clocked
    await Agent(_model("priced-model")).run("a", user_id="alice", store=store)
    await Agent(_model("mystery-model")).run("b", user_id="alice", store=store)
    clock[0] += dt.timedelta(hours=1)  # 00:30 the next day (UTC)
    await Agent(_model("priced-model")).run("c", user_id="bob", store=store)
    await Agent(_model("priced-model")).run("d", user_id="bob", store=store)
    await Agent(_model("mystery-model")).run("e", user_id="bob", store=store)

    one = (1_000 * 1.0 + 500 * 2.0) / 1e6
    rows = await store.usage_report()
    day1, day2 = dt.date(2025, 3, 1), dt.date(2025, 3, 2)
    assert [(r.day, r.model, r.user_id, r.requests, r.unpriced_requests) for r in rows] == [
        (day1, "mystery-model", "alice", 1, 1),
        (day1, "priced-model", "alice", 1, 0),
        (day2, "mystery-model", "bob", 1, 1),
        (day2, "priced-model", "bob", 2, 0),
    ]
    assert rows[0].cost_usd is None  # unknown, never 0
    assert rows[3].cost_usd == pytest.approx(2 * one) and rows[3].input_tokens == 2_000

    by_model = await store.usage_report(group_by=["model"])
    assert [(r.model, r.requests, r.cost_usd) for r in by_model] == [
        ("mystery-model", 2, None),
        ("priced-model", 3, pytest.approx(3 * one)),
    ]
    by_user = await store.usage_report(group_by=("user",))
    assert [(r.user_id, r.cost_usd, r.unpriced_requests) for r in by_user] == [("alice", None, 1), ("bob", None, 1)]
    assert [r.priced_cost_usd for r in by_user] == pytest.approx([one, 2 * one])
    assert [r.requests for r in await store.usage_report(group_by="day,model")] == [1, 1, 1, 2]

    only_day2 = await store.usage_report(group_by=["user"], since=day2)
    assert [(r.user_id, r.requests) for r in only_day2] == [("bob", 3)]
    only_day1 = await store.usage_report(group_by=["user"], until=day1)
    assert [(r.user_id, r.requests) for r in only_day1] == [("alice", 2)]
    window = await store.usage_report(group_by=[], since=clock[0] - dt.timedelta(minutes=1), until=clock[0])
    assert window == []  # `until` as a datetime is exclusive
    assert [r.requests for r in await store.usage_report(group_by=["model"], user_id="alice")] == [1, 1]

    total = await store.usage_totals()
    assert total.requests == 5 and total.cost_usd is None and total.priced_cost_usd == pytest.approx(3 * one)
    assert (await store.usage_totals(user_id="nobody")) == UsageRow()


async def test_usage_is_per_tenant(store: SQLStore) -> None:
    acme = SQLStore(store.url, tenant_id="acme")
    try:
        await Agent(_model("priced-model")).run("hi", user_id="alice", store=acme)
        assert await store.usage_report() == []
        assert (await store.usage_totals()).requests == 0
        assert (await acme.usage_totals()).requests == 1
        assert (await store.usage_totals(tenant_id="acme")).requests == 1
    finally:
        await acme.close()


async def test_records_outlive_pruned_threads(store: SQLStore) -> None:
    result = await Agent(_model("priced-model")).run("hi", user_id="alice", store=store)
    await store.delete_thread(result.thread_id or "", user_id="alice")
    assert (await store.usage_totals(user_id="alice")).requests == 1


async def test_bad_report_arguments_are_clear_errors(store: SQLStore) -> None:
    with pytest.raises(UserError, match="choose among day, model, user, thread"):
        await store.usage_report(group_by=["tenant"])  # type: ignore[list-item]
    with pytest.raises(UserError, match="must be before"):
        await store.usage_report(since=dt.date(2025, 2, 1), until=dt.date(2025, 1, 1))
    with pytest.raises(UserError, match="aware"):
        await store.usage_report(since=dt.datetime(2025, 1, 1))
