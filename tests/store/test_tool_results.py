from __future__ import annotations

import dataclasses
import datetime as dt

import anyio
import pytest

from miniagent.errors import UserError
from miniagent.resilience import LastGoodCache
from miniagent.store import SQLStore

pytestmark = pytest.mark.anyio


@dataclasses.dataclass
class Forecast:
    city: str
    temp: float


async def test_put_get_replace_with_the_time_it_was_stored(store_url: str) -> None:
    clock = [dt.datetime(2025, 5, 1, 8, 0, tzinfo=dt.UTC)]
    store = await SQLStore.open(store_url, migrate=store_url.startswith("sqlite"), now=lambda: clock[0])
    try:
        cache = store.tool_results()
        assert await cache.get("weather", "k", tenant_id=None, user_id="alice") is None
        await cache.put("weather", "k", Forecast("Paris", 21.5), tenant_id=None, user_id="alice")
        assert await cache.get("weather", "k", tenant_id=None, user_id="alice") == (
            {"city": "Paris", "temp": 21.5},
            clock[0].timestamp(),
        )
        clock[0] += dt.timedelta(hours=2)
        await cache.put("weather", "k", ["rain", 3], tenant_id=None, user_id="alice")  # replaces it
        assert await cache.get("weather", "k", tenant_id=None, user_id="alice") == (["rain", 3], clock[0].timestamp())
        await cache.put("weather", "k", "shared", tenant_id=None, user_id=None)
        assert await cache.get("weather", "k", tenant_id=None, user_id=None) == ("shared", clock[0].timestamp())
        await cache.put("clock", "k", object(), tenant_id=None, user_id=None)  # not JSON: kept as its text
        hit = await cache.get("clock", "k", tenant_id=None, user_id=None)
        assert hit is not None and str(hit[0]).startswith("<object object")
        at = dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()  # when the caller got it
        await cache.put("weather", "k", 3, tenant_id=None, user_id="alice", stored_at=at)
        assert await cache.get("weather", "k", tenant_id=None, user_id="alice") == (3, at)
    finally:
        await store.close()


async def test_the_store_cache_is_a_last_good_cache(store: SQLStore) -> None:
    cache: LastGoodCache = store.tool_results()  # structural: mypy checks the signatures match
    assert isinstance(cache, LastGoodCache)


async def test_results_are_per_tenant_user_tool_and_arguments(store: SQLStore) -> None:
    cache = store.tool_results()
    await cache.put("weather", "paris", 1, tenant_id=None, user_id="alice")
    for tool, key, tenant, user in [
        ("weather", "paris", None, "bob"),
        ("weather", "paris", "acme", "alice"),
        ("weather", "paris", None, None),
        ("weather", "rome", None, "alice"),
        ("news", "paris", None, "alice"),
    ]:
        assert await cache.get(tool, key, tenant_id=tenant, user_id=user) is None
    assert await cache.get("weather", "paris", tenant_id=store.tenant_id, user_id="alice") is not None


async def test_concurrent_puts_of_one_key_upsert(store: SQLStore) -> None:
    cache = store.tool_results()
    ready = 0
    both = anyio.Event()

    async def put(value: int) -> None:
        nonlocal ready
        ready += 1
        if ready == 2:
            both.set()
        await both.wait()
        await cache.put("t", "k", value, tenant_id=None, user_id="u")

    async with anyio.create_task_group() as tg:
        tg.start_soon(put, 1)
        tg.start_soon(put, 2)
    hit = await cache.get("t", "k", tenant_id=None, user_id="u")
    assert hit is not None and hit[0] in (1, 2)


async def test_bad_names_are_clear_errors(store: SQLStore) -> None:
    cache = store.tool_results()
    with pytest.raises(UserError, match="tool name"):
        await cache.get("", "k", tenant_id=None, user_id=None)
    with pytest.raises(UserError, match="args key"):
        await cache.put("t", "k" * 200, 1, tenant_id=None, user_id=None)


async def test_a_stored_runs_last_good_fallback_reads_the_store(store: SQLStore) -> None:
    from miniagent import Agent
    from miniagent.messages import ModelMessage, ModelRequest, ModelResponse, ToolReturnPart
    from miniagent.resilience import args_key
    from miniagent.testing import AgentInfo, FunctionModel, tool_call_response

    returned: list[object] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse | str:
        last = messages[-1]
        results = [p for p in last.parts if isinstance(p, ToolReturnPart)] if isinstance(last, ModelRequest) else []
        if not results:
            return tool_call_response(("weather", {"city": "Paris"}))
        returned.append(results[0].content)
        return "done"

    up = True
    agent = Agent(FunctionModel(model))

    @agent.tool(fallback="last-good")
    def weather(city: str) -> dict[str, object]:
        if not up:
            raise ConnectionError("weather service down")
        return {"city": city, "temp": 21}

    await agent.run("weather?", user_id="alice", store=store)
    hit = await store.tool_results().get("weather", args_key({"city": "Paris"}), tenant_id=None, user_id="alice")
    assert hit is not None and hit[0] == {"city": "Paris", "temp": 21}
    up = False
    await agent.run("weather again?", user_id="alice", store=store)
    assert returned[0] == {"city": "Paris", "temp": 21}
    assert "21" in str(returned[1]) and "last good result" in str(returned[1])
