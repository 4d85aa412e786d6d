"""Pass-through models (`server_passthrough_models`): model strings served by `/v1` beside the agents, driven by the
official `openai` SDK against the app under uvicorn, with the auth, limits, usage records, streaming and errors of
the agents; the native API does not serve them; bad strings and name clashes stop the app at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from pydantic import ValidationError

from miniagent import Agent
from miniagent.errors import UserError
from miniagent.messages import ModelMessage, ModelRequest, SystemPromptPart, UserPromptPart
from miniagent.server._limits import LIMITS_CLOCK_KEY
from miniagent.settings import Settings
from miniagent.store import SQLStore
from miniagent.testing import AgentInfo, EchoModel, FunctionModel, ManualClock

from ._limits_support import START
from .conftest import ApiKeyFactory, AppFactory, LiveServer, run_async

pytestmark = pytest.mark.anyio

COMPATIBLE = "openai-compatible:http://127.0.0.1:9/v1#tiny"
"""A pass-through model whose string holds `/` (never called: its server does not exist)."""
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_location", "description": "The user's city.", "parameters": {"type": "object"}},
}


def passthrough_settings(settings: Settings, *models: str, **more: Any) -> Settings:
    return settings.model_copy(update={"server_passthrough_models": list(models), **more})


@pytest.fixture
def server(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer, server_settings: Settings
) -> Iterator[tuple[str, str, Any]]:
    echo = Agent(EchoModel(), name="echo", instructions="The echo agent's own instructions.")
    app = make_app(passthrough_settings(server_settings, "test", COMPATIBLE), agents=[echo])
    with live_server(app) as url:
        yield url, api_key(scopes=("chat", "threads")), app


def client(url: str, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


# ---- settings and start-up -------------------------------------------------------------------------------------


def test_the_setting_takes_a_comma_separated_or_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(server_passthrough_models=" test , openai:gpt-4o-mini ").server_passthrough_models == [
        "test",
        "openai:gpt-4o-mini",
    ]
    monkeypatch.setenv("MINIAGENT_SERVER_PASSTHROUGH_MODELS", '["test", "local"]')
    assert Settings().server_passthrough_models == ["test", "local"]
    assert Settings(server_passthrough_models="").server_passthrough_models == []
    with pytest.raises(ValidationError, match="'test' is listed twice"):
        Settings(server_passthrough_models="test,test")
    with pytest.raises(ValidationError, match="'open ai:x' is not a model string"):
        Settings(server_passthrough_models=["open ai:x"])


def test_unresolvable_strings_and_name_clashes_stop_the_app(
    make_app: AppFactory, server_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match=r"'opneai:gpt-4o'.*cannot be served.*Did you mean 'openai'"):
        make_app(passthrough_settings(server_settings, "opneai:gpt-4o"))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UserError, match=r"'anthropic:claude-sonnet-4-5'.*ANTHROPIC_API_KEY"):
        make_app(passthrough_settings(server_settings, "anthropic:claude-sonnet-4-5"))
    with pytest.raises(UserError, match="'test' has the name of a served agent"):
        make_app(passthrough_settings(server_settings, "test"), agents=[Agent(EchoModel(), name="test")])
    app = make_app(passthrough_settings(server_settings, "test"))
    [agent] = app.state.miniagent.passthrough.values()
    assert agent.name == "test" and agent.instructions is None and isinstance(agent.resolve_model(), EchoModel)


# ---- /v1 -------------------------------------------------------------------------------------------------------


async def test_models_lists_the_agents_then_the_passthrough_models(server: tuple[str, str, Any]) -> None:
    url, key, _ = server
    async with client(url, key) as api:
        models = await api.models.list()
        assert [(m.id, m.owned_by) for m in models.data] == [
            ("echo", "miniagent"),
            ("test", "miniagent-passthrough"),
            (COMPATIBLE, "miniagent-passthrough"),
        ]
        one = await api.models.retrieve(COMPATIBLE)  # a model string with `/` in it
        assert (one.id, one.owned_by) == (COMPATIBLE, "miniagent-passthrough")
        assert (await api.models.retrieve("test")).owned_by == "miniagent-passthrough"
        with pytest.raises(openai.NotFoundError) as caught:
            await api.models.retrieve("openai:gpt-4o")  # a model string that is not configured
    assert caught.value.code == "model_not_found" and "'test'" in caught.value.message


async def test_a_passthrough_model_answers_as_a_plain_agent(
    server: tuple[str, str, Any], server_settings: Settings
) -> None:
    url, key, app = server
    seen: list[list[ModelMessage]] = []
    offered: list[list[str]] = []

    def answer(messages: list[ModelMessage], info: AgentInfo) -> str:
        seen.append(list(messages))
        offered.append([t.name for t in info.params.function_tools])
        return "plain answer"

    with app.state.miniagent.passthrough["test"].override(model=FunctionModel(answer, name="recorder")):
        async with client(url, key) as api:
            reply = await api.chat.completions.create(
                model="test",
                messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
            )
    assert reply.model == "test" and reply.choices[0].message.content == "plain answer"
    # no instructions of its own (the client's system message only), no tools
    assert seen == [[ModelRequest([SystemPromptPart("Be brief."), UserPromptPart("Hello")])]]
    assert offered == [[]]
    run_id = reply.id.removeprefix("chatcmpl-")

    async def load() -> Any:
        async with await SQLStore.open(server_settings.database_url) as store:
            return await store.get_run(run_id, tenant_id="t1")

    run = run_async(load())
    assert (run.status, run.user_id, run.agent_name, run.thread_id) == ("succeeded", "u1", "test", None)
    assert run.usage.requests == 1 and run.usage.output_tokens > 0


async def test_streaming_client_tools_and_errors_work_as_for_agents(server: tuple[str, str, Any]) -> None:
    url, key, _ = server
    async with client(url, key) as api:
        stream = await api.chat.completions.create(
            model="test",
            messages=[{"role": "user", "content": "stream this"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: stream this"
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

        # The client's own tools are the only ones: `EchoModel` calls each offered tool once.
        called = await api.chat.completions.create(
            model="test", messages=[{"role": "user", "content": "where am I?"}], tools=[WEATHER_TOOL]
        )
        assert called.choices[0].finish_reason == "tool_calls"
        [call] = called.choices[0].message.tool_calls or []
        assert call.type == "function"
        assert call.function.name == "get_location" and json.loads(call.function.arguments) == {}

        with pytest.raises(openai.BadRequestError) as many:
            await api.chat.completions.create(model="test", messages=[{"role": "user", "content": "x"}], n=2)
        assert "`n` must be 1" in many.value.message
        with pytest.raises(openai.NotFoundError) as unknown:
            await api.chat.completions.create(model="test:other", messages=[{"role": "user", "content": "x"}])
        assert unknown.value.code == "model_not_found" and "'echo', 'test'" in unknown.value.message


async def test_same_auth_and_not_in_the_native_api(server: tuple[str, str, Any], api_key: ApiKeyFactory) -> None:
    url, key, _ = server
    async with client(url, api_key(scopes=("threads",), user="u2")) as scoped:
        with pytest.raises(openai.PermissionDeniedError):
            await scoped.chat.completions.create(model="test", messages=[{"role": "user", "content": "x"}])
    async with client(url, "mk_wrong") as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model="test", messages=[{"role": "user", "content": "x"}])
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        native = await http.post("/api/v1/runs", json={"prompt": "x", "agent": "test"})
    assert native.status_code == 404
    assert native.json()["error"]["code"] == "agent_not_found" and native.json()["error"]["available"] == ["echo"]


async def test_limits_and_budgets_count_passthrough_runs(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer, server_settings: Settings
) -> None:
    settings = passthrough_settings(server_settings, "test", budget_tokens_per_day=1)
    app = make_app(settings)
    app.state.miniagent.extras[LIMITS_CLOCK_KEY] = ManualClock(START).now
    with live_server(app) as url:
        async with client(url, api_key()) as api:
            first = await api.chat.completions.create(model="test", messages=[{"role": "user", "content": "hi"}])
            assert first.usage is not None and first.usage.total_tokens > 1
            with pytest.raises(openai.RateLimitError) as refused:  # the first run's tokens were charged
                await api.chat.completions.create(model="test", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "budget_exceeded"
