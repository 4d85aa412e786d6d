"""`/v1/chat/completions` and `/v1/models`, driven by the official `openai` Python SDK against the app under uvicorn."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from miniagent import Agent
from miniagent.messages import (
    ImageUrl,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from miniagent.models import StreamDone, ToolCallChunk
from miniagent.store import SQLStore
from miniagent.testing import AgentInfo, FunctionModel, ScriptedModel, tool_call_response
from miniagent.usage import Usage

from .conftest import ApiKeyFactory, AppFactory, LiveServer, run_async

pytestmark = pytest.mark.anyio

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_location",
        "description": "The user's current city.",
        "parameters": {"type": "object", "properties": {"precise": {"type": "boolean"}}, "required": []},
    },
}


def _last_user_text(messages: list[ModelMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart):
                    return part.content
    return ""


class Recorder:
    """A FunctionModel that answers `You said: <last user text>` (streamed word by word) and records what it saw."""

    def __init__(self) -> None:
        self.seen: list[list[ModelMessage]] = []
        self.infos: list[AgentInfo] = []
        self.model = FunctionModel(self.answer, stream_function=self.stream, name="recorder")

    def answer(self, messages: list[ModelMessage], info: AgentInfo) -> str:
        self.seen.append(list(messages))
        self.infos.append(info)
        return f"You said: {_last_user_text(messages)}"

    async def stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        text = self.answer(messages, info)
        for i, word in enumerate(text.split(" ")):
            yield word if i == 0 else " " + word


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def server(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer, recorder: Recorder
) -> Iterator[tuple[str, str]]:
    assistant = Agent(recorder.model, name="assistant", instructions="You are the test assistant.")
    with live_server(make_app(agents=[assistant, Agent(ScriptedModel([]), name="other")])) as url:
        yield url, api_key()


def client(server: tuple[str, str]) -> AsyncOpenAI:
    url, key = server
    return AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


@pytest.mark.parametrize("server_db", ["sqlite", "postgres"], indirect=True)
async def test_non_streamed_answer_maps_the_whole_conversation(
    server: tuple[str, str], recorder: Recorder, server_settings: Any
) -> None:
    async with client(server) as api:
        answer = await api.chat.completions.create(
            model="assistant",
            messages=[
                {"role": "system", "content": "Answer in English."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi! How can I help?"},
                {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in"},
                        {"type": "text", "text": "this picture?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    ],
                },
            ],
            temperature=0.2,
            max_completion_tokens=50,
            seed=7,
            user="end-user-42",
        )
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-") and len(answer.id) > len("chatcmpl-")
    assert answer.model == "assistant"
    assert answer.system_fingerprint is None
    [choice] = answer.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "You said: What is in\nthis picture?"
    assert choice.message.tool_calls is None
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens == 7
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 0

    [seen] = recorder.seen
    assert seen == [
        ModelRequest(
            [
                SystemPromptPart("You are the test assistant."),
                SystemPromptPart("Answer in English."),
                SystemPromptPart("Be brief."),
                UserPromptPart("Hello"),
            ]
        ),
        ModelResponse([TextPart("Hi! How can I help?")], finish_reason="stop", timestamp=seen[1].timestamp),  # type: ignore[union-attr]
        ModelRequest(
            [UserPromptPart("What is in\nthis picture?", attachments=[ImageUrl("https://example.com/cat.png")])]
        ),
    ]
    settings = recorder.infos[0].settings
    assert settings is not None
    assert (settings.temperature, settings.max_tokens, settings.seed) == (0.2, 50, 7)

    # the run is recorded as the principal's (a run without a thread)
    run_id = answer.id.removeprefix("chatcmpl-")

    async def load() -> Any:
        async with await SQLStore.open(server_settings.database_url) as store:
            run = await store.get_run(run_id, tenant_id="t1")
            events = await store.events(run_id, tenant_id="t1")
            return run, [e.event.kind for e in events]

    run, kinds = run_async(load())
    assert (run.status, run.thread_id, run.user_id, run.agent_name, run.steps) == (
        "succeeded",
        None,
        "u1",
        "assistant",
        1,
    )
    assert run.usage.output_tokens == 7
    assert kinds[0] == "run-started" and kinds[-1] == "run-finished"


@pytest.mark.parametrize("server_db", ["sqlite", "postgres"], indirect=True)
async def test_streamed_answer_with_usage(server: tuple[str, str]) -> None:
    async with client(server) as api:
        stream = await api.chat.completions.create(
            model="assistant",
            messages=[{"role": "user", "content": "stream me please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {(c.object, c.model) for c in chunks} == {("chat.completion.chunk", "assistant")}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: stream me please"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 5  # word by word
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 5 and last.usage.total_tokens > 5
    assert all(c.usage is None for c in chunks[:-1])


async def test_streamed_answer_without_usage_has_no_usage_chunk(server: tuple[str, str]) -> None:
    async with client(server) as api:
        stream = await api.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [c async for c in stream]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_models_list_and_retrieve(server: tuple[str, str]) -> None:
    async with client(server) as api:
        models = await api.models.list()
        assert [(m.id, m.object, m.owned_by) for m in models.data] == [
            ("assistant", "model", "miniagent"),
            ("other", "model", "miniagent"),
        ]
        one = await api.models.retrieve("other")
        assert one.id == "other" and one.created == models.data[0].created > 0
        with pytest.raises(openai.NotFoundError) as caught:
            await api.models.retrieve("nope")
    assert caught.value.code == "model_not_found"


async def test_errors_have_openais_shape(server: tuple[str, str], api_key: ApiKeyFactory) -> None:
    url, _ = server
    async with client(server) as api:
        with pytest.raises(openai.NotFoundError) as not_found:
            await api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        assert not_found.value.code == "model_not_found" and not_found.value.param == "model"
        assert not_found.value.type == "not_found_error"
        assert "'assistant'" in not_found.value.message

        with pytest.raises(openai.BadRequestError) as bad:
            await api.chat.completions.create(model="assistant", messages=[])
        assert (bad.value.status_code, bad.value.type) == (400, "invalid_request_error")
        assert bad.value.param == "messages"

        with pytest.raises(openai.BadRequestError) as bad_temp:
            await api.chat.completions.create(
                model="assistant", messages=[{"role": "user", "content": "x"}], temperature=5
            )
        assert bad_temp.value.param == "temperature"

        with pytest.raises(openai.BadRequestError) as many:
            await api.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "x"}], n=2)
        assert "`n` must be 1" in many.value.message

        with pytest.raises(openai.BadRequestError) as last_assistant:
            await api.chat.completions.create(
                model="assistant",
                messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            )
        assert "last message must be the user's" in last_assistant.value.message

        with pytest.raises(openai.BadRequestError) as orphan:
            await api.chat.completions.create(
                model="assistant", messages=[{"role": "tool", "tool_call_id": "call_x", "content": "42"}]
            )
        assert "no earlier assistant message made" in orphan.value.message

        with pytest.raises(openai.BadRequestError) as required:
            await api.chat.completions.create(
                model="assistant",
                messages=[{"role": "user", "content": "x"}],
                tools=[WEATHER_TOOL],
                tool_choice="required",
            )
        assert required.value.param == "tool_choice"

    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="mk_wrong_key", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as unauthorized:
            await wrong.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "x"}])
        assert unauthorized.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()

    threads_only = api_key(scopes=("threads",))
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key=threads_only, max_retries=0) as scoped:
        with pytest.raises(openai.PermissionDeniedError) as forbidden:
            await scoped.models.list()
        assert "'chat'" in forbidden.value.message


async def test_unknown_fields_are_tolerated_and_malformed_json_is_a_400(server: tuple[str, str]) -> None:
    import httpx

    url, key = server
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as http:
        ok = await http.post(
            "/v1/chat/completions",
            json={
                "model": "assistant",
                "messages": [{"role": "user", "content": "hi", "future_field": 1}],
                "logit_bias": {"1": 2},
                "store": False,
                "metadata": {"a": "b"},
            },
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["content"] == "You said: hi"
        broken = await http.post(
            "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 400
        error = broken.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and "not valid JSON" in error["message"]


# ---- client tools ------------------------------------------------------------------------------------------------


def client_tool_model(seen: list[list[ModelMessage]]) -> FunctionModel:
    """Calls `get_location` (the client's tool) first, the agent's own `get_weather` next, then answers."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse | str:
        seen.append(list(messages))
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        returned = [p for p in last.parts if isinstance(p, ToolReturnPart)]
        if not returned:
            offered = {t.name: t.kind for t in info.params.function_tools}
            assert offered == {"get_weather": "function", "get_location": "external"}
            return ModelResponse(
                [TextPart("Let me find you."), ToolCallPart("get_location", '{"precise": true}', "call_loc_1")],
                finish_reason="tool_call",
            )
        if returned[0].tool_name == "get_location":
            return tool_call_response(("get_weather", {"city": returned[0].content}))
        return f"Weather: {returned[0].content}"

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        response = answer(messages, info)
        if isinstance(response, str):
            yield response
            return
        for i, part in enumerate(response.parts):
            if isinstance(part, TextPart):
                yield part.content
            elif isinstance(part, ToolCallPart):
                yield ToolCallChunk(i, tool_name=part.tool_name, tool_call_id=part.tool_call_id)
                yield ToolCallChunk(i, args_delta=part.args_json())
        yield StreamDone(usage=Usage(input_tokens=10, output_tokens=5), finish_reason="tool_call")

    return FunctionModel(answer, stream_function=stream, name="tools")


@pytest.fixture
def tools_server(make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer) -> Iterator[Any]:
    seen: list[list[ModelMessage]] = []
    agent = Agent(client_tool_model(seen), name="weather")

    @agent.tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    with live_server(make_app(agents=[agent])) as url:
        yield (url, api_key()), seen


@pytest.mark.parametrize("stream", [False, True])
async def test_client_tools_round_trip(tools_server: Any, stream: bool) -> None:
    server, seen = tools_server
    question: list[Any] = [{"role": "user", "content": "What's the weather here?"}]
    async with client(server) as api:
        if stream:
            chunks = [
                c
                async for c in await api.chat.completions.create(
                    model="weather", messages=question, tools=[WEATHER_TOOL], stream=True
                )
            ]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
            assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
                "tool_calls"
            ]
            assert text == "Let me find you."
            [call] = calls
            assert call.index == 0 and call.id is not None and call.function is not None
            call_id, name, arguments = call.id, call.function.name or "", call.function.arguments or ""
        else:
            first = await api.chat.completions.create(model="weather", messages=question, tools=[WEATHER_TOOL])
            choice = first.choices[0]
            assert choice.finish_reason == "tool_calls"
            assert choice.message.content == "Let me find you."
            [tool_call] = choice.message.tool_calls or []
            assert tool_call.type == "function"
            call_id, name, arguments = tool_call.id, tool_call.function.name, tool_call.function.arguments
        assert (call_id, name, json.loads(arguments)) == ("call_loc_1", "get_location", {"precise": True})

        # the client runs its tool and sends the result; the agent's own tool then runs on the server
        followup: list[Any] = [
            *question,
            {
                "role": "assistant",
                "content": "Let me find you.",
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "Lyon"},
        ]
        second = await api.chat.completions.create(model="weather", messages=followup, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Weather: sunny in Lyon"
    assert second.usage is not None and second.usage.prompt_tokens > 0
    # the model saw the client's result as the answer to its call
    continued = seen[1]
    assert isinstance(continued[-2], ModelResponse)
    assert continued[-2].parts == [TextPart("Let me find you."), ToolCallPart("get_location", arguments, call_id)]
    assert continued[-1] == ModelRequest([ToolReturnPart("get_location", "Lyon", call_id)])


async def test_tool_choice_none_does_not_offer_client_tools(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer
) -> None:
    model = ScriptedModel(["no tools needed"])
    with live_server(make_app(agents=[Agent(model, name="plain")])) as url:
        async with client((url, api_key())) as api:
            answer = await api.chat.completions.create(
                model="plain", messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL], tool_choice="none"
            )
            assert answer.choices[0].message.content == "no tools needed"
            assert model.calls[0].params.function_tools == []
            with pytest.raises(openai.BadRequestError) as missing:
                await api.chat.completions.create(
                    model="plain",
                    messages=[
                        {"role": "user", "content": "x"},
                        {
                            "role": "assistant",
                            "tool_calls": [
                                {
                                    "id": "a",
                                    "type": "function",
                                    "function": {"name": "get_location", "arguments": "{}"},
                                },
                                {
                                    "id": "b",
                                    "type": "function",
                                    "function": {"name": "get_location", "arguments": "{}"},
                                },
                            ],
                        },
                        {"role": "tool", "tool_call_id": "a", "content": "Lyon"},
                    ],
                )
            assert "'b' of messages.1 has no result" in missing.value.message


# ---- structured output -----------------------------------------------------------------------------------------


class City(BaseModel):
    name: str
    population: int


async def test_response_format_json_schema_is_enforced(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer
) -> None:
    model = ScriptedModel(
        [
            tool_call_response(("final_result", {"name": "Paris", "population": "many"})),  # invalid: retried
            tool_call_response(("final_result", {"name": "Paris", "population": 2100000})),
            tool_call_response(("final_result", {"name": "Lyon", "population": 520000})),
        ]
    )
    with live_server(make_app(agents=[Agent(model, name="cities")])) as url:
        async with client((url, api_key())) as api:
            parsed = await api.chat.completions.parse(
                model="cities", messages=[{"role": "user", "content": "Capital of France?"}], response_format=City
            )
            stream = await api.chat.completions.create(
                model="cities",
                messages=[{"role": "user", "content": "Third city of France?"}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "city", "schema": City.model_json_schema(), "strict": True},
                },
                stream=True,
            )
            chunks = [c async for c in stream]
    message = parsed.choices[0].message
    assert message.parsed == City(name="Paris", population=2100000)
    assert json.loads(message.content or "") == {"name": "Paris", "population": 2100000}
    assert parsed.choices[0].finish_reason == "stop"
    offered = model.calls[0].params.output_tools[0].parameters_json_schema
    assert offered["required"] == ["name", "population"] and offered["additionalProperties"] is False
    retry = model.calls[1].messages[-1]
    assert isinstance(retry, ModelRequest) and "$.population: expected integer" in str(retry.parts[0])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == {"name": "Lyon", "population": 520000}
    model.assert_consumed()


async def test_response_format_json_object_and_unenforceable_schemas(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer
) -> None:
    model = ScriptedModel(['```json\n{"answer": 42}\n```'])
    with live_server(make_app(agents=[Agent(model, name="json")])) as url:
        async with client((url, api_key())) as api:
            answer = await api.chat.completions.create(
                model="json", messages=[{"role": "user", "content": "x"}], response_format={"type": "json_object"}
            )
            assert json.loads(answer.choices[0].message.content or "") == {"answer": 42}
            with pytest.raises(openai.BadRequestError) as unsupported:
                await api.chat.completions.create(
                    model="json",
                    messages=[{"role": "user", "content": "x"}],
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "s", "schema": {"type": "object", "if": {"type": "object"}}},
                    },
                )
    assert unsupported.value.param == "response_format" and "'if'" in unsupported.value.message


async def test_an_agent_whose_model_cannot_be_resolved_is_unavailable(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer
) -> None:
    with live_server(make_app(agents=[Agent("no-such-provider:model", name="broken")])) as url:
        async with client((url, api_key())) as api:
            with pytest.raises(openai.InternalServerError) as caught:
                await api.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    assert (caught.value.status_code, caught.value.code) == (503, "agent_unavailable")
    assert "no-such-provider" not in caught.value.message  # the configuration detail stays in the server's logs
