"""The fault servers themselves: each fault reaches a real HTTP client as the bytes it stands for.

These tests talk to the servers with plain `httpx` (what arrives on the wire) and with the bare provider models (no
retry layer: one request per call), so the matrix tests can trust what each fault does.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from miniagent.errors import ModelAPIError, ModelHTTPError, ModelOverloaded, ModelRateLimited, ModelTimeout
from miniagent.messages import ModelMessage, ModelRequest, UserPromptPart
from miniagent.models import Model, ModelRequestParameters, ModelSettings, StreamDone, TextChunk, ToolCallChunk

from ._fault_anthropic import ANTHROPIC
from ._fault_openai import OPENAI
from ._server import (
    Call,
    Cut,
    Dialect,
    Drop,
    FaultServer,
    Malformed,
    Respond,
    Slow,
    Stall,
    Status,
    Step,
    Text,
    ToolCalls,
    Truncated,
    refused_url,
)
from .conftest import HANG_GUARD_S, anthropic_model, model_for, openai_model

pytestmark = pytest.mark.anyio

HELLO: list[ModelMessage] = [ModelRequest([UserPromptPart("hi")])]
NO_TOOLS = ModelRequestParameters()
SHORT = ModelSettings(timeout_s=0.2)


def sse_data(raw: bytes) -> list[Any]:
    """The JSON payloads of an SSE body (`[DONE]` kept as the string)."""
    out: list[Any] = []
    for line in raw.decode().splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def post(server: FaultServer, body: dict[str, Any], path: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.post(server.url(path or server.dialect.path), json=body)


# ---- the script, the default and the record of requests -----------------------------------------------------


async def test_script_steps_are_consumed_in_order_then_the_default_answers() -> None:
    with anyio.fail_after(HANG_GUARD_S):
        steps: list[Step] = [Status(500), Status(429, headers={"retry-after": "3"}), Respond(Text("scripted"))]
        async with FaultServer(OPENAI, steps, default=Text("default answer")) as server:
            statuses = [(await post(server, {"n": i})).status_code for i in range(5)]
            assert statuses == [500, 429, 200, 200, 200]
            assert server.count == 5
            assert [b["n"] for b in server.bodies] == [0, 1, 2, 3, 4]
            last = (await post(server, {"n": 5})).json()
            assert last["choices"][0]["message"]["content"] == "default answer"


async def test_status_fault_carries_headers_and_the_providers_error_body() -> None:
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(OPENAI, [Status(429, headers={"retry-after": "7"}, message="slow down")]) as server:
            reply = await post(server, {})
            assert reply.status_code == 429 and reply.headers["retry-after"] == "7"
            assert reply.json()["error"]["message"] == "slow down"
        async with FaultServer(ANTHROPIC, [Status(529)]) as server:
            reply = await post(server, {})
            assert reply.status_code == 529
            assert reply.json() == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


async def test_unknown_path_is_404_and_not_counted() -> None:
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(OPENAI) as server:
            reply = await post(server, {}, "/v1/elsewhere")
            assert reply.status_code == 404 and "only POST /v1/chat/completions" in reply.text
            assert server.count == 0


async def test_default_can_answer_from_the_request() -> None:
    def reply(body: Any) -> Text:
        return Text(f"got {len(body['messages'])} messages")

    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(OPENAI, default=reply) as server:
            answer = (await post(server, {"messages": [{"role": "user", "content": "x"}] * 3})).json()
            assert answer["choices"][0]["message"]["content"] == "got 3 messages"


# ---- wire shapes -----------------------------------------------------------------------------------------------


async def test_openai_stream_shape() -> None:
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(OPENAI, default=Text("It is sunny")) as server:
            reply = await post(server, {"stream": True})
            assert reply.headers["content-type"] == "text/event-stream"
            events = sse_data(reply.content)
            assert [e["choices"][0]["delta"]["content"] for e in events[:3]] == ["It", " is", " sunny"]
            assert events[3]["choices"][0]["finish_reason"] == "stop"
            assert events[4]["choices"] == [] and events[4]["usage"]["total_tokens"] == 19
            assert events[5] == "[DONE]" and len(events) == 6


async def test_anthropic_stream_shape() -> None:
    calls = ToolCalls((Call("get_weather", '{"city": "Paris"}'),), piece_chars=8)
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(ANTHROPIC, default=calls) as server:
            reply = await post(server, {"stream": True})
            kinds = [e["type"] for e in sse_data(reply.content)]
            assert kinds == [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
            pieces = [e["delta"]["partial_json"] for e in sse_data(reply.content) if e["type"] == "content_block_delta"]
            assert "".join(pieces) == '{"city": "Paris"}'


@pytest.mark.parametrize("dialect", [OPENAI, ANTHROPIC], ids=lambda d: d.name)
async def test_tool_calls_reach_the_model_whole_and_streamed(dialect: Dialect) -> None:
    calls = ToolCalls((Call("get_weather", '{"city": "Paris"}', id="c1"), Call("nope", "{not json", id="c2")))
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(dialect, default=calls) as server:
            model = model_for(server)
            chunks = [c async for c in model.request_stream(HELLO, None, NO_TOOLS)]
            args = "".join(c.args_delta for c in chunks if isinstance(c, ToolCallChunk) and c.index == 1)
            assert args == "{not json"  # sent as given, piece by piece
            whole = await model.request(HELLO, None, NO_TOOLS)
            assert [c.tool_name for c in whole.tool_calls] == ["get_weather", "nope"]
            assert whole.tool_calls[0].args_dict() == {"city": "Paris"}
            await model.aclose()


# ---- faults, as a bare provider model sees them (no retries: one request each) --------------------------------


@pytest.mark.parametrize("dialect", [OPENAI, ANTHROPIC], ids=lambda d: d.name)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_each_fault_reaches_the_client(dialect: Dialect, stream: bool) -> None:
    """Status codes, a dropped connection, a cut and an unfinished stream: each is one request and a typed error."""

    async def call(server: FaultServer) -> list[object]:
        model = model_for(server)
        try:
            if stream:
                return [c async for c in model.request_stream(HELLO, None, NO_TOOLS)]
            return [await model.request(HELLO, None, NO_TOOLS)]
        finally:
            await model.aclose()

    steps: list[Step] = [
        Status(500),
        Status(503),
        Status(429, headers={"retry-after": "2"}),
        Drop(),
        Cut(2),
        Truncated(2),
    ]
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(dialect, steps, default=Text("a b c")) as server:
            with pytest.raises(ModelHTTPError) as e500:
                await call(server)
            assert e500.value.status_code == 500 and e500.value.retryable
            with pytest.raises(ModelOverloaded):
                await call(server)
            with pytest.raises(ModelRateLimited) as e429:
                await call(server)
            assert e429.value.retry_after_s == 2.0
            for _ in range(3):  # dropped, cut, unfinished: transport-level, retryable, never an HTTP status error
                with pytest.raises(ModelAPIError) as broken:
                    await call(server)
                assert broken.value.retryable and not isinstance(broken.value, ModelHTTPError)
            answer = await call(server)
            assert server.count == 7
    text = "".join(c.delta for c in answer if isinstance(c, TextChunk)) if stream else str(answer[0].text)  # type: ignore[attr-defined]
    assert text == "a b c"


@pytest.mark.parametrize("dialect", [OPENAI, ANTHROPIC], ids=lambda d: d.name)
async def test_cut_aborts_mid_body_after_the_given_events(dialect: Dialect) -> None:
    received: list[object] = []
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(dialect, [Cut(3)], default=Text("one two three four")) as server:
            model = model_for(server)
            with pytest.raises(ModelAPIError):
                async for chunk in model.request_stream(HELLO, None, NO_TOOLS):
                    received.append(chunk)
            await model.aclose()
    text = [c.delta for c in received if isinstance(c, TextChunk)]
    # OpenAI: events 0-2 are the first three words; Anthropic: message_start, block start, first word.
    assert text == (["one", " two", " three"] if dialect is OPENAI else ["one"])
    assert not any(isinstance(c, StreamDone) for c in received)


async def test_truncated_without_done_marker() -> None:
    """No `[DONE]` after a finished OpenAI response is complete; no `message_stop` from Anthropic is not."""
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(OPENAI, [Truncated()], default=Text("all of it")) as server:
            raw = await post(server, {"stream": True})
            assert "[DONE]" not in sse_data(raw.content)
        async with FaultServer(OPENAI, [Truncated()], default=Text("all of it")) as server:
            model = openai_model(server)
            chunks = [c async for c in model.request_stream(HELLO, None, NO_TOOLS)]
            assert "".join(c.delta for c in chunks if isinstance(c, TextChunk)) == "all of it"
            await model.aclose()
        async with FaultServer(ANTHROPIC, [Truncated()], default=Text("all of it")) as server:
            claude = anthropic_model(server)
            with pytest.raises(ModelAPIError, match="message_stop"):
                async for _ in claude.request_stream(HELLO, None, NO_TOOLS):
                    pass
            await claude.aclose()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_malformed_sends_a_200_that_is_not_json(stream: bool) -> None:
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(OPENAI, [Malformed()]) as server:
            reply = await post(server, {"stream": stream})
    assert reply.status_code == 200
    payload = reply.content.decode()
    if stream:
        assert payload.startswith("data: {") and reply.headers["content-type"] == "text/event-stream"
        payload = payload[len("data: ") :]
    with pytest.raises(ValueError, match="Expecting value"):
        json.loads(payload)


@pytest.mark.parametrize("dialect", [OPENAI, ANTHROPIC], ids=lambda d: d.name)
async def test_slow_and_stalled_answers_pass_a_short_client_timeout(dialect: Dialect) -> None:
    """The delay is an event the test holds: the client's real read timeout (0.2 s) fires first, then it is freed."""
    release = anyio.Event()
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(dialect, [Slow(release=release), Stall(1, release=release)]) as server:
            model: Model = openai_model(server, timeout_s=0.2) if dialect is OPENAI else anthropic_model(server)
            settings = None if dialect is OPENAI else SHORT
            with pytest.raises(ModelTimeout):
                await model.request(HELLO, settings, NO_TOOLS)
            with pytest.raises(ModelTimeout):
                async for _ in model.request_stream(HELLO, settings, NO_TOOLS):
                    pass
            release.set()
            assert (await model.request(HELLO, settings, NO_TOOLS)).text == "OK"
            assert server.count == 3
            await model.aclose()


async def test_slow_with_seconds_answers_after_the_delay() -> None:
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(OPENAI, [Slow(seconds=0.01, reply=Text("late"))]) as server:
            model = openai_model(server)
            assert (await model.request(HELLO, None, NO_TOOLS)).text == "late"
            await model.aclose()


async def test_refused_url_has_nothing_listening() -> None:
    with anyio.fail_after(HANG_GUARD_S):
        model = openai_model(refused_url("/v1"))
        with pytest.raises(ModelAPIError, match="Could not connect") as info:
            await model.request(HELLO, None, NO_TOOLS)
        assert info.value.retryable
        await model.aclose()


@pytest.mark.parametrize("dialect", [OPENAI, ANTHROPIC], ids=lambda d: d.name)
async def test_transport_faults_are_worded_for_what_happened(dialect: Dialect) -> None:
    """A body cut mid-way is not a refused connection; a garbled whole body is not a streamed event."""
    with anyio.fail_after(HANG_GUARD_S):
        async with FaultServer(dialect, [Cut(0), Drop(), Malformed()]) as server:
            model = model_for(server)
            messages: list[str] = []
            for _ in range(3):
                with pytest.raises(ModelAPIError) as info:
                    await model.request(HELLO, None, NO_TOOLS)
                assert type(info.value) is ModelAPIError and info.value.retryable
                messages.append(str(info.value))
            await model.aclose()
    cut, dropped, garbled = messages
    assert "was cut before it was complete" in cut and "Could not connect" not in cut
    assert "Server disconnected without sending a response. Check" in dropped  # one full stop, not two
    assert "body that is not valid JSON" in garbled and "streamed" not in garbled
    assert not any(".." in message for message in messages)


async def test_stop_ends_connections_left_waiting() -> None:
    """A server stopped while a fault still waits ends that connection (the client sees it), and does not hang."""
    never = anyio.Event()
    with anyio.fail_after(HANG_GUARD_S):
        server = FaultServer(OPENAI, [Slow(release=never)])
        await server.start()
        async with httpx.AsyncClient(timeout=5) as client, anyio.create_task_group() as tg:
            failures: list[BaseException] = []

            async def waiting_request() -> None:
                try:
                    await client.post(server.url(OPENAI.path), json={})
                except httpx.HTTPError as exc:
                    failures.append(exc)

            tg.start_soon(waiting_request)
            await server.wait_for(1)
            await server.stop()
        assert len(failures) == 1 and isinstance(failures[0], httpx.RemoteProtocolError)
