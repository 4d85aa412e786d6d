"""The bundled SmolLM2-135M through llama.cpp: chat, streaming, grammar-constrained tool calls, structured output.

One model is loaded for the whole module; responses are kept short so the file runs in seconds.
"""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import pytest
from pydantic import BaseModel

from miniagent import Agent, Tool
from miniagent.errors import ModelFileError
from miniagent.events import AgentEvent, TextDelta
from miniagent.messages import ModelMessage, ModelRequest, SystemPromptPart, ToolCallPart, UserPromptPart
from miniagent.models import ModelRequestParameters, ModelSettings, TextChunk, infer_model
from miniagent.models.local import LocalModel, bundled_model_path
from miniagent.settings import Settings

# The test command installs every extra: a missing bundled model is a failure here, never a skip.
assert bundled_model_path() is not None, "the bundled model needs the 'local' extra: run `make install`"

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SHORT = ModelSettings(max_tokens=24, seed=1)


@pytest.fixture(scope="module")
def model() -> LocalModel:
    return LocalModel(n_ctx=1024)


def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: The city's name.
    """
    return f"Sunny and 21 C in {city}"


class City(BaseModel):
    """A city and the country it is in."""

    name: str
    country: str


async def test_loading_and_generating_print_nothing(model: LocalModel, capfd: pytest.CaptureFixture[str]) -> None:
    # First in the module, so the capture also covers loading the weights.
    response = await model.request(
        [ModelRequest([UserPromptPart("Hi")])], ModelSettings(max_tokens=3), ModelRequestParameters()
    )
    assert response.usage.output_tokens > 0
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")


async def test_plain_chat_turn(model: LocalModel) -> None:
    agent = Agent(model=model, instructions="You are a friendly assistant. Answer in one short sentence.")
    result = await agent.run("Say hello to Ann.", model_settings=SHORT)
    assert isinstance(result.output, str)
    assert result.output.strip()
    assert result.usage.input_tokens > 0
    assert 0 < result.usage.output_tokens <= 24
    assert result.model_name == "local:SmolLM2-135M-Instruct.Q4_1"


async def test_streamed_turn_yields_text_deltas(model: LocalModel) -> None:
    agent = Agent(model=model)
    deltas: list[str] = []

    async def sink(event: AgentEvent) -> None:
        if isinstance(event, TextDelta):
            deltas.append(event.delta)

    result = await agent.run("Name three colors.", model_settings=SHORT, event_sink=sink)
    assert len(deltas) >= 3
    assert "".join(deltas) == result.output


@pytest.mark.parametrize("seed", range(5))
async def test_tool_calls_are_grammar_constrained(model: LocalModel, seed: int) -> None:
    tool: Tool[None] = Tool(get_weather)
    messages: list[ModelMessage] = [ModelRequest([UserPromptPart("What is the weather like in Paris right now?")])]
    params = ModelRequestParameters(function_tools=[tool.definition], allow_text_output=False)
    response = await model.request(messages, ModelSettings(seed=seed, temperature=0.8), params)
    (call,) = response.parts
    assert isinstance(call, ToolCallPart)
    assert call.tool_name == "get_weather"
    assert set(tool.validate_args(call.args)) == {"city"}
    assert response.finish_reason == "tool_call"


async def test_structured_output(model: LocalModel) -> None:
    agent = Agent(model=model, output_type=City, instructions="Extract the city the user mentions.")
    result = await agent.run("I just moved to Lyon, a city in France.", model_settings=ModelSettings(seed=3))
    assert isinstance(result.output, City)
    assert result.output.name
    assert result.output.country


async def test_with_tools_and_text_allowed_the_reply_is_a_call_or_an_answer(model: LocalModel) -> None:
    tool: Tool[None] = Tool(get_weather)
    messages: list[ModelMessage] = [ModelRequest([UserPromptPart("What's the weather in Oslo?")])]
    params = ModelRequestParameters(function_tools=[tool.definition], allow_text_output=True)
    for seed in range(2):
        response = await model.request(messages, ModelSettings(seed=seed, max_tokens=40), params)
        (part,) = response.parts
        if isinstance(part, ToolCallPart):
            assert tool.validate_args(part.args)
        else:
            assert part.kind == "text"


async def test_cancelled_stream_frees_the_model(model: LocalModel) -> None:
    messages: list[ModelMessage] = [ModelRequest([UserPromptPart("Tell me a long story about a dragon.")])]
    async with aclosing(model.request_stream(messages, ModelSettings(max_tokens=200), ModelRequestParameters())) as s:
        async for chunk in s:
            assert isinstance(chunk, TextChunk)
            break
    response = await model.request(messages, ModelSettings(max_tokens=5, seed=2), ModelRequestParameters())
    assert response.usage.output_tokens <= 5


def test_count_tokens(model: LocalModel) -> None:
    short: list[ModelMessage] = [ModelRequest([UserPromptPart("Hi")])]
    longer: list[ModelMessage] = [
        ModelRequest([SystemPromptPart("Be brief."), UserPromptPart("Hi, how are you today?")])
    ]
    assert 0 < model.count_tokens(short) < model.count_tokens(longer) < 60


def test_model_string_resolves_to_the_bundled_model() -> None:
    resolved = infer_model("local", Settings(local_n_ctx=512))
    assert isinstance(resolved, LocalModel)
    assert resolved.name == "local:SmolLM2-135M-Instruct.Q4_1"
    assert infer_model(resolved.name, Settings()).name == resolved.name


async def test_gguf_header_with_garbage_fails_on_load(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    broken = LocalModel(path)
    with pytest.raises(ModelFileError, match="could not be loaded by llama.cpp") as info:
        await broken.request([ModelRequest([UserPromptPart("Hi")])], None, ModelRequestParameters())
    assert str(path) in str(info.value)
    assert "MINIAGENT_LOCAL_MODEL_PATH" in str(info.value)


def test_grammars_are_checked_before_sampling(model: LocalModel) -> None:
    from miniagent.models.local import grammar_is_valid

    model.count_tokens([])  # loads the weights
    assert model._loaded is not None
    assert grammar_is_valid(model._loaded.llama, 'root ::= "ok"')
    # llama.cpp reports the parse error on stderr itself (not through its logger): only a bug would show it.
    assert not grammar_is_valid(model._loaded.llama, "root ::= undefined-rule")
