"""`OpenAIChatModel` against real recorded exchanges of OpenAI and compatible servers, and its server profiles.

Every cassette in `tests/models/cassettes/{openai_chat,groq,mistral,ollama,openrouter,crusoe_vllm}/` is replayed by a
loopback server (`tests/_replay.py`). For each recorded turn we rebuild the conversation the recorder sent, make
the same request through the provider (streamed when the recording streamed), check what went on the wire, and
compare the parsed response (or error) with what the recording says.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from miniagent import Agent
from miniagent.errors import (
    ContextLengthExceeded,
    ModelAPIError,
    ModelAuthError,
    ModelBadRequest,
    ModelHTTPError,
    ModelOverloaded,
    ModelRateLimited,
    UserError,
)
from miniagent.messages import (
    BinaryContent,
    ImageUrl,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ModelResponsePart,
    SystemPromptPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from miniagent.models import ModelRequestParameters, ModelSettings, ResponseAssembler, ToolDefinition, infer_model
from miniagent.models.openai_chat import PROFILES, CompatProfile, OpenAIChatModel, _map_messages, infer_profile
from tests._replay import Interaction, ReplayServer, load_cassette

pytestmark = pytest.mark.anyio

CASSETTES = Path(__file__).parent / "cassettes"


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with ReplayServer() as server:
        yield server


@pytest.fixture
def server(replay: ReplayServer) -> ReplayServer:
    replay.serve([])
    return replay


# ---- rebuilding a recorded conversation -----------------------------------------------------------------------


def from_wire(messages: list[dict[str, Any]]) -> list[ModelMessage]:
    """The miniagent history that maps to the recorded Chat Completions messages."""
    out: list[ModelMessage] = []
    names: dict[str, str] = {}
    for message in messages:
        role: str = message["role"]
        content: Any = message.get("content")
        if role == "assistant":
            parts: list[ModelResponsePart] = [TextPart(content)] if isinstance(content, str) and content else []
            for call in message.get("tool_calls") or ():
                names[call["id"]] = call["function"]["name"]
                parts.append(ToolCallPart(call["function"]["name"], call["function"]["arguments"], call["id"]))
            out.append(ModelResponse(parts))
            continue
        if role == "system":
            part: Any = SystemPromptPart(content)
        elif role == "tool":
            part = ToolReturnPart(names[message["tool_call_id"]], content, message["tool_call_id"])
        elif isinstance(content, list):
            text = "\n".join(p["text"] for p in content if p["type"] == "text")
            images: list[ImageUrl | BinaryContent] = [
                ImageUrl(p["image_url"]["url"]) for p in content if p["type"] == "image_url"
            ]
            part = UserPromptPart(text, attachments=images)
        else:
            part = UserPromptPart(content)
        last = out[-1] if out else None
        if isinstance(last, ModelRequest):
            last.parts.append(part)
        else:
            out.append(ModelRequest([part]))
    return out


def params_from_wire(body: dict[str, Any]) -> ModelRequestParameters:
    tools = [
        ToolDefinition(t["function"]["name"], t["function"].get("description", ""), t["function"]["parameters"])
        for t in body.get("tools") or ()
    ]
    return ModelRequestParameters(function_tools=tools, allow_text_output=body.get("tool_choice") != "required")


def summary(response: ModelResponse) -> dict[str, Any]:
    """What matters in a response, compact enough to write down for each recording."""
    out: dict[str, Any] = {
        "text": "".join(p.content for p in response.parts if isinstance(p, TextPart)),
        "calls": [(p.tool_name, p.args_dict()) for p in response.parts if isinstance(p, ToolCallPart)],
        "thinking": any(isinstance(p, ThinkingPart) and p.content for p in response.parts),
        "usage": (response.usage.input_tokens, response.usage.output_tokens),
        "finish": response.finish_reason,
    }
    return out


async def play(model: OpenAIChatModel, server: ReplayServer, interaction: Interaction) -> ModelResponse:
    """Make the recorded request through `model`, check what was sent, return the parsed response."""
    recorded = interaction.request_body
    messages = from_wire(recorded["messages"])
    params = params_from_wire(recorded)
    cap = recorded.get("max_completion_tokens") or recorded.get("max_tokens")
    settings = ModelSettings(max_tokens=cap, temperature=recorded.get("temperature"), top_p=recorded.get("top_p"))
    if recorded.get("stream"):
        assembler = ResponseAssembler(model.model_name)
        async for chunk in model.request_stream(messages, settings, params):
            assembler.add(chunk)
        response = assembler.response()
    else:
        response = await model.request(messages, settings, params)
    sent = server.received[-1].body
    assert sent["model"] == recorded["model"]
    assert [m["role"] for m in sent["messages"]] == [m["role"] for m in recorded["messages"]]
    assert bool(sent.get("stream")) == bool(recorded.get("stream"))
    assert [t["function"]["name"] for t in sent.get("tools", ())] == [
        t["function"]["name"] for t in recorded.get("tools") or ()
    ]
    for ours, theirs in zip(sent["messages"], recorded["messages"], strict=True):
        if ours["role"] == "tool":
            assert ours["tool_call_id"] == theirs["tool_call_id"]
            assert ours["content"] == theirs["content"]
        if ours["role"] == "assistant":
            ours_calls = [(c["id"], c["function"]["name"]) for c in ours.get("tool_calls", ())]
            assert ours_calls == [(c["id"], c["function"]["name"]) for c in theirs.get("tool_calls") or ()]
        if ours["role"] == "user" and isinstance(theirs["content"], list):
            assert ours["content"] == theirs["content"]  # image parts, byte for byte
    return response


def model_for(server: ReplayServer, interaction: Interaction, provider: str) -> OpenAIChatModel:
    prefix = interaction.path.removesuffix("/chat/completions")
    kind = "openai" if provider == "openai_chat" else "openai-compatible"
    profile = {"crusoe_vllm": "vllm", "openai_chat": "openai"}.get(provider, provider)
    return OpenAIChatModel(
        interaction.request_body["model"],
        base_url=server.url(prefix),
        api_key="sk-replay-key-000000",
        provider="openai" if kind == "openai" else "openai-compatible",
        profile=profile,
    )


# ---- every recording: turn by turn --------------------------------------------------------------------------

W = "get_weather"
EXPECTED: dict[str, list[dict[str, Any] | type[ModelAPIError]]] = {
    "openai_chat/test_openai_instructions.yaml": [
        {"text": "The capital of France is Paris.", "calls": [], "usage": (24, 8), "finish": "stop"},
    ],
    "openai_chat/test_dbos_agent_run_stream.yaml": [
        {"text": "The capital of Mexico is Mexico City.", "calls": [], "usage": (14, 8), "finish": "stop"},
    ],
    "openai_chat/test_tool_choice_matrix[auto-openai].yaml": [
        {"text": "", "calls": [(W, {"city": "Paris"})], "usage": (132, 23), "finish": "tool_call"},
        {"calls": [], "usage": (167, 171), "finish": "stop"},
    ],
    "openai_chat/test_dbos_agent_with_hitl_tool.yaml": [
        {
            "calls": [("delete_file", {"path": ".env"}), ("create_file", {"path": "test.txt"})],
            "usage": (None, 46),
            "finish": "tool_call",
        },
        {
            "text": "The file `.env` has been deleted and `test.txt` has been created successfully.",
            "usage": (133, 19),
            "finish": "stop",
        },
    ],
    "openai_chat/test_run_stream_sync_streams_real_model.yaml": [
        {"text": "", "calls": [("get_capital", {"country": "UK"})], "finish": "tool_call"},
        {"calls": [], "finish": "stop"},
    ],
    "openai_chat/test_complex_agent_run_in_flow.yaml": [
        {"calls": [("get_country", {})], "finish": "tool_call"},
        {"calls": [(W, None), ("get_product_name", {})], "finish": "tool_call"},
        {"calls": [("final_result", None)], "finish": "tool_call"},
    ],
    "openai_chat/test_openai_native_output.yaml": [
        {"calls": [("get_user_country", {})], "finish": "tool_call"},
        {"text": '{"city":"Mexico City","country":"Mexico"}', "calls": [], "usage": (92, 15)},
    ],
    "openai_chat/test_multimodal_tool_return_matrix[direct-url-image-openai_chat].yaml": [
        {"calls": [("get_file", {})], "usage": (129, 19)},
        {"calls": [], "finish": "stop"},
    ],
    "openai_chat/test_openai_web_search_tool_model_not_supported.yaml": [ModelBadRequest],
    "groq/test_tool_choice_matrix[tools_plus_output-groq].yaml": [
        {"calls": [(W, {"city": "Paris"}), ("final_result", {"city": "Paris", "summary": "Current weather in Paris"})]},
    ],
    "groq/test_tool_use_failed_error.yaml": [
        ModelBadRequest,
        {"calls": [("get_something_by_name", {"name": "test"})], "thinking": True},
        {"calls": [], "thinking": True, "finish": "stop"},
    ],
    "groq/test_tool_use_failed_error_streaming.yaml": [
        ModelBadRequest,
        {"calls": [("get_something_by_name", {"name": "example"})], "thinking": True, "usage": (304, 49)},
        {"calls": [], "thinking": True, "usage": (339, 58), "finish": "stop"},
    ],
    "groq/test_groq_native_output.yaml": [
        {"text": '{"city":"Mexico City","country":"Mexico"}', "thinking": True, "finish": "stop"},
    ],
    "groq/test_image_url_input.yaml": [{"calls": [], "finish": "stop"}],
    "mistral/test_tool_choice_matrix[auto-mistral].yaml": [
        {"text": "", "calls": [(W, {"city": "Paris"})], "usage": (77, 12), "finish": "tool_call"},
        {"calls": [], "usage": (100, 29), "finish": "stop"},
    ],
    "mistral/test_mistral_model_thinking_part_iter.yaml": [
        {"calls": [], "thinking": True, "usage": (10, 232), "finish": "stop"},
    ],
    "ollama/test_ollama_cloud_tool_output.yaml": [
        {"text": "Paris.", "calls": [], "thinking": True, "finish": "stop"},
        {"calls": [("final_result", {"city": "Paris", "country": "France"})], "thinking": True},
    ],
    "ollama/test_ollama_local_native_output_uses_json_schema.yaml": [
        {"text": '{ "city": "Paris", "country": "France" }', "thinking": True, "finish": "stop"},
    ],
    "crusoe_vllm/test_crusoe_model_streaming.yaml": [
        {"calls": [], "thinking": False, "usage": (46, 14), "finish": "stop"},
    ],
    "crusoe_vllm/test_crusoe_tool_calling.yaml": [
        {"text": "", "calls": [(W, {"city": "Paris"})], "thinking": True, "finish": "tool_call"},
        {"calls": [], "thinking": True, "finish": "stop"},
    ],
    "openrouter/test_openrouter_stream_error.yaml": [ModelBadRequest],
}


def test_every_chat_cassette_has_expectations() -> None:
    found = {
        f"{p.parent.name}/{p.name}"
        for folder in ("openai_chat", "groq", "mistral", "ollama", "openrouter", "crusoe_vllm")
        for p in (CASSETTES / folder).glob("*.yaml")
    }
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_recorded_exchange(server: ReplayServer, name: str) -> None:
    interactions = load_cassette(CASSETTES / name)
    expected = EXPECTED[name]
    assert len(interactions) == len(expected)
    server.serve(interactions)
    model = model_for(server, interactions[0], name.split("/")[0])
    for interaction, want in zip(interactions, expected, strict=True):
        if isinstance(want, type):
            with pytest.raises(want) as info:
                await play(model, server, interaction)
            error = info.value
            assert error.provider == model.name.split(":")[0]
            assert error.model_name == model.name
            assert isinstance(error, ModelHTTPError) and error.status_code == 400
            assert error.retryable is False
            assert "sk-replay" not in str(error)
            continue
        got = summary(await play(model, server, interaction))
        for key, value in want.items():
            if key == "calls":
                assert [c[0] for c in got["calls"]] == [c[0] for c in value]
                assert all(w is None or g[1] == w for g, (_, w) in zip(got["calls"], value, strict=True))
            elif key == "usage":
                assert got["usage"][1] == value[1]
                assert value[0] is None or got["usage"][0] == value[0]
            else:
                assert got[key] == value, key
        if "text" not in want and not want.get("calls"):
            assert got["text"]  # a final answer has text
    assert not server.pending
    await model.aclose()


async def test_streamed_parallel_tool_call_arguments_assemble(server: ReplayServer) -> None:
    interactions = load_cassette(CASSETTES / "openai_chat/test_complex_agent_run_in_flow.yaml")
    server.serve(interactions)
    model = model_for(server, interactions[0], "openai_chat")
    responses = [await play(model, server, i) for i in interactions]
    second = responses[1].tool_calls
    assert [c.tool_call_id for c in second] == ["call_NS4iQj14cDFwc0BnrKqDHavt", second[1].tool_call_id]
    assert all(isinstance(c.args_dict(), dict) for r in responses for c in r.tool_calls)
    assert responses[2].tool_calls[0].args_dict()  # the long `final_result` arguments parse as one object
    await model.aclose()


async def test_groq_stream_error_event_is_mapped(server: ReplayServer) -> None:
    interactions = load_cassette(CASSETTES / "groq/test_tool_use_failed_error_streaming.yaml")
    server.serve(interactions[:1])
    model = model_for(server, interactions[0], "groq")
    with pytest.raises(ModelBadRequest) as info:
        await play(model, server, interactions[0])
    error = info.value
    assert "inside its stream (status 400)" in str(error)
    assert "Tool call validation failed" in str(error)
    assert isinstance(error.body, dict) and error.body["code"] == "tool_use_failed"
    await model.aclose()


async def test_openrouter_error_chunk_after_reasoning(server: ReplayServer) -> None:
    interactions = load_cassette(CASSETTES / "openrouter/test_openrouter_stream_error.yaml")
    server.serve(interactions)
    model = model_for(server, interactions[0], "openrouter")
    with pytest.raises(ModelBadRequest, match="Token limit reached"):
        await play(model, server, interactions[0])
    sent = server.received[-1].body
    assert sent["max_tokens"] == 10  # the openrouter profile's cap name
    await model.aclose()


# ---- errors: status classes, headers, broken bodies, cut streams, timeouts -------------------------------------

CHAT = "/v1/chat/completions"
HELLO: list[ModelMessage] = [ModelRequest([UserPromptPart("Hi")])]
NO_TOOLS = ModelRequestParameters()


def reply(status: int, body: object, headers: dict[str, str] | None = None, **kwargs: Any) -> Interaction:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    content_type = "application/json" if not isinstance(body, bytes) else "text/html; charset=utf-8"
    pairs = [("content-type", content_type), *(headers or {}).items()]
    return Interaction("POST", CHAT, status, raw, headers=pairs, **kwargs)


def compat(server: ReplayServer, **kwargs: Any) -> OpenAIChatModel:
    return OpenAIChatModel("m", base_url=server.url("/v1"), provider="openai-compatible", **kwargs)


@pytest.mark.parametrize(
    ("status", "message", "code", "cls", "retryable"),
    [
        (429, "Rate limit reached", None, ModelRateLimited, True),
        (503, "Service unavailable", None, ModelOverloaded, True),
        (
            400,
            "This model's maximum context length is 8192 tokens",
            "context_length_exceeded",
            ContextLengthExceeded,
            False,
        ),
        (401, "Invalid API key", "invalid_api_key", ModelAuthError, False),
        (404, "The model `m` does not exist", "model_not_found", ModelBadRequest, False),
        (500, "boom", None, ModelHTTPError, True),
    ],
)
async def test_http_status_maps_to_error_class(
    server: ReplayServer, status: int, message: str, code: str | None, cls: type[ModelHTTPError], retryable: bool
) -> None:
    body = {"error": {"message": message, "type": "x", "code": code}}
    server.serve([reply(status, body, {"x-request-id": "req_123", "retry-after": "7"})])
    model = compat(server)
    with pytest.raises(cls) as info:
        await model.request(HELLO, None, NO_TOOLS)
    error = info.value
    assert type(error) is cls
    assert (error.status_code, error.request_id, error.provider, error.retryable) == (
        status,
        "req_123",
        "openai-compatible",
        retryable,
    )
    assert message.rstrip(".") in str(error)
    if isinstance(error, ModelRateLimited):
        assert error.retry_after_s == 7.0
    await model.aclose()


async def test_rate_limit_reads_openai_reset_headers_in_a_stream(server: ReplayServer) -> None:
    server.serve([reply(429, {"error": {"message": "slow down"}}, {"x-ratelimit-reset-requests": "1m30s"})])
    model = compat(server)
    with pytest.raises(ModelRateLimited) as info:
        async for _ in model.request_stream(HELLO, None, NO_TOOLS):
            pass
    assert info.value.retry_after_s == 90.0
    await model.aclose()


async def test_html_error_page(server: ReplayServer) -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>nginx</body></html>"
    server.serve([reply(502, page)])
    model = compat(server)
    with pytest.raises(ModelHTTPError) as info:
        await model.request(HELLO, None, NO_TOOLS)
    assert info.value.status_code == 502
    assert "HTTP 502: an HTML page: '502 Bad Gateway'" in str(info.value)
    await model.aclose()


@pytest.mark.parametrize("stream", [False, True])
async def test_html_page_with_status_200(server: ReplayServer, stream: bool) -> None:
    server.serve([reply(200, b"<!doctype html><html><title>Sign in</title></html>")])
    model = compat(server)
    with pytest.raises(ModelAPIError) as info:
        if stream:
            async for _ in model.request_stream(HELLO, None, NO_TOOLS):
                pass
        else:
            await model.request(HELLO, None, NO_TOOLS)
    assert not isinstance(info.value, ModelHTTPError)
    text = str(info.value)
    assert "an HTML page: 'Sign in'" in text and "API root" in text
    await model.aclose()


def sse(*events: dict[str, Any], done: bool = True) -> bytes:
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events)
    return (text + ("data: [DONE]\n\n" if done else "")).encode()


def delta(content: str, finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


async def test_stream_cut_midway(server: ReplayServer) -> None:
    body = sse(delta("Hel"), delta("lo"), delta("!", "stop"))
    headers = [("content-type", "text/event-stream"), ("x-request-id", "req_cut")]
    server.serve([Interaction("POST", CHAT, 200, body, headers=headers, cut_after=len(sse(delta("Hel"), done=False)))])
    model = compat(server)
    pieces: list[object] = []
    with pytest.raises(ModelAPIError) as info:
        async for piece in model.request_stream(HELLO, None, NO_TOOLS):
            pieces.append(piece)
    assert not isinstance(info.value, ModelHTTPError)
    assert "was cut after 1 events" in str(info.value)
    assert info.value.request_id == "req_cut"
    assert info.value.retryable
    assert len(pieces) == 1
    await model.aclose()


async def test_stream_closed_before_finish(server: ReplayServer) -> None:
    server.serve(
        [Interaction("POST", CHAT, 200, sse(delta("Hel"), done=False), headers=[("content-type", "text/event-stream")])]
    )
    model = compat(server)
    with pytest.raises(ModelAPIError, match="ended after 1 events without finishing"):
        async for _ in model.request_stream(HELLO, None, NO_TOOLS):
            pass
    await model.aclose()


async def test_constructor_timeout_applies_without_settings(server: ReplayServer) -> None:
    body = sse(delta("late", "stop"))
    server.serve([Interaction("POST", CHAT, 200, body, headers=[("content-type", "text/event-stream")], delay_s=2)])
    model = compat(server, timeout_s=0.2)
    with pytest.raises(ModelAPIError, match="did not answer in time"):
        async for _ in model.request_stream(HELLO, None, NO_TOOLS):
            pass
    await model.aclose()


# ---- profiles -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://api.groq.com/openai/v1", "groq"),
        ("https://api.mistral.ai/v1", "mistral"),
        ("https://openrouter.ai/api/v1", "openrouter"),
        ("http://localhost:11434/v1", "ollama"),
        ("https://ollama.com/v1", "ollama"),
        ("https://api.openai.com/v1", "openai"),
        ("https://eu.api.openai.com/v1", "openai"),
        ("http://127.0.0.1:8000/v1", "generic"),
        (None, "openai"),
    ],
)
def test_infer_profile(url: str | None, name: str) -> None:
    assert infer_profile(url).name == name


def test_profile_from_model_string() -> None:
    model = infer_model("openai-compatible:http://127.0.0.1:9/v1?profile=llama-cpp&x=1#smollm2")
    assert isinstance(model, OpenAIChatModel)
    assert model.profile is PROFILES["llama-cpp"]
    assert model.model_name == "smollm2"
    assert model._base_url == "http://127.0.0.1:9/v1?x=1"  # the profile is not sent to the server
    inferred = infer_model("openai-compatible:http://localhost:11434/v1#qwen3")
    assert isinstance(inferred, OpenAIChatModel) and inferred.profile.name == "ollama"
    with pytest.raises(UserError, match="Did you mean 'llama-cpp'"):
        infer_model("openai-compatible:http://127.0.0.1:9/v1?profile=llamacpp#m")


def test_profiles_table() -> None:
    assert set(PROFILES) == {"openai", "groq", "mistral", "ollama", "openrouter", "vllm", "llama-cpp", "generic"}
    llama = PROFILES["llama-cpp"]
    assert llama.tool_choice_modes == {"named", "none"}
    assert not llama.null_content_with_tool_calls and not llama.stream_tool_calls
    assert llama.final_turn_tool_choice_none
    assert PROFILES["openai"].max_tokens_param == "max_completion_tokens"


WEATHER = ToolDefinition(
    "get_weather", "Weather.", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
)
TIME = ToolDefinition("get_time", "Time.", {"type": "object", "properties": {}})
CALL = ModelResponse([ToolCallPart("get_weather", '{"city": "Paris"}', "call_1")])
RESULT = ModelRequest([ToolReturnPart("get_weather", "sunny", "call_1")])
DONE = {
    "id": "c",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sunny."}, "finish_reason": "stop"}],
}


async def sent_for(
    server: ReplayServer, profile: str | CompatProfile, messages: list[ModelMessage], params: ModelRequestParameters
) -> dict[str, Any]:
    server.serve([reply(200, DONE)])
    model = compat(server, profile=profile, parallel_tool_calls=False, strict_tools=True)
    await model.request(messages, ModelSettings(max_tokens=5), params)
    await model.aclose()
    body: dict[str, Any] = server.received[-1].body
    return body


async def test_llama_cpp_names_the_only_tool_then_says_none(server: ReplayServer) -> None:
    one = ModelRequestParameters(function_tools=[WEATHER])
    first = await sent_for(server, "llama-cpp", HELLO, one)
    assert first["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert "parallel_tool_calls" not in first and "strict" not in first["tools"][0]["function"]
    final = await sent_for(server, "llama-cpp", [*HELLO, CALL, RESULT], one)
    assert final["tool_choice"] == "none"
    assert final["messages"][1] == {
        "role": "assistant",
        "content": "",  # llama-cpp rejects `content: null` beside tool calls
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    }
    # Two tools cannot be named: they are offered with `auto` (which chatml-function-calling honours).
    two = await sent_for(server, "llama-cpp", HELLO, ModelRequestParameters(function_tools=[WEATHER, TIME]))
    assert two["tool_choice"] == "auto" and len(two["tools"]) == 2
    # After tool results, a run that needs its output tool names it.
    output = ModelRequestParameters(function_tools=[WEATHER], output_tools=[TIME], allow_text_output=False)
    named = await sent_for(server, "llama-cpp", [*HELLO, CALL, RESULT], output)
    assert named["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}


async def test_openai_profile_sends_strict_parallel_and_completion_cap(server: ReplayServer) -> None:
    params = ModelRequestParameters(function_tools=[WEATHER], allow_text_output=False)
    body = await sent_for(server, "openai", [*HELLO, CALL, RESULT], params)
    assert body["tool_choice"] == "required"
    assert body["parallel_tool_calls"] is False
    assert body["tools"][0]["function"]["strict"] is True
    assert body["max_completion_tokens"] == 5 and "max_tokens" not in body
    assert body["messages"][1]["content"] is None


async def test_ollama_without_tool_choice_drops_tools_for_none(server: ReplayServer) -> None:
    no_none = dataclasses.replace(PROFILES["ollama"], final_turn_tool_choice_none=True)
    body = await sent_for(server, no_none, [*HELLO, CALL, RESULT], ModelRequestParameters(function_tools=[WEATHER]))
    assert "tools" not in body and "tool_choice" not in body
    required = await sent_for(
        server, "ollama", HELLO, ModelRequestParameters(function_tools=[WEATHER, TIME], allow_text_output=False)
    )
    assert required["tool_choice"] == "auto" and len(required["tools"]) == 2


async def test_profile_without_streamed_tools_asks_whole_and_replays(server: ReplayServer) -> None:
    calls = {
        **DONE,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                        {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    server.serve([reply(200, calls)])
    model = compat(server, profile="llama-cpp")
    assembler = ResponseAssembler()
    async for chunk in model.request_stream(HELLO, None, ModelRequestParameters(function_tools=[WEATHER, TIME])):
        assembler.add(chunk)
    assert [c.tool_name for c in assembler.response().tool_calls] == ["get_weather", "get_time"]
    assert "stream" not in server.received[-1].body or server.received[-1].body["stream"] is False
    await model.aclose()


# ---- images -------------------------------------------------------------------------------------------------


def test_images_map_to_image_url_parts() -> None:
    png = BinaryContent(b"\x89PNG", "image/png")
    part = UserPromptPart("What is this?", attachments=[ImageUrl("https://x.test/a.jpg"), png])
    assert _map_messages([ModelRequest([part])]) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}},
            ],
        }
    ]
    with pytest.raises(UserError, match="images only, not 'application/pdf'"):
        _map_messages([ModelRequest([UserPromptPart("x", attachments=[BinaryContent(b"%PDF", "application/pdf")])])])


async def test_agent_run_over_a_recording(server: ReplayServer) -> None:
    interactions = load_cassette(CASSETTES / "mistral/test_tool_choice_matrix[auto-mistral].yaml")
    server.serve(interactions)
    model = OpenAIChatModel(
        "mistral-large-latest", base_url=server.url("/v1"), provider="openai-compatible", profile="mistral"
    )
    agent = Agent(model=model)

    @agent.tool
    def get_weather(city: str) -> str:
        """Get the weather for a city."""
        return "Sunny, 22C"

    result = await agent.run("What's the weather in Paris?")
    assert "Paris" in result.output
    assert result.usage.input_tokens == 177 and result.usage.output_tokens == 41
    assert not server.pending
    await model.aclose()
