"""`OpenAIChatModel` against a real Chat Completions server on 127.0.0.1 (uvicorn in a thread, raw ASGI)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pytest
import uvicorn
from openai import AsyncOpenAI, DefaultAsyncHttpxClient
from pydantic import BaseModel

from miniagent import Agent, ModelRequest, ModelResponse, TextPart, ThinkingPart, ToolCallPart, ToolReturnPart
from miniagent.errors import MissingCredentialError, ModelAPIError, ModelHTTPError, UserError
from miniagent.events import TextDelta, ToolCallArgsDelta
from miniagent.messages import ModelMessage, RetryPromptPart, SystemPromptPart, UserPromptPart
from miniagent.models import (
    ModelRequestParameters,
    ModelSettings,
    ResponseAssembler,
    StreamChunk,
    StreamDone,
    TextChunk,
    ToolCallChunk,
    ToolDefinition,
    infer_model,
)
from miniagent.models.openai_chat import OpenAIChatModel, _map_messages
from miniagent.settings import Settings
from miniagent.usage import Usage

pytestmark = pytest.mark.anyio

# ---- a Chat Completions server ------------------------------------------------------------------------------

Scope: TypeAlias = dict[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[dict[str, Any]]]
Send: TypeAlias = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Reply:
    """One scripted answer: a JSON body with a status, or (when `events` is set) a server-sent event stream."""

    body: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    events: list[dict[str, Any]] | None = None
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class ChatServer:
    """Answers POST /v1/chat/completions with the next scripted reply and records every request."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.received: list[Received] = []

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.received = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(scope["path"], headers, json.loads(raw) if raw else {}))
        if scope["path"] != "/v1/chat/completions" or not self.replies:
            await _send_json(send, 404, {"error": {"message": f"nothing scripted for {scope['path']}", "type": "x"}})
            return
        reply = self.replies.pop(0)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.events is None:
            await _send_json(send, reply.status, reply.body)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for event in reply.events:
            data = f"data: {json.dumps(event)}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


@dataclass
class Running:
    server: ChatServer
    base_url: str


@pytest.fixture(scope="module")
def chat_server() -> Iterator[Running]:
    app = ChatServer()
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP, and without it
    # every response waits ~40 ms for a delayed ACK (headers and body are written separately).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", ws="none", http="h11", log_level="error", access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the loopback server did not start"
        time.sleep(0.01)
    yield Running(app, f"http://127.0.0.1:{port}/v1")
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def server(chat_server: Running) -> ChatServer:
    chat_server.server.script()
    return chat_server.server


@pytest.fixture
def model(chat_server: Running) -> OpenAIChatModel:
    return OpenAIChatModel("gpt-test", base_url=chat_server.base_url, api_key="sk-test-key-123456")


# ---- wire payloads ------------------------------------------------------------------------------------------


def completion(
    content: str | None = None,
    *,
    calls: Sequence[tuple[str, str, str]] = (),  # (id, name, arguments)
    finish: str = "stop",
    usage: tuple[int, int] = (11, 7),
    delay: float = 0.0,
) -> Reply:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}} for cid, name, args in calls
        ]
    return Reply(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-test-2024",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
        },
        delay=delay,
    )


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, usage: tuple[int, int] | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-test-2024",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        event["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return event


def error(status: int, message: str) -> Reply:
    return Reply({"error": {"message": message, "type": "server_error", "code": None}}, status=status)


WEATHER = ToolDefinition(
    "get_weather",
    "Current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
PARAMS = ModelRequestParameters(function_tools=[WEATHER])
HELLO: list[ModelMessage] = [ModelRequest([SystemPromptPart("Be brief."), UserPromptPart("Hi")])]


async def collect(model: OpenAIChatModel, messages: list[ModelMessage], **kwargs: Any) -> list[StreamChunk]:
    params = kwargs.pop("params", PARAMS)
    return [c async for c in model.request_stream(messages, kwargs.pop("settings", None), params)]


# ---- requests -----------------------------------------------------------------------------------------------


async def test_text_response(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(completion("Hello!"))
    response = await model.request(HELLO, None, PARAMS)
    assert response.parts == [TextPart("Hello!")]
    assert response.usage == Usage(input_tokens=11, output_tokens=7)
    assert response.finish_reason == "stop"
    assert response.model_name == "gpt-test-2024"
    assert response.provider_details == {"response_id": "chatcmpl-1", "finish_reason": "stop"}

    (received,) = server.received
    assert received.path == "/v1/chat/completions"
    assert received.headers["authorization"] == "Bearer sk-test-key-123456"
    assert received.body["model"] == "gpt-test"
    assert received.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert received.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    assert "tool_choice" not in received.body
    assert "stream" not in received.body or received.body["stream"] is False


async def test_tool_call_response(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(
        completion(
            "Let me check.",
            calls=[("call_a", "get_weather", '{"city": "Paris"}'), ("call_b", "get_weather", '{"city":"Rome"}')],
            finish="tool_calls",
        )
    )
    response = await model.request(HELLO, None, PARAMS)
    assert response.parts == [
        TextPart("Let me check."),
        ToolCallPart("get_weather", '{"city": "Paris"}', "call_a"),
        ToolCallPart("get_weather", '{"city":"Rome"}', "call_b"),
    ]
    assert response.finish_reason == "tool_call"


async def test_history_mapping(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(completion("Done."))
    history: list[ModelMessage] = [
        ModelRequest([SystemPromptPart("Be brief."), UserPromptPart("Weather in Paris and Rome?")]),
        ModelResponse(
            [
                ThinkingPart("two cities"),
                TextPart("Checking."),
                ToolCallPart("get_weather", {"city": "Paris"}, "call_a"),
                ToolCallPart("get_weather", '{"town": "Rome"}', "call_b"),
            ]
        ),
        ModelRequest(
            [
                ToolReturnPart("get_weather", {"temp": 18}, "call_a"),
                RetryPromptPart("city: field required", tool_name="get_weather", tool_call_id="call_b"),
            ]
        ),
        ModelResponse([ToolCallPart("get_weather", "", "call_c")]),
        ModelRequest([ToolReturnPart("get_weather", "Sunny", "call_c")]),
        ModelResponse([]),
        ModelRequest([RetryPromptPart("The response was empty; answer the user.")]),
    ]
    await model.request(history, None, ModelRequestParameters())
    body = server.received[0].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"town": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 18}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "city: field required\n\nFix the errors and try again."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_c", "content": "Sunny"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "The response was empty; answer the user.\n\nFix the errors and try again."},
    ]
    assert "tools" not in body


async def test_the_sdk_param_transform_leaves_what_we_send_unchanged(model: OpenAIChatModel) -> None:
    # Messages and tools skip the SDK's parameter walk (see `OpenAIChatModel._create`); this is only right while
    # that walk is the identity for them.
    from openai._utils import async_maybe_transform
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming

    history: list[ModelMessage] = [
        ModelRequest([SystemPromptPart("Be brief."), UserPromptPart("Weather?")]),
        ModelResponse([TextPart("Checking."), ToolCallPart("get_weather", {"city": "Paris"}, "call_a")]),
        ModelRequest([ToolReturnPart("get_weather", {"temp": 18}, "call_a"), RetryPromptPart("bad", tool_call_id="x")]),
        ModelResponse([]),
        ModelRequest([RetryPromptPart("Answer.")]),
    ]
    body = {"model": "m", "messages": _map_messages(history), "tools": model._tools(PARAMS)}
    assert await async_maybe_transform(body, CompletionCreateParamsNonStreaming) == body


async def test_settings_and_required_tool_choice(chat_server: Running, server: ChatServer) -> None:
    output = ToolDefinition("final_result", "The answer.", {"type": "object", "properties": {}}, kind="output")
    params = ModelRequestParameters(function_tools=[WEATHER], output_tools=[output], allow_text_output=False)
    settings = ModelSettings(max_tokens=50, temperature=0.2, top_p=0.9, seed=7, timeout_s=30)
    openai_model = OpenAIChatModel("gpt-test", base_url=chat_server.base_url, api_key="sk-x")
    compatible = OpenAIChatModel("local-model", base_url=chat_server.base_url, provider="openai-compatible")
    server.script(completion("a"), completion("b"))

    await openai_model.request(HELLO, settings, params)
    await compatible.request(HELLO, settings, params)

    first, second = (r.body for r in server.received)
    assert first["tool_choice"] == second["tool_choice"] == "required"
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather", "final_result"]
    assert first["max_completion_tokens"] == 50
    assert "max_tokens" not in first
    assert second["max_tokens"] == 50
    assert "max_completion_tokens" not in second
    for body in (first, second):
        assert (body["temperature"], body["top_p"], body["seed"]) == (0.2, 0.9, 7)
    assert server.received[1].headers["authorization"] == "Bearer not-needed"
    await openai_model.aclose()
    await compatible.aclose()


# ---- streaming ----------------------------------------------------------------------------------------------


async def test_stream_text(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(
        Reply(
            events=[
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": "Hel"}),
                chunk({"content": "lo!"}),
                chunk({}, finish="stop"),
                chunk(None, usage=(5, 2)),
            ]
        )
    )
    chunks = await collect(model, HELLO)
    assert chunks == [
        TextChunk(0, "Hel"),
        TextChunk(0, "lo!"),
        StreamDone(
            usage=Usage(input_tokens=5, output_tokens=2),
            model_name="gpt-test-2024",
            finish_reason="stop",
            provider_details={"response_id": "chatcmpl-2", "finish_reason": "stop"},
        ),
    ]
    body = server.received[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_stream_tool_calls_with_argument_deltas(server: ChatServer, model: OpenAIChatModel) -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    server.script(
        Reply(
            events=[
                chunk({"role": "assistant", "content": "On it."}),
                chunk(call(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""})),
                chunk(call(0, function={"arguments": '{"ci'})),
                chunk(call(1, id="call_b", type="function", function={"name": "get_time", "arguments": "{}"})),
                chunk(call(0, function={"arguments": 'ty": "Paris"}'})),
                chunk({}, finish="tool_calls"),
                chunk(None, usage=(9, 4)),
            ]
        )
    )
    chunks = await collect(model, HELLO)
    assert chunks[:5] == [
        TextChunk(0, "On it."),
        ToolCallChunk(1, tool_name="get_weather", tool_call_id="call_a"),
        ToolCallChunk(1, args_delta='{"ci'),
        ToolCallChunk(2, tool_name="get_time", tool_call_id="call_b", args_delta="{}"),
        ToolCallChunk(1, args_delta='ty": "Paris"}'),
    ]
    done = chunks[-1]
    assert isinstance(done, StreamDone)
    assert done.finish_reason == "tool_call"
    assert done.usage == Usage(input_tokens=9, output_tokens=4)


async def test_stream_and_request_build_the_same_response(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(
        completion("Hi.", calls=[("call_a", "get_weather", '{"city": "Oslo"}')], finish="tool_calls", usage=(3, 4)),
        Reply(
            events=[
                chunk({"content": "Hi."}),
                chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "get_weather"}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}]}),
                chunk({}, finish="tool_calls"),
                chunk(None, usage=(3, 4)),
            ]
        ),
    )
    whole = await model.request(HELLO, None, PARAMS)
    assembler = ResponseAssembler()
    for piece in await collect(model, HELLO):
        assembler.add(piece)
    streamed_response = assembler.response()
    assert streamed_response.parts == whole.parts
    assert streamed_response.usage == whole.usage
    assert streamed_response.finish_reason == whole.finish_reason == "tool_call"


async def test_given_client_is_used_and_left_open(server: ChatServer, chat_server: Running) -> None:
    client = AsyncOpenAI(api_key="sk-mine", base_url=chat_server.base_url, max_retries=0)
    model = OpenAIChatModel("gpt-test", client=client)
    server.script(completion("hi"))
    assert (await model.request(HELLO, None, PARAMS)).text == "hi"
    assert server.received[0].headers["authorization"] == "Bearer sk-mine"
    await model.aclose()
    assert not client.is_closed()
    await client.close()


async def test_given_http_client_is_used_and_left_open(server: ChatServer, chat_server: Running) -> None:
    http_client = DefaultAsyncHttpxClient()
    model = OpenAIChatModel("gpt-test", base_url=chat_server.base_url, api_key="sk-pool", http_client=http_client)
    server.script(completion("hi"))
    assert (await model.request(HELLO, None, PARAMS)).text == "hi"
    await model.aclose()
    assert not http_client.is_closed
    await http_client.aclose()


async def test_reasoning_in_a_complete_response(server: ChatServer, model: OpenAIChatModel) -> None:
    reply = completion("42")
    reply.body["choices"][0]["message"]["reasoning_content"] = "six times seven"
    reply.body["choices"].append(
        {"index": 1, "message": {"role": "assistant", "content": "other"}, "finish_reason": "stop"}
    )
    server.script(reply)
    response = await model.request(HELLO, None, PARAMS)
    assert response.parts == [ThinkingPart("six times seven"), TextPart("42")]


async def test_reasoning_content_from_compatible_servers(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(Reply(events=[chunk({"reasoning_content": "hmm"}), chunk({"content": "42"}), chunk({}, "stop")]))
    chunks = await collect(model, HELLO)
    assert [type(c).__name__ for c in chunks] == ["ThinkingChunk", "TextChunk", "StreamDone"]
    assert chunks[1] == TextChunk(1, "42")


async def test_stream_tool_calls_without_index(server: ChatServer, model: OpenAIChatModel) -> None:
    # Some compatible servers leave out `index`: an id starts a new call, pieces without one continue it.
    server.script(
        Reply(
            events=[
                chunk({"tool_calls": [{"id": "a", "function": {"name": "get_weather", "arguments": '{"city":'}}]}),
                chunk({"tool_calls": [{"function": {"arguments": ' "Oslo"}'}}]}),
                chunk({"tool_calls": [{"id": "b", "function": {"name": "get_weather", "arguments": "{}"}}]}),
                chunk({}, finish="tool_calls"),
            ]
        )
    )
    assembler = ResponseAssembler()
    for piece in await collect(model, HELLO):
        assembler.add(piece)
    assert assembler.response().parts == [
        ToolCallPart("get_weather", '{"city": "Oslo"}', "a"),
        ToolCallPart("get_weather", "{}", "b"),
    ]


# ---- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "advice"), [(429, "wait and retry"), (500, "retry later"), (401, "OPENAI_API_KEY")])
async def test_http_errors(server: ChatServer, model: OpenAIChatModel, status: int, advice: str) -> None:
    server.script(error(status, "Incorrect API key provided: sk-test-key-123456 is wrong"))
    with pytest.raises(ModelHTTPError) as info:
        await model.request(HELLO, None, PARAMS)
    exc = info.value
    assert exc.status_code == status
    assert exc.model_name == "openai:gpt-test"
    assert advice in str(exc)
    assert f"HTTP {status}" in str(exc)
    assert "sk-test-key-123456" not in str(exc)
    assert "sk-test-key-123456" not in json.dumps(exc.body)
    assert exc.body == {"message": "Incorrect API key provided: *** is wrong", "type": "server_error", "code": None}
    assert f"HTTP {status}: Incorrect API key provided: *** is wrong. " in str(exc)
    assert len(server.received) == 1  # no SDK retries: miniagent owns retrying


@pytest.mark.parametrize(
    ("status", "advice"), [(401, "The server wants a key"), (400, "The server rejected the request")]
)
async def test_http_errors_from_compatible_servers(
    server: ChatServer, chat_server: Running, status: int, advice: str
) -> None:
    model = OpenAIChatModel("m", base_url=chat_server.base_url, provider="openai-compatible")
    server.script(error(status, "nope."))
    with pytest.raises(ModelHTTPError, match=f"HTTP {status}: nope. {advice}") as info:
        await model.request(HELLO, None, PARAMS)
    assert info.value.model_name == "openai-compatible:m"


async def test_stream_http_error(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(error(503, "overloaded"))
    with pytest.raises(ModelHTTPError) as info:
        await collect(model, HELLO)
    assert info.value.status_code == 503


async def test_error_event_inside_a_stream(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(Reply(events=[chunk({"content": "Hel"}), {"error": {"message": "model crashed", "type": "x"}}]))
    pieces: list[StreamChunk] = []
    with pytest.raises(ModelAPIError, match="model crashed. Retry the request"):
        async for piece in model.request_stream(HELLO, None, PARAMS):
            pieces.append(piece)
    assert pieces == [TextChunk(0, "Hel")]


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = OpenAIChatModel("m", base_url=f"http://user:secret@127.0.0.1:{port}/v1", provider="openai-compatible")
    with pytest.raises(ModelAPIError) as info:
        await model.request(HELLO, None, PARAMS)
    assert not isinstance(info.value, ModelHTTPError)
    message = str(info.value)
    assert f"127.0.0.1:{port}/v1" in message
    assert "Check that the server is running" in message
    assert "secret" not in message
    with pytest.raises(ModelAPIError):
        await collect(model, HELLO)
    await model.aclose()


async def test_timeout(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(completion("late", delay=1))
    with pytest.raises(ModelAPIError, match="did not answer in time") as info:
        await model.request(HELLO, ModelSettings(timeout_s=0.1), PARAMS)
    assert not isinstance(info.value, ModelHTTPError)


async def test_not_found(server: ChatServer, chat_server: Running) -> None:
    model = OpenAIChatModel("m", base_url=chat_server.base_url.replace("/v1", "/wrong"), provider="openai-compatible")
    with pytest.raises(ModelHTTPError) as info:
        await model.request(HELLO, None, PARAMS)
    assert info.value.status_code == 404
    assert "Check the model name and the base URL" in str(info.value)
    await model.aclose()


# ---- the agent loop -----------------------------------------------------------------------------------------


def weather_agent(model: OpenAIChatModel) -> Agent[None, str]:
    agent = Agent(model=model, instructions="Be brief.")

    @agent.tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"Sunny in {city}"

    return agent


async def test_agent_run_with_a_tool_call(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(
        completion(None, calls=[("call_1", "get_weather", '{"city": "Paris"}')], finish="tool_calls", usage=(20, 5)),
        completion("It is sunny in Paris.", usage=(30, 6)),
    )
    result = await weather_agent(model).run("Weather in Paris?")
    assert result.output == "It is sunny in Paris."
    usage = result.usage
    # Tokens only: the cost of the made-up 'gpt-test' is the price table's business (tests/test_cost*).
    assert (usage.requests, usage.tool_calls, usage.input_tokens, usage.output_tokens) == (2, 1, 50, 11)
    assert result.model_name == "openai:gpt-test"
    second = server.received[1].body["messages"]
    assert second[-2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny in Paris"},
    ]


async def test_agent_streamed_run(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(
        Reply(
            events=[
                chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": ""}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Rome"}'}}]}),
                chunk({}, finish="tool_calls"),
            ]
        ),
        Reply(events=[chunk({"content": "Sunny "}), chunk({"content": "in Rome."}), chunk({}, finish="stop")]),
    )
    events: list[object] = []

    async def sink(event: object) -> None:
        events.append(event)

    result = await weather_agent(model).run("Weather in Rome?", event_sink=sink)
    assert result.output == "Sunny in Rome."
    assert [e.delta for e in events if isinstance(e, TextDelta)] == ["Sunny ", "in Rome."]
    assert [e.delta for e in events if isinstance(e, ToolCallArgsDelta)] == ['{"city": "Rome"}']


def test_run_sync_twice_reuses_the_model_across_event_loops(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(completion("one"), completion("two"))
    agent = Agent(model=model)
    assert agent.run_sync("1").output == "one"
    assert agent.run_sync("2").output == "two"


async def test_aclose_and_reuse(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(completion("a"), completion("b"))
    await model.request(HELLO, None, PARAMS)
    await model.aclose()
    await model.request(HELLO, None, PARAMS)  # a closed model opens a new pool on demand
    await model.aclose()
    await model.aclose()


# ---- construction and model strings -------------------------------------------------------------------------


def test_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(MissingCredentialError, match="OPENAI_API_KEY"):
        OpenAIChatModel("gpt-4o-mini")
    with pytest.raises(MissingCredentialError):
        infer_model("openai:gpt-4o-mini", Settings())


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    model = infer_model("openai:gpt-4o-mini", Settings())
    assert isinstance(model, OpenAIChatModel)
    assert model.name == "openai:gpt-4o-mini"
    assert model.model_name == "gpt-4o-mini"
    assert repr(model) == "OpenAIChatModel('openai:gpt-4o-mini')"


def test_openai_compatible_spec() -> None:
    model = infer_model("openai-compatible:http://127.0.0.1:8080/v1#qwen2.5:7b", Settings())
    assert isinstance(model, OpenAIChatModel)
    assert model.name == "openai-compatible:qwen2.5:7b"
    assert model._base_url == "http://127.0.0.1:8080/v1"
    assert model.supports_streaming


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("openai-compatible:http://127.0.0.1:8080/v1", "add '#' and the model"),
        ("openai-compatible:http://127.0.0.1:8080/v1#", "add '#' and the model"),
        ("openai-compatible:localhost:8080#m", "http\\(s\\) URL"),
        ("openai-compatible:#m", "http\\(s\\) URL"),
        ("openai:", "needs a model name"),
    ],
)
def test_malformed_specs(spec: str, match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    with pytest.raises(UserError, match=match):
        infer_model(spec, Settings())


def test_bad_arguments() -> None:
    with pytest.raises(UserError, match="provider"):
        OpenAIChatModel("m", provider="azure", api_key="k")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="model_name"):
        OpenAIChatModel("", api_key="k")


# ---- structured output through the agent loop ---------------------------------------------------------------


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


def assert_city_run_requests(server: ChatServer) -> None:
    """Both requests offered only `final_result` with `required`; the second answered the bad call with the error."""
    first, second = (r.body for r in server.received)
    for body in (first, second):
        assert body["tool_choice"] == "required"
        assert [t["function"]["name"] for t in body["tools"]] == ["final_result"]
        parameters = body["tools"][0]["function"]["parameters"]
        assert parameters["properties"] == {"name": {"type": "string"}, "population": {"type": "integer"}}
        assert sorted(parameters["required"]) == ["name", "population"]
    assert second["messages"][-2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "final_result", "arguments": BAD_CITY}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": CITY_ERROR},
    ]


async def test_structured_output_with_a_validation_retry(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(
        completion(None, calls=[("call_1", "final_result", BAD_CITY)], finish="tool_calls"),
        completion(None, calls=[("call_2", "final_result", GOOD_CITY)], finish="tool_calls"),
    )
    result = await Agent(model=model, output_type=City).run("The biggest city in France?")
    assert result.output == City(name="Paris", population=2100000)
    assert result.usage.requests == 2
    assert_city_run_requests(server)
    assert all("stream" not in r.body or r.body["stream"] is False for r in server.received)


async def test_streamed_structured_output_with_a_validation_retry(server: ChatServer, model: OpenAIChatModel) -> None:
    def call(call_id: str, pieces: list[str]) -> Reply:
        start = {"index": 0, "id": call_id, "type": "function", "function": {"name": "final_result", "arguments": ""}}
        deltas = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces]
        return Reply(events=[chunk({"tool_calls": [start]}), *deltas, chunk({}, finish="tool_calls")])

    server.script(
        call("call_1", ['{"name": "Par', 'is", "population": ', '"lots"}']),
        call("call_2", ['{"name": "Pa', 'ris", "popu', 'lation": 2100', "000}"]),
    )
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
