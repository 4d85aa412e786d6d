"""`OpenAIResponsesModel` against recorded OpenAI Responses exchanges, replayed over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from miniagent import Agent
from miniagent.errors import (
    ContextLengthExceeded,
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
)
from miniagent.models.openai_responses import OpenAIResponsesModel, _map_messages
from miniagent.usage import Usage
from tests._replay import Interaction, ReplayServer, load_cassette

pytestmark = pytest.mark.anyio

CASSETTES = Path(__file__).parent / "cassettes" / "openai_responses"
KEY = "sk-test-dummy-key-0000"


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with ReplayServer() as server:
        yield server


@pytest.fixture
def server(replay: ReplayServer) -> ReplayServer:
    replay.serve([])
    return replay


def make_model(server: ReplayServer, name: str = "gpt-4o", **kwargs: Any) -> OpenAIResponsesModel:
    kwargs.setdefault("timeout_s", 10)
    return OpenAIResponsesModel(name, base_url=server.url("/v1"), api_key=KEY, **kwargs)


def cassette(name: str) -> list[Interaction]:
    return load_cassette(CASSETTES / f"{name}.yaml")


def tool(name: str, properties: dict[str, Any]) -> ToolDefinition:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return ToolDefinition(name, "", schema)


CAPITAL = ModelRequestParameters(function_tools=[tool("get_capital", {"country": {"type": "string"}})])
LOCATION = ModelRequestParameters(function_tools=[tool("get_location", {"loc_name": {"type": "string"}})])
NO_TOOLS = ModelRequestParameters()


async def stream(
    model: OpenAIResponsesModel, messages: list[ModelMessage], params: ModelRequestParameters
) -> tuple[list[StreamChunk], ModelResponse]:
    chunks = [c async for c in model.request_stream(messages, None, params)]
    assembler = ResponseAssembler(model.name)
    for chunk in chunks:
        assembler.add(chunk)
    return chunks, assembler.response()


def json_reply(body: dict[str, Any], status: int = 200, headers: list[tuple[str, str]] | None = None) -> Interaction:
    return Interaction(
        "POST",
        "/v1/responses",
        status,
        json.dumps(body).encode(),
        headers=[("content-type", "application/json"), *(headers or [])],
    )


def sse_reply(events: list[dict[str, Any]], **kwargs: Any) -> Interaction:
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
    return Interaction("POST", "/v1/responses", 200, body, headers=[("content-type", "text/event-stream")], **kwargs)


def response_body(output: list[dict[str, Any]], *, usage: tuple[int, int] = (10, 5), **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "gpt-test-2025",
        "status": "completed",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": usage[0],
            "input_tokens_details": {"cached_tokens": 3},
            "output_tokens": usage[1],
            "output_tokens_details": {"reasoning_tokens": 2},
            "total_tokens": sum(usage),
        },
    }
    body.update(extra)
    return body


def message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{call_id}", "call_id": call_id, "name": name, "arguments": arguments}


def text_events(text_deltas: list[str], *, usage: tuple[int, int] = (10, 5)) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"type": "response.created", "sequence_number": 0, "response": response_body([], status="in_progress")},
        {
            "type": "response.output_item.added",
            "sequence_number": 1,
            "output_index": 0,
            "item": {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []},
        },
    ]
    for i, delta in enumerate(text_deltas):
        events.append(
            {
                "type": "response.output_text.delta",
                "sequence_number": 2 + i,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": delta,
                "logprobs": [],
            }
        )
    final = response_body([message("".join(text_deltas))], usage=usage)
    events.append({"type": "response.completed", "sequence_number": 99, "response": final})
    return events


def call_events(call_id: str, name: str, pieces: list[str]) -> list[dict[str, Any]]:
    item = call(call_id, name, "")
    events: list[dict[str, Any]] = [
        {"type": "response.created", "sequence_number": 0, "response": response_body([], status="in_progress")},
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": item},
    ]
    for i, piece in enumerate(pieces):
        events.append(
            {
                "type": "response.function_call_arguments.delta",
                "sequence_number": 2 + i,
                "item_id": item["id"],
                "output_index": 0,
                "delta": piece,
            }
        )
    done = {**item, "arguments": "".join(pieces)}
    events.append({"type": "response.output_item.done", "sequence_number": 50, "output_index": 0, "item": done})
    events.append({"type": "response.completed", "sequence_number": 51, "response": response_body([done])})
    return events


# ---- recorded exchanges ---------------------------------------------------------------------------------------


async def test_simple_response(server: ReplayServer) -> None:
    server.serve(cassette("test_openai_responses_model_simple_response"))
    model = make_model(server)
    response = await model.request([ModelRequest([UserPromptPart("What is the capital of France?")])], None, NO_TOOLS)
    assert response.parts == [TextPart("The capital of France is Paris.")]
    assert response.usage == Usage(input_tokens=14, output_tokens=8)
    assert response.finish_reason == "stop"
    assert response.model_name == "gpt-4o-2024-08-06"
    assert response.provider_details == {
        "response_id": "resp_68c2e8c147ac819491bcd667055eadbc02e845978fbbb592",
        "status": "completed",
        "cached_tokens": 0,
        "reasoning_tokens": 0,
    }
    sent = server.received[0].body
    assert sent == {
        "model": "gpt-4o",
        "input": [{"role": "user", "content": "What is the capital of France?"}],
        "store": False,
        "stream": False,
    }
    assert server.received[0].headers["authorization"] == f"Bearer {KEY}"
    assert not server.pending


async def test_tool_call_round_trip(server: ReplayServer) -> None:
    server.serve(cassette("test_openai_responses_model_simple_response_with_tool_call"))
    model = make_model(server)
    history: list[ModelMessage] = [ModelRequest([UserPromptPart("What is the capital of PotatoLand?")])]
    first = await model.request(history, None, CAPITAL)
    assert first.parts == [ToolCallPart("get_capital", '{"country":"PotatoLand"}', "call_YfwRsW8sUxDKipwyhWTzOXCA")]
    assert first.finish_reason == "tool_call"
    assert first.usage == Usage(input_tokens=40, output_tokens=18)
    history += [first, ModelRequest([ToolReturnPart("get_capital", "Potato City", "call_YfwRsW8sUxDKipwyhWTzOXCA")])]
    second = await model.request(history, None, CAPITAL)
    assert second.text == "The capital of PotatoLand is Potato City."
    assert second.finish_reason == "stop"
    first_body, second_body = (r.body for r in server.received)
    assert first_body["tools"] == [
        {
            "type": "function",
            "name": "get_capital",
            "description": "",
            "parameters": CAPITAL.function_tools[0].parameters_json_schema,
            "strict": False,
        }
    ]
    assert "tool_choice" not in first_body
    recorded = server_recorded_inputs("test_openai_responses_model_simple_response_with_tool_call")
    assert second_body["input"] == [_without(item, "status") for item in recorded[1]]


def server_recorded_inputs(name: str) -> list[list[dict[str, Any]]]:
    return [i.request_body["input"] for i in cassette(name)]


def _without(item: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in keys}


async def test_parallel_calls_with_a_retry_prompt(server: ReplayServer) -> None:
    name = "test_openai_responses_model_retry"
    server.serve(cassette(name))
    model = make_model(server)
    history: list[ModelMessage] = [ModelRequest([UserPromptPart("What is the location of Londos and London?")])]
    first = await model.request(history, None, LOCATION)
    assert [(p.tool_name, p.args, p.tool_call_id) for p in first.tool_calls] == [
        ("get_location", '{"loc_name":"Londos"}', "call_LWVp74L5HaH2KNvgVz9PJsrj"),
        ("get_location", '{"loc_name":"London"}', "call_YnRAWeTyxI91m5uNa5bxXwVO"),
    ]
    retry = RetryPromptPart(
        'Wrong location, I only know about "London".',
        tool_name="get_location",
        tool_call_id="call_LWVp74L5HaH2KNvgVz9PJsrj",
    )
    answer = ToolReturnPart("get_location", {"lat": 51, "lng": 0}, "call_YnRAWeTyxI91m5uNa5bxXwVO")
    history += [first, ModelRequest([retry, answer])]
    second = await model.request(history, None, LOCATION)
    assert second.text.startswith('It seems "Londos" might be incorrect')
    assert second.usage == Usage(input_tokens=335, output_tokens=44)
    recorded = server_recorded_inputs(name)[1]
    # pydantic-ai sent an empty assistant message before the calls; we send none.
    assert server.received[1].body["input"] == [
        item for item in recorded if item != {"content": "", "role": "assistant"}
    ]


async def test_native_output_exchange_parses(server: ReplayServer) -> None:
    server.serve(cassette("test_native_output"))
    model = make_model(server)
    params = ModelRequestParameters(function_tools=[ToolDefinition("get_user_country", "", {"type": "object"})])
    history: list[ModelMessage] = [ModelRequest([UserPromptPart("What is the largest city in the user country?")])]
    first = await model.request(history, None, params)
    assert first.parts == [ToolCallPart("get_user_country", "{}", "call_tTAThu8l2S9hNky2krdwijGP")]
    history += [first, ModelRequest([ToolReturnPart("get_user_country", "Mexico", "call_tTAThu8l2S9hNky2krdwijGP")])]
    second = await model.request(history, None, params)
    assert json.loads(second.text) == {"city": "Mexico City", "country": "Mexico"}


async def test_image_url_input(server: ReplayServer) -> None:
    name = "test_openai_responses_image_url_input"
    server.serve(cassette(name))
    model = make_model(server)
    url = "https://t3.ftcdn.net/jpg/00/85/79/92/360_F_85799278_0BBGV9OAdQDTLnKwAPBCcg1J7QtiieJY.jpg"
    response = await model.request(
        [ModelRequest([UserPromptPart("hello", attachments=[ImageUrl(url)])])], None, NO_TOOLS
    )
    assert "potato" in response.text
    assert response.usage == Usage(input_tokens=663, output_tokens=20)
    assert server.received[0].body["input"] == server_recorded_inputs(name)[0]


async def test_streamed_tool_call_then_text(server: ReplayServer) -> None:
    name = "test_openai_responses_stream"
    server.serve(cassette(name))
    model = make_model(server)
    history: list[ModelMessage] = [ModelRequest([UserPromptPart("What is the capital of France?")])]
    chunks, first = await stream(model, history, CAPITAL)
    assert chunks[0] == ToolCallChunk(0, tool_name="get_capital", tool_call_id="call_kL0PCQV7M2WMoVX8V8OtYSAL")
    assert [c.args_delta for c in chunks if isinstance(c, ToolCallChunk)][1:] == [
        '{"',
        "country",
        '":"',
        "France",
        '"}',
    ]
    assert first.parts == [ToolCallPart("get_capital", '{"country":"France"}', "call_kL0PCQV7M2WMoVX8V8OtYSAL")]
    assert first.usage == Usage(input_tokens=255, output_tokens=16)
    assert first.finish_reason == "tool_call"
    assert server.received[0].body["stream"] is True
    history += [first, ModelRequest([ToolReturnPart("get_capital", "Paris", "call_kL0PCQV7M2WMoVX8V8OtYSAL")])]
    chunks, second = await stream(model, history, CAPITAL)
    assert second.text == "The capital of France is Paris."
    assert len([c for c in chunks if isinstance(c, TextChunk)]) > 1
    assert isinstance(chunks[-1], StreamDone)
    assert second.provider_details is not None
    assert second.provider_details["response_id"] == "resp_67e554a21aa88191b65876ac5e5bbe0406c52f0e511c76ed"
    assert server.received[1].body["input"][1:] == [
        {
            "type": "function_call",
            "call_id": "call_kL0PCQV7M2WMoVX8V8OtYSAL",
            "name": "get_capital",
            "arguments": '{"country":"France"}',
        },
        {"type": "function_call_output", "call_id": "call_kL0PCQV7M2WMoVX8V8OtYSAL", "output": "Paris"},
    ]


async def test_streamed_reasoning_is_sent_back_encrypted(server: ReplayServer) -> None:
    name = "test_openai_responses_phase_streamed_on_part_start"
    recorded = cassette(name)
    server.serve(recorded)
    model = make_model(server, "gpt-5.5")
    instructions = "Briefly narrate what you are about to do before calling each tool."
    history: list[ModelMessage] = [
        ModelRequest([SystemPromptPart(instructions), UserPromptPart("What is the capital of PotatoLand?")])
    ]
    _, first = await stream(model, history, CAPITAL)
    assert [type(p) for p in first.parts] == [TextPart, ToolCallPart]  # the reasoning had no summary
    assert first.text == "I\u2019ll check the capital lookup tool for \u201cPotatoLand.\u201d"
    assert first.parts[1] == ToolCallPart("get_capital", '{"country":"PotatoLand"}', "call_LabG58Uhrq9kZvR52BYKjToD")
    assert first.model_name == "gpt-5.5-2026-04-23"
    sent = server.received[0].body
    assert sent["instructions"] == instructions
    assert sent["include"] == ["reasoning.encrypted_content"]
    assert sent["store"] is False
    history += [first, ModelRequest([ToolReturnPart("get_capital", "Potato City", "call_LabG58Uhrq9kZvR52BYKjToD")])]
    _, second = await stream(model, history, CAPITAL)
    assert second.text == "The capital of PotatoLand is **Potato City**."
    recorded_reasoning = recorded[1].request_body["input"][1]
    assert server.received[1].body["input"] == [
        {"role": "user", "content": "What is the capital of PotatoLand?"},
        {
            "type": "reasoning",
            "id": recorded_reasoning["id"],
            "summary": [],
            "encrypted_content": recorded_reasoning["encrypted_content"],
        },
        {"role": "assistant", "content": first.text},
        {
            "type": "function_call",
            "call_id": "call_LabG58Uhrq9kZvR52BYKjToD",
            "name": "get_capital",
            "arguments": '{"country":"PotatoLand"}',
        },
        {"type": "function_call_output", "call_id": "call_LabG58Uhrq9kZvR52BYKjToD", "output": "Potato City"},
    ]


async def test_streamed_reasoning_summaries(server: ReplayServer) -> None:
    server.serve(cassette("test_openai_responses_thinking_part_iter"))
    model = make_model(server, "o3-mini", reasoning_effort="high", reasoning_summary="detailed")
    chunks, response = await stream(model, [ModelRequest([UserPromptPart("How do I cross the street?")])], NO_TOOLS)
    assert len([c for c in chunks if isinstance(c, ThinkingChunk)]) == 383
    thinking, text = response.parts
    assert isinstance(thinking, ThinkingPart) and isinstance(text, TextPart)
    assert thinking.content.startswith("**Providing street crossing instructions**")
    assert thinking.content.count("\n\n**") == 3  # four summaries, one paragraph each
    assert text.content.startswith("I'm not a road safety professional")
    assert response.provider_details is not None
    assert response.provider_details["reasoning_tokens"] == response.usage.reasoning_tokens > 0
    [stored] = response.provider_details["reasoning"]
    assert stored["id"] == "rs_68c42d1d0878819d8266007cd3d1402c08fbf9b1584184ff"
    assert len(stored["summary"]) == 4 and stored["encrypted_content"].startswith("gAAAA")
    sent = server.received[0].body
    assert sent["reasoning"] == {"effort": "high", "summary": "detailed"}
    assert sent["include"] == ["reasoning.encrypted_content"]


async def test_recorded_http_error(server: ReplayServer) -> None:
    server.serve(cassette("test_openai_responses_model_http_error") * 2)
    model = make_model(server)
    settings = ModelSettings(temperature=-1)
    hello: list[ModelMessage] = [ModelRequest([UserPromptPart("What is the capital of France?")])]
    with pytest.raises(ModelBadRequest) as caught:
        async for _ in model.request_stream(hello, settings, NO_TOOLS):
            pass
    error = caught.value
    assert error.status_code == 400 and error.provider == "openai" and not error.retryable
    assert isinstance(error.body, dict) and error.body["code"] == "decimal_below_min_value"
    assert "Invalid 'temperature'" in str(error)
    with pytest.raises(ModelBadRequest):
        await model.request(hello, settings, NO_TOOLS)
    assert server.received[0].body["temperature"] == -1


# ---- mapping -------------------------------------------------------------------------------------------------


def test_history_mapping() -> None:
    signed = ThinkingPart(
        "plan", signature='{"id":"rs_1","encrypted_content":"enc"}', provider="openai"
    )  # from a complete response
    history: list[ModelMessage] = [
        ModelRequest(
            [
                SystemPromptPart("Be brief."),
                UserPromptPart(
                    "Look", attachments=[BinaryContent(b"\x89PNG", "image/png"), ImageUrl("https://x/y.png")]
                ),
            ]
        ),
        ModelResponse(
            [
                signed,
                ThinkingPart("other provider's", signature="sig", provider="anthropic"),
                TextPart("Checking. "),
                TextPart("One moment."),
                ToolCallPart("f", {"a": 1}, "c1"),
                ToolCallPart("g", "", "c2"),
            ]
        ),
        ModelRequest(
            [
                ToolReturnPart("f", "Error: the tool raised ValueError: bad", "c1", outcome="error"),
                RetryPromptPart("bad args", tool_name="g", tool_call_id="c2"),
                RetryPromptPart("answer in JSON"),
            ]
        ),
    ]
    instructions, items = _map_messages(history)
    assert instructions == "Be brief."
    assert items == [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Look"},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw==", "detail": "auto"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"},
            ],
        },
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "plan"}],
            "encrypted_content": "enc",
        },
        {"role": "assistant", "content": "Checking. One moment."},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "Error: the tool raised ValueError: bad"},
        {"type": "function_call_output", "call_id": "c2", "output": "bad args\n\nFix the errors and try again."},
        {"role": "user", "content": "answer in JSON\n\nFix the errors and try again."},
    ]


def test_unsupported_attachment() -> None:
    part = UserPromptPart("x", attachments=[BinaryContent(b"abc", "audio/wav")])
    with pytest.raises(UserError, match="audio/wav"):
        _map_messages([ModelRequest([part])])


async def test_complete_response_signs_reasoning_and_round_trips(server: ReplayServer) -> None:
    reasoning = {
        "type": "reasoning",
        "id": "rs_9",
        "encrypted_content": "gAAAA-secret",
        "summary": [{"type": "summary_text", "text": "First."}, {"type": "summary_text", "text": "Second."}],
    }
    server.serve(
        [
            json_reply(response_body([reasoning, call("c1", "get_capital", '{"country":"X"}')])),
            json_reply(response_body([message("Done.")])),
        ]
    )
    model = make_model(server, "o4-mini")
    history: list[ModelMessage] = [ModelRequest([UserPromptPart("Capital of X?")])]
    first = await model.request(history, None, CAPITAL)
    thinking = first.parts[0]
    assert isinstance(thinking, ThinkingPart)
    assert thinking.content == "First.\n\nSecond."
    assert thinking.provider == "openai"
    assert thinking.signature == '{"id":"rs_9","encrypted_content":"gAAAA-secret"}'
    assert first.usage == Usage(input_tokens=10, output_tokens=5, cache_read_tokens=3, reasoning_tokens=2)
    assert first.provider_details == {
        "response_id": "resp_1",
        "status": "completed",
        "cached_tokens": 3,
        "reasoning_tokens": 2,
    }
    history += [first, ModelRequest([ToolReturnPart("get_capital", "Y", "c1")])]
    await model.request(history, None, CAPITAL)
    assert server.received[1].body["input"][1] == {
        "type": "reasoning",
        "id": "rs_9",
        "summary": [{"type": "summary_text", "text": "First.\n\nSecond."}],
        "encrypted_content": "gAAAA-secret",
    }
    assert server.received[0].body["include"] == ["reasoning.encrypted_content"]


async def test_request_and_stream_build_the_same_response(server: ReplayServer) -> None:
    server.serve(cassette("test_openai_responses_stream")[:1])
    model = make_model(server)
    _, streamed = await stream(model, [ModelRequest([UserPromptPart("What is the capital of France?")])], CAPITAL)
    completed = json.loads(cassette("test_openai_responses_stream")[0].body.decode().split("data: ")[-1])
    server.serve([json_reply(completed["response"])])
    complete = await model.request([ModelRequest([UserPromptPart("What is the capital of France?")])], None, CAPITAL)
    assert complete.parts == streamed.parts
    assert complete.usage == streamed.usage
    assert complete.finish_reason == streamed.finish_reason
    assert complete.provider_details == streamed.provider_details


async def test_settings_and_required_tool_choice(server: ReplayServer) -> None:
    server.serve([json_reply(response_body([message("ok")]))])
    model = make_model(server)
    params = ModelRequestParameters(output_tools=[ToolDefinition("final_result", "The answer.", {"type": "object"})])
    params = ModelRequestParameters(output_tools=params.output_tools, allow_text_output=False)
    await model.request(HELLO, ModelSettings(max_tokens=64, temperature=0.5, top_p=0.9, seed=1), params)
    sent = server.received[0].body
    assert sent["tool_choice"] == "required"
    assert sent["max_output_tokens"] == 64 and sent["temperature"] == 0.5 and sent["top_p"] == 0.9
    assert "seed" not in sent and "include" not in sent and "reasoning" not in sent
    assert sent["instructions"] == "Be brief."


HELLO: list[ModelMessage] = [ModelRequest([SystemPromptPart("Be brief."), UserPromptPart("Hi")])]


@pytest.mark.parametrize(("reason", "finish"), [("max_output_tokens", "length"), ("content_filter", "content_filter")])
async def test_incomplete_response(server: ReplayServer, reason: str, finish: str) -> None:
    body = response_body([message("Par")], status="incomplete", incomplete_details={"reason": reason})
    server.serve([json_reply(body)])
    response = await make_model(server).request(HELLO, None, NO_TOOLS)
    assert response.finish_reason == finish
    assert response.provider_details is not None and response.provider_details["incomplete_reason"] == reason


# ---- faults --------------------------------------------------------------------------------------------------


def error_reply(
    status: int, message: str, code: str | None = None, headers: list[tuple[str, str]] | None = None
) -> Interaction:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return json_reply(body, status, headers)


async def test_rate_limited_with_retry_after(server: ReplayServer) -> None:
    server.serve(
        [
            error_reply(
                429, "Rate limit reached", "rate_limit_exceeded", [("retry-after", "7"), ("x-request-id", "req_42")]
            )
        ]
    )
    with pytest.raises(ModelRateLimited) as caught:
        await make_model(server).request(HELLO, None, NO_TOOLS)
    error = caught.value
    assert error.retry_after_s == 7 and error.retryable and error.request_id == "req_42" and error.provider == "openai"
    assert error.model_name == "openai-responses:gpt-4o"


async def test_exhausted_quota_is_not_retryable(server: ReplayServer) -> None:
    server.serve([error_reply(429, "You exceeded your current quota", "insufficient_quota")])
    with pytest.raises(ModelRateLimited) as caught:
        await make_model(server).request(HELLO, None, NO_TOOLS)
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("status", "code", "message", "cls", "retryable"),
    [
        (500, "server_error", "The server had an error", ModelHTTPError, True),
        (503, None, "Service unavailable", ModelOverloaded, True),
        (400, "context_length_exceeded", "Your input exceeds the context window", ContextLengthExceeded, False),
        (401, "invalid_api_key", f"Incorrect API key provided: {KEY}", ModelAuthError, False),
    ],
)
async def test_http_errors(
    server: ReplayServer, status: int, code: str | None, message: str, cls: type[ModelHTTPError], retryable: bool
) -> None:
    server.serve([error_reply(status, message, code)])
    with pytest.raises(cls) as caught:
        await make_model(server).request(HELLO, None, NO_TOOLS)
    assert type(caught.value) is cls
    assert caught.value.status_code == status and caught.value.retryable is retryable
    assert KEY not in str(caught.value) and KEY not in json.dumps(caught.value.body)


async def test_html_error_page(server: ReplayServer) -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    server.serve([Interaction("POST", "/v1/responses", 502, page, headers=[("content-type", "text/html")])])
    with pytest.raises(ModelHTTPError) as caught:
        await make_model(server).request(HELLO, None, NO_TOOLS)
    assert caught.value.status_code == 502 and caught.value.retryable
    assert "502 Bad Gateway" in str(caught.value)


async def test_html_page_with_status_200(server: ReplayServer) -> None:
    page = b"<html><head><title>Sign in</title></head></html>"
    server.serve([Interaction("POST", "/v1/responses", 200, page, headers=[("content-type", "text/html")])])
    with pytest.raises(ModelAPIError, match="not a Responses API response") as caught:
        await make_model(server).request(HELLO, None, NO_TOOLS)
    assert not caught.value.retryable


async def test_stream_cut_midway(server: ReplayServer) -> None:
    full = sse_reply(text_events(["Hello", " there", " friend"]))
    server.serve([sse_reply(text_events(["Hello", " there", " friend"]), cut_after=len(full.body) // 2)])
    chunks: list[StreamChunk] = []
    with pytest.raises(ModelAPIError, match="broke in the middle") as caught:
        async for chunk in make_model(server).request_stream(HELLO, None, NO_TOOLS):
            chunks.append(chunk)
    assert caught.value.retryable and caught.value.request_id == "resp_1"
    assert chunks  # what arrived before the cut was delivered


async def test_stream_ending_without_completion(server: ReplayServer) -> None:
    server.serve([sse_reply(text_events(["Hello"])[:-1])])
    with pytest.raises(ModelHTTPError, match="ended before the response was complete") as caught:
        async for _ in make_model(server).request_stream(HELLO, None, NO_TOOLS):
            pass
    assert caught.value.retryable


async def test_error_event_in_stream(server: ReplayServer) -> None:
    error = {
        "type": "error",
        "sequence_number": 3,
        "code": "rate_limit_exceeded",
        "message": "Slow down",
        "param": None,
    }
    server.serve([sse_reply([*text_events(["Hi"])[:3], error])])
    with pytest.raises(ModelRateLimited, match="Slow down") as caught:
        async for _ in make_model(server).request_stream(HELLO, None, NO_TOOLS):
            pass
    assert caught.value.retryable and caught.value.request_id == "resp_1"


async def test_failed_response_in_stream(server: ReplayServer) -> None:
    failed = response_body([], status="failed", error={"code": "server_error", "message": "Something broke"})
    server.serve(
        [sse_reply([*text_events(["Hi"])[:3], {"type": "response.failed", "sequence_number": 4, "response": failed}])]
    )
    with pytest.raises(ModelHTTPError, match="Something broke") as caught:
        async for _ in make_model(server).request_stream(HELLO, None, NO_TOOLS):
            pass
    assert caught.value.status_code == 500 and caught.value.retryable


async def test_failed_complete_response(server: ReplayServer) -> None:
    body = response_body([], status="failed", error={"code": "invalid_prompt", "message": "Prompt flagged"})
    server.serve([json_reply(body)])
    with pytest.raises(ModelBadRequest, match="Prompt flagged"):
        await make_model(server).request(HELLO, None, NO_TOOLS)


async def test_timeout(server: ReplayServer) -> None:
    reply = json_reply(response_body([message("late")]))
    reply.delay_s = 1.0
    server.serve([reply])
    with pytest.raises(ModelAPIError, match="did not answer in time") as caught:
        await make_model(server).request(HELLO, ModelSettings(timeout_s=0.2), NO_TOOLS)
    assert caught.value.retryable


async def test_connection_refused() -> None:
    model = OpenAIResponsesModel("gpt-4o", base_url="http://127.0.0.1:9/v1", api_key=KEY, timeout_s=5)
    with pytest.raises(ModelAPIError, match="Could not connect"):
        await model.request(HELLO, None, NO_TOOLS)


# ---- the agent loop ------------------------------------------------------------------------------------------


def weather_agent(model: OpenAIResponsesModel) -> Agent[None, str]:
    agent = Agent(model=model, instructions="Be brief.")

    @agent.tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"Sunny in {city}"

    return agent


async def test_agent_run_with_a_tool_call(server: ReplayServer) -> None:
    server.serve(
        [
            json_reply(response_body([call("c1", "get_weather", '{"city": "Paris"}')], usage=(20, 5))),
            json_reply(response_body([message("It is sunny in Paris.")], usage=(30, 6))),
        ]
    )
    result = await weather_agent(make_model(server)).run("Weather in Paris?")
    assert result.output == "It is sunny in Paris."
    assert result.usage.input_tokens == 50 and result.usage.output_tokens == 11 and result.usage.tool_calls == 1
    second = server.received[1].body
    assert second["instructions"] == "Be brief."
    assert second["input"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "Sunny in Paris"},
    ]


async def test_agent_streamed_run(server: ReplayServer) -> None:
    server.serve(
        [
            sse_reply(call_events("c1", "get_weather", ['{"city": ', '"Rome"}'])),
            sse_reply(text_events(["Sunny ", "in Rome."])),
        ]
    )
    events: list[object] = []

    async def sink(event: object) -> None:
        events.append(event)

    result = await weather_agent(make_model(server)).run("Weather in Rome?", event_sink=sink)
    assert result.output == "Sunny in Rome."
    assert [e.delta for e in events if isinstance(e, TextDelta)] == ["Sunny ", "in Rome."]
    assert [e.delta for e in events if isinstance(e, ToolCallArgsDelta)] == ['{"city": ', '"Rome"}']
    assert not [e for e in events if isinstance(e, ThinkingDelta)]
    assert server.received[1].body["input"][-1] == {
        "type": "function_call_output",
        "call_id": "c1",
        "output": "Sunny in Rome",
    }


def test_run_sync_twice_reuses_the_model_across_event_loops(server: ReplayServer) -> None:
    server.serve([json_reply(response_body([message("one")])), json_reply(response_body([message("two")]))])
    agent = Agent(model=make_model(server))
    assert agent.run_sync("1").output == "one"
    assert agent.run_sync("2").output == "two"


# ---- construction ---------------------------------------------------------------------------------------------


def test_missing_key() -> None:
    with pytest.raises(MissingCredentialError, match="OPENAI_API_KEY"):
        OpenAIResponsesModel("gpt-4o")


def test_from_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    model = OpenAIResponsesModel.from_spec(" gpt-5-mini ")
    assert model.name == "openai-responses:gpt-5-mini"
    assert model.model_name == "gpt-5-mini"
    assert model.supports_streaming
    assert repr(model) == "OpenAIResponsesModel('openai-responses:gpt-5-mini')"
    with pytest.raises(UserError, match="needs a model name"):
        OpenAIResponsesModel.from_spec("")
    with pytest.raises(UserError, match="model_name"):
        OpenAIResponsesModel("", api_key=KEY)


def test_count_tokens() -> None:
    model = OpenAIResponsesModel("gpt-4o", api_key=KEY)
    assert model.count_tokens(HELLO) > 0


async def test_stream_without_deltas_and_with_raw_reasoning(server: ReplayServer) -> None:
    # Servers that copy the API (vLLM, Ollama) may send raw reasoning, and a call's arguments only when done.
    item = call("c1", "get_capital", "")
    done = {**item, "arguments": '{"country":"X"}'}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "sequence_number": 0, "response": response_body([], status="in_progress")},
        {
            "type": "response.reasoning_text.delta",
            "sequence_number": 1,
            "item_id": "rs_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "thinking...",
        },
        {"type": "response.output_item.added", "sequence_number": 2, "output_index": 1, "item": item},
        {
            "type": "response.function_call_arguments.done",
            "sequence_number": 3,
            "item_id": item["id"],
            "output_index": 1,
            "name": "get_capital",
            "arguments": '{"country":"X"}',
        },
        {"type": "response.output_item.done", "sequence_number": 4, "output_index": 1, "item": done},
        {"type": "response.completed", "sequence_number": 5, "response": response_body([done])},
    ]
    server.serve([sse_reply(events)])
    _, response = await stream(make_model(server), HELLO, CAPITAL)
    assert response.parts == [ThinkingPart("thinking..."), ToolCallPart("get_capital", '{"country":"X"}', "c1")]


async def test_error_object_in_stream_data(server: ReplayServer) -> None:
    body = b'data: {"error": {"message": "Upstream overloaded", "code": "overloaded"}}\n\n'
    server.serve([Interaction("POST", "/v1/responses", 200, body, headers=[("content-type", "text/event-stream")])])
    with pytest.raises(ModelOverloaded, match="Upstream overloaded"):
        async for _ in make_model(server).request_stream(HELLO, None, NO_TOOLS):
            pass


async def test_pdf_attachment_and_text_after_calls(server: ReplayServer) -> None:
    history: list[ModelMessage] = [
        ModelRequest([UserPromptPart("", attachments=[BinaryContent(b"%PDF", "application/pdf")])]),
        ModelResponse([ToolCallPart("f", "{}", "c1"), TextPart("after")]),
    ]
    _, items = _map_messages(history)
    assert items == [
        {
            "role": "user",
            "content": [
                {
                    "type": "input_file",
                    "file_data": "data:application/pdf;base64,JVBERg==",
                    "filename": "attachment.pdf",
                }
            ],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"role": "assistant", "content": "after"},
    ]


async def test_aclose_and_reuse(server: ReplayServer) -> None:
    server.serve([json_reply(response_body([message("a")])), json_reply(response_body([message("b")]))])
    model = make_model(server)
    assert (await model.request(HELLO, None, NO_TOOLS)).text == "a"
    await model.aclose()
    assert (await model.request(HELLO, None, NO_TOOLS)).text == "b"  # a closed model opens a new pool on demand
    await model.aclose()
    await model.aclose()


# ---- structured output through the agent loop ------------------------------------------------------------------


class City(BaseModel):
    """A city and its population."""

    name: str
    population: int


BAD_CITY = '{"name": "Paris", "population": "lots"}'
GOOD_CITY = '{"name": "Paris", "population": 2100000}'
CITY_ERROR = (
    "Validation failed:\n- population: Input should be a valid integer, unable to parse string as an integer"
    "\n\nFix the errors and try again."
)


def assert_city_run_requests(server: ReplayServer) -> None:
    """Both requests offered only `final_result` with `required`; the second answered the bad call with the error."""
    first, second = (r.body for r in server.received)
    for body in (first, second):
        assert body["tool_choice"] == "required"
        assert [t["name"] for t in body["tools"]] == ["final_result"]
        parameters = body["tools"][0]["parameters"]
        assert parameters["properties"] == {"name": {"type": "string"}, "population": {"type": "integer"}}
        assert sorted(parameters["required"]) == ["name", "population"]
    assert second["input"] == [
        {"role": "user", "content": "The biggest city in France?"},
        {"type": "function_call", "call_id": "c1", "name": "final_result", "arguments": BAD_CITY},
        {"type": "function_call_output", "call_id": "c1", "output": CITY_ERROR},
    ]
    assert not server.pending


async def test_structured_output_with_a_validation_retry(server: ReplayServer) -> None:
    server.serve(
        [
            json_reply(response_body([call("c1", "final_result", BAD_CITY)])),
            json_reply(response_body([call("c2", "final_result", GOOD_CITY)])),
        ]
    )
    result = await Agent(model=make_model(server), output_type=City).run("The biggest city in France?")
    assert result.output == City(name="Paris", population=2100000)
    assert result.usage.requests == 2
    assert_city_run_requests(server)
    assert all(r.body["stream"] is False for r in server.received)


async def test_streamed_structured_output_with_a_validation_retry(server: ReplayServer) -> None:
    server.serve(
        [
            sse_reply(call_events("c1", "final_result", ['{"name": "Par', 'is", "population": ', '"lots"}'])),
            sse_reply(call_events("c2", "final_result", ['{"name": "Pa', 'ris", "popu', 'lation": 2100', "000}"])),
        ]
    )
    outputs: list[City] = []
    async with Agent(model=make_model(server), output_type=City).run_stream("The biggest city in France?") as run:
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
