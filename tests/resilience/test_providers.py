"""The resilience runtime against real HTTP providers on a loopback server: typed errors, counted attempts."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from miniagent import Agent, AgentEvent, RunFinished, StreamRestarted, TextDelta
from miniagent.errors import ModelAPIError, ModelTimeout
from miniagent.messages import ModelMessage, ModelRequest, UserPromptPart
from miniagent.models import ModelRequestParameters, ModelSettings
from miniagent.models._base import endpoint_upstream
from miniagent.models.anthropic import AnthropicModel
from miniagent.models.openai_chat import OpenAIChatModel
from miniagent.models.openai_responses import OpenAIResponsesModel
from miniagent.resilience import BreakerRegistry
from miniagent.testing import RecordingClock
from tests._replay import Interaction, ReplayServer

pytestmark = pytest.mark.anyio

HELLO: list[ModelMessage] = [ModelRequest([UserPromptPart("Hi")])]
JSON = [("content-type", "application/json")]
SSE = [("content-type", "text/event-stream")]


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with ReplayServer() as running:
        yield running


@pytest.fixture
def server(replay: ReplayServer) -> ReplayServer:
    replay.serve([])
    return replay  # one URL for the module: each agent below gets a breaker registry of its own


def chat_model(server: ReplayServer) -> OpenAIChatModel:
    return OpenAIChatModel("m", base_url=server.url("/v1"), api_key="k", provider="openai-compatible", timeout_s=10)


def completion(text: str) -> bytes:
    return json.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
    ).encode()


def chunk(delta: dict[str, object], finish: str | None = None) -> str:
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


def stream(*pieces: str) -> bytes:
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in pieces]
    events += [chunk({}, "stop"), "data: [DONE]\n\n"]
    return "".join(events).encode()


@pytest.mark.parametrize("kind", ["chat", "responses"])
async def test_a_malformed_200_body_is_a_typed_retryable_error(server: ReplayServer, kind: str) -> None:
    path = "/v1/chat/completions" if kind == "chat" else "/v1/responses"
    server.serve([Interaction("POST", path, 200, b'{"id": "c1", "choi', headers=JSON)])
    model = (
        chat_model(server)
        if kind == "chat"
        else OpenAIResponsesModel("m", base_url=server.url("/v1"), api_key="k", timeout_s=10)
    )
    with pytest.raises(ModelAPIError, match="not valid JSON") as info:
        await model.request(HELLO, None, ModelRequestParameters())
    assert info.value.retryable and isinstance(info.value.__cause__, json.JSONDecodeError)
    await model.aclose()


async def test_an_agent_recovers_from_a_malformed_body_with_one_more_request(server: ReplayServer) -> None:
    server.serve(
        [
            Interaction("POST", "/v1/chat/completions", 200, b"not json{", headers=JSON),
            Interaction("POST", "/v1/chat/completions", 200, completion("Recovered."), headers=JSON),
        ]
    )
    model = chat_model(server)
    clock = RecordingClock()
    result = await Agent(model=model, clock=clock, breakers=BreakerRegistry()).run("Hi")
    assert result.output == "Recovered."
    assert len(server.received) == 2 and len(clock.sleeps) == 1  # one retry layer: attempts counted once
    await model.aclose()


async def test_an_sse_stream_cut_mid_way_restarts_without_mixed_output(server: ReplayServer) -> None:
    whole = stream("Hello", " world")
    server.serve(
        [
            # cut in the middle of the " world" event, after "Hello" was delivered
            Interaction("POST", "/v1/chat/completions", 200, whole, headers=SSE, cut_after=len(stream("Hello")) - 60),
            Interaction("POST", "/v1/chat/completions", 200, whole, headers=SSE),
        ]
    )
    model = chat_model(server)
    agent = Agent(model=model, clock=RecordingClock(), breakers=BreakerRegistry())
    events: list[AgentEvent] = []
    async for event in agent.run_stream_events("Hi"):
        events.append(event)
    seen = "".join(
        e.delta if isinstance(e, TextDelta) else "|" for e in events if isinstance(e, TextDelta | StreamRestarted)
    )
    assert seen == "Hello|Hello world"  # the cut attempt's text, the restart, then only the new attempt
    final = events[-1]
    assert isinstance(final, RunFinished) and final.output == "Hello world"
    assert len(server.received) == 2
    await model.aclose()


async def test_a_request_timeout_is_a_model_timeout(server: ReplayServer) -> None:
    server.serve([Interaction("POST", "/v1/chat/completions", 200, completion("late"), headers=JSON, delay_s=1.0)])
    model = chat_model(server)
    with pytest.raises(ModelTimeout, match="did not answer in time") as info:
        await model.request(HELLO, ModelSettings(timeout_s=0.05), ModelRequestParameters())
    assert info.value.retryable and info.value.stage == "request"
    await model.aclose()


def test_http_models_name_their_endpoint_as_upstream_without_credentials() -> None:
    chat = OpenAIChatModel("m", base_url="http://user:secret@10.0.0.1:8080/v1/?key=x", provider="openai-compatible")
    assert chat.upstream == "openai-compatible:m@http://10.0.0.1:8080/v1"
    assert OpenAIChatModel("gpt-4o", api_key="k").upstream == "openai:gpt-4o"
    assert AnthropicModel("claude", api_key="k", base_url="https://proxy.example/").upstream == (
        "anthropic:claude@https://proxy.example"
    )
    assert OpenAIResponsesModel("gpt-5", api_key="k").upstream == "openai-responses:gpt-5"
    assert endpoint_upstream("x", None) == "x"
