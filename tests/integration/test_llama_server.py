"""`OpenAIChatModel` against llama-cpp-python's own OpenAI-compatible server, serving the bundled SmolLM2 on 127.0.0.1.

Two servers run for the module: the default chat format, and `--chat_format chatml-function-calling`. Besides full
agent runs with a tool call (streamed and not), the tests pin the server quirks the `llama-cpp` profile encodes, so a
llama-cpp-python upgrade that changes them shows up here.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2
import pytest
from pydantic import BaseModel

from miniagent import Agent
from miniagent.errors import ModelAPIError, ModelHTTPError
from miniagent.events import RunFinished, ToolCallFinished
from miniagent.messages import ModelMessage, ModelRequest, ModelResponse, ToolCallPart, ToolReturnPart, UserPromptPart
from miniagent.models import ModelRequestParameters, ModelSettings, ResponseAssembler, ToolDefinition
from miniagent.models.local import bundled_model_path
from miniagent.models.openai_chat import OpenAIChatModel

# The test command installs every extra: a missing bundled model is a failure here, never a skip.
assert bundled_model_path() is not None, "the bundled model needs the 'local' extra: run `make install`"

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SHORT = ModelSettings(max_tokens=16, temperature=0.0, seed=1)
WEATHER = ToolDefinition(
    "get_weather",
    "Current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
ONE_TOOL = ModelRequestParameters(function_tools=[WEATHER])
MUST_CALL = ModelRequestParameters(function_tools=[WEATHER], allow_text_output=False)
ASK: list[ModelMessage] = [ModelRequest([UserPromptPart("What is the weather in Paris?")])]
AFTER_CALL: list[ModelMessage] = [
    *ASK,
    ModelResponse([ToolCallPart("get_weather", '{"city": "Paris"}', "call_1")]),
    ModelRequest([ToolReturnPart("get_weather", "sunny, 22C", "call_1")]),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(*extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path())]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1", *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}/v1"


def _wait_ready(process: subprocess.Popen[bytes], base_url: str) -> None:
    for _ in range(300):  # 300 x (up to) 0.1 s: the model loads in about a second
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode} before serving {base_url}")
        try:
            if httpx2.get(f"{base_url}/models", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"llama_cpp.server did not answer at {base_url}/models")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    """`default` and `functions` (chatml-function-calling) servers, started together and stopped at the end."""
    default, default_url = _start()
    functions, functions_url = _start("--chat_format", "chatml-function-calling")
    try:
        _wait_ready(default, default_url)
        _wait_ready(functions, functions_url)
        yield {"default": default_url, "functions": functions_url}
    finally:
        _stop(default)
        _stop(functions)


def _model(base_url: str, profile: str) -> OpenAIChatModel:
    return OpenAIChatModel("smollm2", base_url=base_url, provider="openai-compatible", profile=profile, timeout_s=30)


async def _ask(
    model: OpenAIChatModel, messages: list[ModelMessage], params: ModelRequestParameters, *, stream: bool
) -> ModelResponse:
    if not stream:
        return await model.request(messages, SHORT, params)
    assembler = ResponseAssembler()
    async for chunk in model.request_stream(messages, SHORT, params):
        assembler.add(chunk)
    return assembler.response()


def _agent(base_url: str) -> Agent[None, str]:
    agent = Agent(
        model=f"openai-compatible:{base_url}?profile=llama-cpp#smollm2",
        model_settings=ModelSettings(max_tokens=24, temperature=0.0, seed=1),
    )

    @agent.tool
    def get_weather(city: str) -> str:
        """Current weather for a city.

        Args:
            city: The city's name.
        """
        return f"Sunny and 22C in {city}."

    return agent


# ---- full agent runs through the llama-cpp profile ----------------------------------------------------------


@pytest.mark.parametrize("server", ["default", "functions"])
async def test_agent_run_with_a_tool_call(servers: dict[str, str], server: str) -> None:
    result = await _agent(servers[server]).run("What is the weather in Paris?")
    calls = [p for m in result.messages if isinstance(m, ModelResponse) for p in m.parts if isinstance(p, ToolCallPart)]
    assert [c.tool_name for c in calls] == ["get_weather"]  # called once: the final turn says `none`
    returns = [
        p for m in result.messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)
    ]
    assert returns[0].content.startswith("Sunny and 22C in")
    assert result.output.strip()
    assert result.usage.requests == 2 and result.usage.input_tokens > 0 and result.usage.output_tokens > 0


@pytest.mark.parametrize("server", ["default", "functions"])
async def test_streamed_agent_run_with_a_tool_call(servers: dict[str, str], server: str) -> None:
    events = [event async for event in _agent(servers[server]).run_stream_events("What is the weather in Paris?")]
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert len(finished) == 1
    last = events[-1]
    assert isinstance(last, RunFinished) and isinstance(last.output, str) and last.output.strip()


class City(BaseModel):
    name: str
    population: int


@pytest.mark.parametrize("server", ["default", "functions"])
async def test_agent_run_with_structured_output(servers: dict[str, str], server: str) -> None:
    # With one output tool and no other tools the profile names `final_result`, so the server's grammar makes the
    # model's call fit the schema: the values may be nonsense, but they validate.
    agent = Agent(
        model=f"openai-compatible:{servers[server]}?profile=llama-cpp#smollm2",
        output_type=City,
        model_settings=ModelSettings(max_tokens=48, temperature=0.0, seed=1),
        output_retries=0,
    )
    result = await agent.run("Paris has about two million people. Give the city and its population.")
    assert type(result.output) is City
    assert City.model_validate_json(result.output.model_dump_json()) == result.output  # a str and an int
    assert result.usage.requests == 1
    (response,) = [m for m in result.messages if isinstance(m, ModelResponse)]
    assert [c.tool_name for c in response.tool_calls] == ["final_result"]


# ---- the quirks the profile encodes ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_default_format_only_a_named_function_yields_tool_calls(servers: dict[str, str], stream: bool) -> None:
    generic = _model(servers["default"], "generic")  # sends `auto` / `required` as asked
    for params in (ONE_TOOL, MUST_CALL):
        response = await _ask(generic, ASK, params, stream=stream)
        assert not response.tool_calls and response.text
    named = await _ask(_model(servers["default"], "llama-cpp"), ASK, ONE_TOOL, stream=stream)
    assert [c.tool_name for c in named.tool_calls] == ["get_weather"]
    assert "city" in named.tool_calls[0].args_dict()
    await generic.aclose()


async def test_function_calling_format_auto_works_without_streaming(servers: dict[str, str]) -> None:
    model = _model(servers["functions"], "generic")
    response = await model.request(ASK, SHORT, ONE_TOOL)
    assert [c.tool_name for c in response.tool_calls] == ["get_weather"]
    await model.aclose()


async def test_function_calling_format_required_is_a_mapped_http_500(servers: dict[str, str]) -> None:
    model = _model(servers["functions"], "generic")
    with pytest.raises(ModelHTTPError) as info:
        await model.request(ASK, SHORT, MUST_CALL)
    assert type(info.value) is ModelHTTPError
    assert info.value.status_code == 500 and info.value.retryable
    assert info.value.provider == "openai-compatible"
    await model.aclose()


async def test_function_calling_format_streamed_auto_fails_after_200(servers: dict[str, str]) -> None:
    model = _model(servers["functions"], "generic")
    # Never a hang: the request has its own timeout (and pytest-timeout bounds the test).
    with pytest.raises(ModelAPIError) as info:
        await _ask(model, ASK, ONE_TOOL, stream=True)
    assert not isinstance(info.value, ModelHTTPError)  # the status was 200; the stream then ended empty
    assert "without finishing the response" in str(info.value)
    # The profile asks for such a response whole instead, and the server answers it.
    profiled = await _ask(_model(servers["functions"], "llama-cpp"), ASK, ONE_TOOL, stream=True)
    assert [c.tool_name for c in profiled.tool_calls] == ["get_weather"]
    await model.aclose()


@pytest.mark.parametrize("server", ["default", "functions"])
async def test_null_content_beside_tool_calls_is_rejected(servers: dict[str, str], server: str) -> None:
    generic = _model(servers[server], "generic")  # sends `content: null` beside the tool calls
    with pytest.raises(ModelHTTPError) as info:
        await generic.request(AFTER_CALL, SHORT, ModelRequestParameters())
    assert info.value.status_code == 500 and "Input should be a valid string" in str(info.value)
    profiled = _model(servers[server], "llama-cpp")  # sends "" and `tool_choice: none` on the final turn
    for stream in (False, True):
        response = await _ask(profiled, AFTER_CALL, ONE_TOOL, stream=stream)
        assert not response.tool_calls and response.text
    await generic.aclose()
    await profiled.aclose()
