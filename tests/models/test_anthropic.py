"""`AnthropicModel` against recorded Anthropic exchanges and scripted faults, served over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter

from miniagent import Agent
from miniagent.errors import (
    MissingCredentialError,
    ModelAPIError,
    ModelAuthError,
    ModelBadRequest,
    ModelHTTPError,
    ModelOverloaded,
    ModelRateLimited,
    UserError,
)
from miniagent.events import TextDelta, ThinkingDelta, ToolCallArgsDelta
from miniagent.messages import (
    BinaryContent,
    ImageUrl,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from miniagent.models import (
    ModelRequestParameters,
    ModelSettings,
    ResponseAssembler,
    StreamChunk,
    StreamDone,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
    ToolDefinition,
    infer_model,
)
from miniagent.models.anthropic import DEFAULT_MAX_TOKENS, AnthropicModel, _EventMapper, _map_messages
from miniagent.settings import Settings
from miniagent.usage import Usage
from tests._replay import Interaction, ReplayServer, load_cassette

pytestmark = pytest.mark.anyio

CASSETTES = Path(__file__).parent / "cassettes" / "anthropic"
KEY = "sk-ant-test-dummy-key-0000"
NO_TOOLS = ModelRequestParameters()

# ---- the loopback server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with ReplayServer() as server:
        yield server


@pytest.fixture
def server(replay: ReplayServer) -> Iterator[ReplayServer]:
    replay.serve([])
    yield replay
    assert not replay.pending, "some scripted exchanges were never requested"


def model_for(server: ReplayServer, model_name: str, **kwargs: Any) -> AnthropicModel:
    return AnthropicModel(model_name, api_key=KEY, base_url=server.url(), **kwargs)


def cassette(name: str) -> list[Interaction]:
    return load_cassette(CASSETTES / f"{name}.yaml")


def essential(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a Messages request that decide what the model sees and may do."""
    keys = ("model", "max_tokens", "system", "messages", "tools", "tool_choice", "thinking", "stream")
    return {key: body[key] for key in keys if key in body}


def assert_same_request(server: ReplayServer, recorded: list[Interaction]) -> None:
    """What we sent has the same essential shape as what the recording's real client sent."""
    assert len(server.received) == len(recorded)
    for received, interaction in zip(server.received, recorded, strict=True):
        assert received.path == "/v1/messages"
        assert received.headers["authorization"] == f"Bearer {KEY}"  # this SDK release sends keys as a bearer token
        assert essential(received.body) == essential(interaction.request_body)


def json_reply(body: dict[str, Any], *, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Interaction:
    return Interaction(
        "POST",
        "/v1/messages",
        status,
        json.dumps(body).encode(),
        headers=[("content-type", "application/json"), *(headers or [])],
    )


def sse_reply(events: list[dict[str, Any]], *, headers: list[tuple[str, str]] | None = None) -> Interaction:
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
    return Interaction(
        "POST", "/v1/messages", 200, body, headers=[("content-type", "text/event-stream"), *(headers or [])]
    )


def message_json(
    content: list[dict[str, Any]], stop: str = "end_turn", usage: tuple[int, int] = (10, 5)
) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-1",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def stream_events(
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]], stop: str = "end_turn"
) -> list[dict[str, Any]]:
    """A Messages stream: each block's start and its deltas, between the message events."""
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**message_json([], stop=stop), "stop_reason": None}},
    ]
    for index, (start, deltas) in enumerate(blocks):
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        events.extend({"type": "content_block_delta", "index": index, "delta": d} for d in deltas)
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 7}}
    )
    events.append({"type": "message_stop"})
    return events


async def collect(
    model: AnthropicModel,
    messages: list[ModelMessage],
    params: ModelRequestParameters = NO_TOOLS,
    settings: ModelSettings | None = None,
) -> list[StreamChunk]:
    return [chunk async for chunk in model.request_stream(messages, settings, params)]


def assembled(chunks: list[StreamChunk]) -> ModelResponse:
    assembler = ResponseAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.response()


def tokens(usage: Usage) -> tuple[int, int]:
    return usage.input_tokens, usage.output_tokens


def user(text: str, *, system: str | None = None) -> ModelRequest:
    parts: list[Any] = [SystemPromptPart(system)] if system is not None else []
    return ModelRequest([*parts, UserPromptPart(text)])


# ---- recorded exchanges -------------------------------------------------------------------------------------


async def test_text_with_instructions(server: ReplayServer) -> None:
    recorded = cassette("test_anthropic_model_instructions")
    server.serve(recorded)
    model = model_for(server, "claude-3-opus-latest")
    system = recorded[0].request_body["system"]
    response = await model.request([user("What is the capital of France?", system=system)], None, NO_TOOLS)
    assert response.parts == [TextPart("The capital of France is Paris.")]
    assert tokens(response.usage) == (20, 10)
    assert response.finish_reason == "stop"
    assert response.model_name == "claude-3-opus-20240229"
    assert response.provider_details == {
        "response_id": "msg_01Fg1JVgvCYUHWsxrj9GkpEv",
        "stop_reason": "end_turn",
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    assert_same_request(server, recorded)
    assert server.received[0].body["max_tokens"] == DEFAULT_MAX_TOKENS
    await model.aclose()


async def test_streamed_text(server: ReplayServer) -> None:
    recorded = cassette("test_request_stream_fallback_for_high_max_tokens")
    server.serve(recorded)
    model = model_for(server, "claude-sonnet-4-5")
    # The SDK marks claude-sonnet-4-5 as deprecated; the warning is the SDK's to give.
    with pytest.warns(DeprecationWarning, match="claude-sonnet-4-5"):
        chunks = await collect(
            model, [user("What is 1+1? Answer with just the number.")], settings=ModelSettings(max_tokens=32000)
        )
    assert chunks[:-1] == [TextChunk(0, "2")]
    done = chunks[-1]
    assert isinstance(done, StreamDone)
    assert tokens(done.usage) == (20, 5)
    assert done.finish_reason == "stop"
    assert done.model_name == "claude-sonnet-4-5-20250929"
    assert_same_request(server, recorded)
    await model.aclose()


async def test_thinking_streamed(server: ReplayServer) -> None:
    recorded = cassette("test_anthropic_model_thinking_part_stream")
    server.serve(recorded)
    model = model_for(server, "claude-sonnet-4-0", thinking=1024)
    chunks = await collect(model, [user("How do I cross the street?")])
    thinking = [c for c in chunks if isinstance(c, ThinkingChunk) and c.delta]
    texts = [c for c in chunks if isinstance(c, TextChunk)]
    assert {c.index for c in thinking} == {0}
    assert {c.index for c in texts} == {1}
    assert len(thinking) == 13  # 14 thinking deltas, one of them empty
    assert "".join(c.delta for c in thinking).startswith("This is a straightforward question about pedestrian safety.")
    assert "".join(c.delta for c in texts).startswith("Here are the basic steps for safely crossing the street:")
    done = chunks[-1]
    assert isinstance(done, StreamDone)
    assert tokens(done.usage) == (43, 282)
    assert done.finish_reason == "stop"
    response = assembled(chunks)
    assert [type(p) for p in response.parts] == [ThinkingPart, TextPart]
    assert_same_request(server, recorded)
    await model.aclose()


def test_thinking_stream_keeps_the_signature() -> None:
    """The shared mapper keeps the streamed signature (the complete-response path returns it on the part)."""
    doc = yaml.safe_load((CASSETTES / "test_anthropic_model_thinking_part_stream.yaml").read_text())
    text = doc["interactions"][0]["response"]["body"]["string"]
    from anthropic.types import RawMessageStreamEvent

    adapter: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
    mapper = _EventMapper("req_1")
    for block in text.split("\n\n"):
        data = [line[5:].strip() for line in block.splitlines() if line.startswith("data:")]
        if data and '"ping"' not in data[0]:
            for _ in mapper.event(adapter.validate_python(json.loads(data[0]))):
                pass
    response = mapper.response()
    thinking = response.parts[0]
    assert isinstance(thinking, ThinkingPart)
    assert thinking.provider == "anthropic"
    assert thinking.signature is not None and thinking.signature.startswith("EvMCCkYICxgCKkCHP2cSuEdcJK")
    assert response.provider_details is not None and response.provider_details["request_id"] == "req_1"


async def test_tool_call_with_thinking_round_trip(server: ReplayServer) -> None:
    recorded = cassette("test_anthropic_tool_with_thinking")
    server.serve(recorded)
    model = model_for(server, "claude-sonnet-4-0", thinking=3000)
    tool = ToolDefinition("get_user_country", "", {"additionalProperties": False, "properties": {}, "type": "object"})
    params = ModelRequestParameters(function_tools=[tool])
    first: list[ModelMessage] = [user("What is the largest city in the user country?")]
    response = await model.request(first, None, params)
    thinking, text, call = response.parts
    assert isinstance(thinking, ThinkingPart)
    assert thinking.provider == "anthropic"
    assert thinking.signature is not None and thinking.signature.startswith("EqEECkYICxgCKkAo3UA4WwDb")
    assert thinking.content.startswith('The user is asking about the largest city in "the user country".')
    assert text == TextPart(
        "I'll help you find the largest city in your country. First, let me determine which country you're from."
    )
    assert call == ToolCallPart("get_user_country", "", "toolu_01YGzqpRE16Vricda3Aqcejo")
    assert response.finish_reason == "tool_call"
    assert tokens(response.usage) == (398, 155)

    second = [*first, response, ModelRequest([ToolReturnPart("get_user_country", "Mexico", call.tool_call_id)])]
    final = await model.request(second, None, params)
    assert final.text.startswith("Based on the information that you're from Mexico")
    assert final.finish_reason == "stop"
    # The thinking block goes back with its signature, the call with its arguments as an object.
    assert_same_request(server, recorded)
    await model.aclose()


async def test_parallel_tool_calls(server: ReplayServer) -> None:
    recorded = cassette("test_multiple_parallel_tool_calls")
    server.serve(recorded)
    model = model_for(server, "claude-haiku-4-5")
    system = recorded[0].request_body["system"]
    tool = ToolDefinition(
        "retrieve_entity_info",
        "Get the knowledge about the given entity.",
        {
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
            "type": "object",
        },
    )
    params = ModelRequestParameters(function_tools=[tool])
    first: list[ModelMessage] = [
        user("Alice, Bob, Charlie and Daisy are a family. Who is the youngest?", system=system)
    ]
    response = await model.request(first, None, params)
    calls = response.tool_calls
    assert [c.args_dict() for c in calls] == [{"name": n} for n in ("Alice", "Bob", "Charlie", "Daisy")]
    assert [c.tool_call_id for c in calls] == [
        "toolu_0167cfEnoQaPviGdVXA95zcu",
        "toolu_01EEe2V5HD1Ac4rKiUR4HD2T",
        "toolu_01XFyAjstT3966qvRynZyVPo",
        "toolu_013mnQZbgtK2oe3Mo3XKJsx3",
    ]
    assert isinstance(response.parts[0], TextPart)
    answers = {
        "Alice": "alice is bob's wife",
        "Bob": "bob is alice's husband",
        "Charlie": "charlie is alice's son",
        "Daisy": "daisy is bob's daughter and charlie's younger sister",
    }
    results = ModelRequest([ToolReturnPart(c.tool_name, answers[c.args_dict()["name"]], c.tool_call_id) for c in calls])
    final = await model.request([*first, response, results], None, params)
    assert "Daisy is the youngest" in final.text
    assert tokens(final.usage) == (771, 77)
    assert_same_request(server, recorded)
    await model.aclose()


async def test_tool_call_then_text(server: ReplayServer) -> None:
    recorded = cassette("test_tool_choice_matrix[auto-anthropic]")
    server.serve(recorded)
    model = model_for(server, "claude-sonnet-4-5")
    tool = ToolDefinition(
        "get_weather", "Get the current weather for a city.", recorded[0].request_body["tools"][0]["input_schema"]
    )
    params = ModelRequestParameters(function_tools=[tool])
    first: list[ModelMessage] = [user("What's the weather in Paris?")]
    with pytest.warns(DeprecationWarning, match="claude-sonnet-4-5"):
        response = await model.request(first, None, params)
    (call,) = response.tool_calls
    assert call.tool_name == "get_weather" and call.args_dict() == {"city": "Paris"}
    result = recorded[1].request_body["messages"][-1]["content"][0]["content"]
    with pytest.warns(DeprecationWarning, match="claude-sonnet-4-5"):
        final = await model.request(
            [*first, response, ModelRequest([ToolReturnPart("get_weather", result, call.tool_call_id)])], None, params
        )
    assert final.text
    assert_same_request(server, recorded)
    await model.aclose()


async def test_image_url_input(server: ReplayServer) -> None:
    recorded = cassette("test_image_url_input")
    server.serve(recorded)
    model = model_for(server, "claude-haiku-4-5")
    url = "https://t3.ftcdn.net/jpg/00/85/79/92/360_F_85799278_0BBGV9OAdQDTLnKwAPBCcg1J7QtiieJY.jpg"
    response = await model.request(
        [ModelRequest([UserPromptPart("What is this vegetable?", attachments=[ImageUrl(url)])])], None, NO_TOOLS
    )
    assert response.text.startswith("This is a potato.")
    assert_same_request(server, recorded)
    await model.aclose()


async def test_streamed_tool_call_arguments_and_server_blocks(server: ReplayServer) -> None:
    """`input_json_delta` pieces build the arguments; server-tool blocks (tool search) are skipped."""
    server.serve(cassette("test_anthropic_native_tool_search_streaming")[:1])
    model = model_for(server, "claude-sonnet-4-6")
    chunks = await collect(model, [user("What is the current USD to EUR exchange rate?")])
    response = assembled(chunks)
    (call,) = response.tool_calls
    assert call.tool_name == "get_exchange_rate"
    assert call.tool_call_id == "toolu_01EFn5wTNBYA8Reni8rbmnHT"
    assert call.args_dict() == {"from_currency": "USD", "to_currency": "EUR"}
    assert len([c for c in chunks if isinstance(c, ToolCallChunk) and c.args_delta]) > 1
    assert response.finish_reason == "tool_call"
    assert all(not isinstance(p, ThinkingPart) for p in response.parts)
    await model.aclose()


async def test_recorded_http_error(server: ReplayServer) -> None:
    server.serve(cassette("test_anthropic_explicit_effort_xhigh_unsupported_model_errors"))
    model = model_for(server, "claude-opus-4-6")
    with pytest.raises(ModelBadRequest) as info:
        await model.request([user("What is 2+2?")], None, NO_TOOLS)
    error = info.value
    assert error.status_code == 400
    assert error.provider == "anthropic"
    assert error.request_id == "req_011Ca7jT9AHpgXgdv8igm4z9"
    assert error.retryable is False
    assert "This model does not support effort level 'xhigh'" in str(error)
    assert "HTTP 400 (invalid_request_error)" in str(error)
    await model.aclose()


# ---- faults -------------------------------------------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


async def test_rate_limited_with_retry_after(server: ReplayServer) -> None:
    server.serve(
        [
            json_reply(
                anthropic_error("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
                status=429,
                headers=[("retry-after", "7"), ("request-id", "req_429")],
            )
        ]
    )
    model = model_for(server, "claude-test")
    with pytest.raises(ModelRateLimited) as info:
        await model.request([user("hi")], None, NO_TOOLS)
    assert info.value.retry_after_s == 7
    assert info.value.retryable is True
    assert info.value.status_code == 429
    assert info.value.request_id == "req_429"
    assert "wait 7 s" in str(info.value)
    await model.aclose()


async def test_overloaded_529_is_retryable(server: ReplayServer) -> None:
    server.serve([json_reply(anthropic_error("overloaded_error", "Overloaded"), status=529)])
    model = model_for(server, "claude-test")
    with pytest.raises(ModelOverloaded) as info:
        await model.request([user("hi")], None, NO_TOOLS)
    assert info.value.status_code == 529
    assert info.value.retryable is True
    assert info.value.provider == "anthropic"
    await model.aclose()


async def test_auth_error_is_not_retryable_and_hides_the_key(server: ReplayServer) -> None:
    server.serve([json_reply(anthropic_error("authentication_error", f"invalid x-api-key {KEY}"), status=401)])
    model = model_for(server, "claude-test")
    with pytest.raises(ModelAuthError) as info:
        await model.request([user("hi")], None, NO_TOOLS)
    assert info.value.retryable is False
    assert KEY not in str(info.value) and KEY not in json.dumps(info.value.body)
    assert "ANTHROPIC_API_KEY" in str(info.value)
    await model.aclose()


async def test_html_502_gives_a_clear_error(server: ReplayServer) -> None:
    page = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
    server.serve([Interaction("POST", "/v1/messages", 502, page.encode(), headers=[("content-type", "text/html")])])
    model = model_for(server, "claude-test")
    with pytest.raises(ModelHTTPError) as info:
        await model.request([user("hi")], None, NO_TOOLS)
    assert type(info.value) is ModelHTTPError
    assert info.value.status_code == 502
    assert info.value.retryable is True
    assert "text/html" in str(info.value) and "502 Bad Gateway" in str(info.value)
    assert "<h1>" not in str(info.value)
    await model.aclose()


def hello_stream() -> list[dict[str, Any]]:
    return stream_events([({"type": "text", "text": ""}, [{"type": "text_delta", "text": t} for t in ("Hel", "lo")])])


async def test_stream_cut_midway_raises(server: ReplayServer) -> None:
    reply = sse_reply(hello_stream())
    reply.cut_after = reply.body.index(b"content_block_delta") + 10
    server.serve([reply])
    model = model_for(server, "claude-test")
    with pytest.raises(ModelAPIError) as info:
        await collect(model, [user("hi")], settings=ModelSettings(timeout_s=5))
    assert info.value.retryable is True
    assert "broke off" in str(info.value)
    await model.aclose()


async def test_stream_ending_without_message_stop_raises(server: ReplayServer) -> None:
    server.serve([sse_reply(hello_stream()[:-1])])
    model = model_for(server, "claude-test")
    with pytest.raises(ModelAPIError, match="message_stop"):
        await collect(model, [user("hi")])
    await model.aclose()


async def test_error_event_mid_stream(server: ReplayServer) -> None:
    events = hello_stream()[:3]
    events.append(anthropic_error("overloaded_error", "Overloaded"))
    server.serve([sse_reply(events, headers=[("request-id", "req_s")])])
    model = model_for(server, "claude-test")
    received: list[StreamChunk] = []
    with pytest.raises(ModelOverloaded) as info:
        async for chunk in model.request_stream([user("hi")], None, NO_TOOLS):
            received.append(chunk)
    assert received == [TextChunk(0, "Hel")]
    assert info.value.status_code == 529
    assert info.value.retryable is True
    assert info.value.request_id == "req_s"
    assert "middle of its stream" in str(info.value)
    await model.aclose()


async def test_every_request_has_a_deadline(server: ReplayServer) -> None:
    slow = json_reply(message_json([{"type": "text", "text": "late"}]))
    slow.delay_s = 3
    server.serve([slow])
    model = model_for(server, "claude-test")
    with pytest.raises(ModelAPIError, match="did not answer in time") as info:
        await model.request([user("hi")], ModelSettings(timeout_s=0.3), NO_TOOLS)
    assert info.value.retryable is True
    await model.aclose()


async def test_unreachable_server() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    model = AnthropicModel("claude-test", api_key=KEY, base_url=f"http://user:pw@127.0.0.1:{port}")
    with pytest.raises(ModelAPIError, match="Could not connect") as info:
        await model.request([user("hi")], ModelSettings(timeout_s=5), NO_TOOLS)
    assert "pw" not in str(info.value)
    await model.aclose()


# ---- request mapping ----------------------------------------------------------------------------------------


async def test_tool_choice_and_sampling_settings(server: ReplayServer) -> None:
    server.serve(
        [json_reply(message_json([{"type": "tool_use", "id": "t1", "name": "out", "input": {"a": 1}}], "tool_use"))]
    )
    model = model_for(server, "claude-test")
    output = ToolDefinition(
        "out", "The answer.", {"type": "object", "properties": {"a": {"type": "integer"}}}, kind="output"
    )
    params = ModelRequestParameters(output_tools=[output], allow_text_output=False)
    settings = ModelSettings(max_tokens=100, temperature=0.2, top_p=0.9, seed=1)
    response = await model.request([user("x")], settings, params)
    assert response.tool_calls == [ToolCallPart("out", '{"a": 1}', "t1")]
    body = server.received[0].body
    assert body["tool_choice"] == {"type": "any"}
    assert body["tools"] == [
        {"name": "out", "description": "The answer.", "input_schema": output.parameters_json_schema}
    ]
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (100, 0.2, 0.9)
    assert "seed" not in body and "system" not in body and "thinking" not in body
    await model.aclose()


async def test_thinking_never_forces_a_tool(server: ReplayServer) -> None:
    server.serve([json_reply(message_json([{"type": "text", "text": "ok"}]))])
    model = model_for(server, "claude-test", thinking="adaptive")
    params = ModelRequestParameters(
        function_tools=[ToolDefinition("f", "", {"type": "object"})], allow_text_output=False
    )
    await model.request([user("x")], None, params)
    body = server.received[0].body
    assert body["tool_choice"] == {"type": "auto"}
    assert body["thinking"] == {"type": "adaptive"}
    await model.aclose()


async def test_thinking_budget_must_fit_max_tokens() -> None:
    model = AnthropicModel("claude-test", api_key=KEY, base_url="http://127.0.0.1:9", thinking=2048)
    with pytest.raises(UserError, match="below `max_tokens`"):
        await model.request([user("x")], ModelSettings(max_tokens=1024), NO_TOOLS)
    with pytest.raises(UserError, match="at least 1024"):
        AnthropicModel("claude-test", api_key=KEY, thinking=100)


def test_messages_merge_roles_and_put_tool_results_first() -> None:
    png = BinaryContent(b"\x89PNG\r\n", "image/png")
    messages: list[ModelMessage] = [
        ModelRequest([SystemPromptPart("Be brief."), UserPromptPart("look", attachments=[png])]),
        ModelRequest([UserPromptPart("and this", attachments=[ImageUrl("data:image/gif;base64,R0lGODlh")])]),
        ModelResponse(
            [
                ThinkingPart("mine", signature="sig", provider="anthropic"),
                ThinkingPart("theirs", signature="enc", provider="openai"),
                ThinkingPart("unsigned"),
                TextPart(""),
                ToolCallPart("a", '{"x": 1}', "t1"),
                ToolCallPart("b", {"y": 2}, "t2"),
                ToolCallPart("c", "not json", "t3"),
            ]
        ),
        ModelRequest(
            [
                UserPromptPart("meanwhile"),
                ToolReturnPart("a", {"ok": True}, "t1"),
                ToolReturnPart("b", "boom", "t2", outcome="error"),
                RetryPromptPart("bad args", tool_name="c", tool_call_id="t3"),
                SystemPromptPart("Also: be kind."),
            ]
        ),
        ModelResponse([TextPart("done?")]),
        ModelRequest([RetryPromptPart("Answer in JSON.")]),
    ]
    system, wire = _map_messages(messages)
    assert system == "Be brief.\n\nAlso: be kind."
    assert [m["role"] for m in wire] == ["user", "assistant", "user", "assistant", "user"]
    assert wire[0]["content"] == [
        {"type": "text", "text": "look"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(png.data).decode()},
        },
        {"type": "text", "text": "and this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lGODlh"}},
    ]
    assert wire[1]["content"] == [
        {"type": "thinking", "thinking": "mine", "signature": "sig"},
        {"type": "tool_use", "id": "t1", "name": "a", "input": {"x": 1}},
        {"type": "tool_use", "id": "t2", "name": "b", "input": {"y": 2}},
        {"type": "tool_use", "id": "t3", "name": "c", "input": {"_raw_arguments": "not json"}},
    ]
    retry_text = RetryPromptPart("bad args").model_text()
    assert wire[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": '{"ok": true}', "is_error": False},
        {"type": "tool_result", "tool_use_id": "t2", "content": "boom", "is_error": True},
        {"type": "tool_result", "tool_use_id": "t3", "content": retry_text, "is_error": True},
        {"type": "text", "text": "meanwhile"},
    ]
    assert wire[4]["content"] == [{"type": "text", "text": RetryPromptPart("Answer in JSON.").model_text()}]


def test_a_fallback_tool_result_is_not_an_error() -> None:
    messages: list[ModelMessage] = [
        ModelRequest([UserPromptPart("look")]),
        ModelResponse([ToolCallPart("a", {}, "t1"), ToolCallPart("a", {}, "t2")]),
        ModelRequest(
            [
                ToolReturnPart("a", "last good result, 3 min old: 42", "t1", outcome="fallback"),
                ToolReturnPart("a", "ran past 2 s", "t2", outcome="timeout"),
            ]
        ),
    ]
    _, wire = _map_messages(messages)
    assert wire[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "last good result, 3 min old: 42", "is_error": False},
        {"type": "tool_result", "tool_use_id": "t2", "content": "ran past 2 s", "is_error": True},
    ]


def test_redacted_thinking_goes_back_redacted() -> None:
    mapper = _EventMapper(None)
    from anthropic.types import Message

    message = Message.model_validate(
        message_json(
            [
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "tool_use", "id": "t", "name": "f", "input": {}},
            ],
            "tool_use",
        )
    )
    for _ in mapper.message(message):
        pass
    response = mapper.response()
    assert response.parts[0] == ThinkingPart("", signature="opaque", provider="anthropic")
    _, wire = _map_messages([user("x"), response])
    assert wire[1]["content"] == [
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "tool_use", "id": "t", "name": "f", "input": {}},
    ]


def test_attachments_pdf_and_unsupported() -> None:
    pdf = BinaryContent(b"%PDF-1.7", "application/pdf")
    _, wire = _map_messages([ModelRequest([UserPromptPart("", attachments=[pdf, ImageUrl("https://x.test/a.pdf")])])])
    assert wire[0]["content"] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjc="}},
        {"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}},
    ]
    with pytest.raises(UserError, match="image/bmp"):
        _map_messages([ModelRequest([UserPromptPart("x", attachments=[BinaryContent(b"BM", "image/bmp")])])])
    with pytest.raises(UserError, match="invalid base64"):
        _map_messages([ModelRequest([UserPromptPart("x", attachments=[ImageUrl("data:image/png;base64,@@@")])])])


def test_cache_tokens_count_as_input() -> None:
    from anthropic.types import Message

    body = message_json([{"type": "text", "text": "hi"}], usage=(5, 3))
    body["usage"].update(cache_read_input_tokens=100, cache_creation_input_tokens=20)
    mapper = _EventMapper(None)
    for _ in mapper.message(Message.model_validate(body)):
        pass
    response = mapper.response()
    assert tokens(response.usage) == (125, 3)
    assert response.provider_details is not None
    assert response.provider_details["cache_read_input_tokens"] == 100
    assert response.provider_details["cache_creation_input_tokens"] == 20


@pytest.mark.parametrize(
    ("stop", "finish"),
    [("end_turn", "stop"), ("max_tokens", "length"), ("tool_use", "tool_call"), ("refusal", "content_filter")],
)
def test_stop_reasons(stop: str, finish: str) -> None:
    from anthropic.types import Message

    mapper = _EventMapper(None)
    for _ in mapper.message(Message.model_validate(message_json([{"type": "text", "text": "x"}], stop))):
        pass
    assert mapper.response().finish_reason == finish


def test_count_tokens_is_an_offline_estimate() -> None:
    model = AnthropicModel("claude-test", api_key=KEY)
    messages: list[ModelMessage] = [
        ModelRequest(
            [SystemPromptPart("a" * 7), UserPromptPart("b" * 8, attachments=[ImageUrl("https://x.test/i.png")])]
        ),
        ModelResponse([TextPart("c" * 35), ToolCallPart("f", "{}", "t")]),
        ModelRequest([ToolReturnPart("f", "d" * 4, "t")]),
    ]
    # ceil(7/3.5)=2, ceil(8/3.5)=3 + 1600, ceil(35/3.5)=10, ceil(3/3.5)=1, ceil(4/3.5)=2
    assert model.count_tokens(messages) == 2 + 3 + 1600 + 10 + 1 + 2


# ---- configuration ------------------------------------------------------------------------------------------


def test_key_from_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingCredentialError, match="ANTHROPIC_API_KEY"):
        AnthropicModel("claude-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    model = infer_model("anthropic:claude-sonnet-4-5", Settings())
    assert isinstance(model, AnthropicModel)
    assert model.name == "anthropic:claude-sonnet-4-5"
    assert model.model_name == "claude-sonnet-4-5"
    assert model.supports_streaming
    with pytest.raises(UserError, match="needs a model name"):
        infer_model("anthropic:", Settings())


# ---- the agent loop -----------------------------------------------------------------------------------------


def weather_agent(model: AnthropicModel) -> Agent[None, str]:
    agent = Agent(model=model, instructions="Be brief.")

    @agent.tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"Sunny in {city}"

    return agent


async def test_agent_run_with_a_tool_call(server: ReplayServer) -> None:
    server.serve(
        [
            json_reply(
                message_json(
                    [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
                    "tool_use",
                    usage=(20, 5),
                )
            ),
            json_reply(message_json([{"type": "text", "text": "It is sunny in Paris."}], usage=(30, 6))),
        ]
    )
    model = model_for(server, "claude-test")
    result = await weather_agent(model).run("Weather in Paris?")
    assert result.output == "It is sunny in Paris."
    assert (result.usage.requests, result.usage.tool_calls, tokens(result.usage)) == (2, 1, (50, 11))
    first, second = (r.body for r in server.received)
    assert first["system"] == "Be brief."
    assert first["tools"][0]["name"] == "get_weather"
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny in Paris", "is_error": False}
            ],
        },
    ]
    await model.aclose()


async def test_agent_streamed_run(server: ReplayServer) -> None:
    call_start = {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}}
    args = [{"type": "input_json_delta", "partial_json": p} for p in ('{"city": ', '"Rome"}')]
    thinking = {"type": "thinking", "thinking": "", "signature": ""}
    thinking_deltas = [
        {"type": "thinking_delta", "thinking": "Use the tool."},
        {"type": "signature_delta", "signature": "s1"},
    ]
    text = [{"type": "text_delta", "text": t} for t in ("Sunny ", "in Rome.")]
    server.serve(
        [
            sse_reply(stream_events([(thinking, thinking_deltas), (call_start, args)], "tool_use")),
            sse_reply(stream_events([({"type": "text", "text": ""}, text)])),
        ]
    )
    model = model_for(server, "claude-test")
    events: list[object] = []

    async def sink(event: object) -> None:
        events.append(event)

    result = await weather_agent(model).run("Weather in Rome?", event_sink=sink)
    assert result.output == "Sunny in Rome."
    assert [e.delta for e in events if isinstance(e, TextDelta)] == ["Sunny ", "in Rome."]
    assert [e.delta for e in events if isinstance(e, ThinkingDelta)] == ["Use the tool."]
    assert [e.delta for e in events if isinstance(e, ToolCallArgsDelta)] == ['{"city": ', '"Rome"}']
    assert all(r.body["stream"] is True for r in server.received)
    sent_back = server.received[1].body["messages"]
    # The streamed thinking comes back with its signature, as it would from a complete response.
    assert sent_back[1]["content"] == [
        {"type": "thinking", "thinking": "Use the tool.", "signature": "s1"},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    await model.aclose()


def test_run_sync_twice_reuses_the_model_across_event_loops(server: ReplayServer) -> None:
    server.serve(
        [
            json_reply(message_json([{"type": "text", "text": "one"}])),
            json_reply(message_json([{"type": "text", "text": "two"}])),
        ]
    )
    agent = Agent(model=model_for(server, "claude-test"))
    assert agent.run_sync("1").output == "one"
    assert agent.run_sync("2").output == "two"


# ---- structured output through the agent loop ---------------------------------------------------------------


class City(BaseModel):
    """A city and its population."""

    name: str
    population: int


BAD_CITY = {"name": "Paris", "population": "lots"}
GOOD_CITY = {"name": "Paris", "population": 2100000}
CITY_ERROR = (
    "Validation failed:\n- population: Input should be a valid integer, unable to parse string as an integer"
    "\n\nFix the errors and try again."
)


def assert_city_run_requests(server: ReplayServer) -> None:
    """Both requests offered only `final_result` with `any`; the second answered the bad call with the error."""
    first, second = (r.body for r in server.received)
    for body in (first, second):
        assert body["tool_choice"] == {"type": "any"}
        assert [t["name"] for t in body["tools"]] == ["final_result"]
        schema = body["tools"][0]["input_schema"]
        assert schema["properties"] == {"name": {"type": "string"}, "population": {"type": "integer"}}
        assert sorted(schema["required"]) == ["name", "population"]
    assert second["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "The biggest city in France?"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "final_result", "input": BAD_CITY}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": CITY_ERROR, "is_error": True}],
        },
    ]


async def test_structured_output_with_a_validation_retry(server: ReplayServer) -> None:
    def final_result(call_id: str, args: dict[str, Any]) -> Interaction:
        block = {"type": "tool_use", "id": call_id, "name": "final_result", "input": args}
        return json_reply(message_json([block], "tool_use"))

    server.serve([final_result("toolu_1", BAD_CITY), final_result("toolu_2", GOOD_CITY)])
    model = model_for(server, "claude-test")
    result = await Agent(model=model, output_type=City).run("The biggest city in France?")
    assert result.output == City(name="Paris", population=2100000)
    assert result.usage.requests == 2
    assert_city_run_requests(server)
    assert all("stream" not in r.body or r.body["stream"] is False for r in server.received)
    await model.aclose()


async def test_streamed_structured_output_with_a_validation_retry(server: ReplayServer) -> None:
    def final_result(call_id: str, pieces: list[str]) -> Interaction:
        start = {"type": "tool_use", "id": call_id, "name": "final_result", "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
        return sse_reply(stream_events([(start, deltas)], "tool_use"))

    server.serve(
        [
            final_result("toolu_1", ['{"name": "Par', 'is", "population": ', '"lots"}']),
            final_result("toolu_2", ['{"name": "Pa', 'ris", "popu', 'lation": 2100', "000}"]),
        ]
    )
    model = model_for(server, "claude-test")
    outputs: list[City] = []
    async with Agent(model=model, output_type=City).run_stream("The biggest city in France?") as run:
        async for output in run.stream_output():
            outputs.append(output)
    *partials, final = outputs
    assert final == City(name="Paris", population=2100000)
    # Partial objects from both attempts (the first one's bad `population` stays unset), then the validated output.
    # Typed wider than `City` says: partial objects leave fields not yet received as `None`.
    seen: list[tuple[str, int | None]] = [(p.name, p.population) for p in partials[:4]]
    assert seen == [
        ("Par", None),
        ("Paris", None),
        ("Pa", None),
        ("Paris", None),
    ]
    assert len(partials) > 4 and all(p.name == "Paris" for p in partials[4:])  # then the second call's number
    assert all(isinstance(p, City) for p in outputs)
    assert (await run.get_output()) == final
    assert_city_run_requests(server)
    assert all(r.body["stream"] is True for r in server.received)
    await model.aclose()
