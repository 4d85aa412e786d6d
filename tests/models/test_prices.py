"""Prices and cost: the table, its overrides, unknown models, and the same cost for streamed and whole runs."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from miniagent import Agent
from miniagent.errors import UserError
from miniagent.messages import ModelResponse, TextPart, ToolCallPart
from miniagent.models._prices import Price, get_price, price_response, price_usage, register_price, reload_prices
from miniagent.models.openai_chat import OpenAIChatModel
from miniagent.testing import ScriptedModel
from miniagent.usage import Usage

# The loopback Chat Completions server of the provider's own tests; importing the fixture makes it usable here.
from .test_openai_chat import ChatServer, Reply, Running, chat_server  # noqa: F401 (`chat_server` is a fixture)

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def fresh_prices() -> Iterator[None]:
    reload_prices()
    yield
    reload_prices()


# ---- lookup ---------------------------------------------------------------------------------------------------


def test_exact_names() -> None:
    assert get_price("gpt-4o-mini") == Price(input=0.15, output=0.6, cached_input=0.075)
    assert get_price("claude-sonnet-4-5") == Price(input=3.0, output=15.0, cached_input=0.3)
    assert get_price("GPT-4o") == get_price("gpt-4o")


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # a dated snapshot
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # a snapshot with its own price
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("mistral-large-latest", "mistral-large"),
        ("openai:gpt-4o-mini", "gpt-4o-mini"),  # a provider prefix
        ("openai/gpt-4.1", "gpt-4.1"),  # a router prefix
        ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),  # an alias
        ("local:SmolLM2-135M-Instruct.Q4_1", "local"),
    ],
)
def test_prefix_and_alias_matching(name: str, entry: str) -> None:
    assert get_price(name) is not None
    assert get_price(name) == get_price(entry)


def test_a_prefix_must_end_at_a_boundary() -> None:
    assert get_price("gpt-4o") != get_price("gpt-4")  # `gpt-4` is not a prefix of `gpt-4o` at a boundary
    assert get_price("gpt-4oops") is None
    assert get_price("o3x") is None


def test_unknown_models_have_no_price() -> None:
    assert get_price("my-finetune") is None
    assert price_usage("my-finetune", Usage(input_tokens=10)) is None
    assert price_usage(None, Usage(input_tokens=10)) is None


def test_cost_uses_cached_and_output_prices() -> None:
    usage = Usage(input_tokens=1_000_000, cache_read_tokens=400_000, output_tokens=100_000, reasoning_tokens=50_000)
    # gpt-4o-mini: 600k uncached x 0.15 + 400k cached x 0.075 + 100k output (reasoning included) x 0.6.
    assert price_usage("gpt-4o-mini-2024-07-18", usage) == pytest.approx(0.09 + 0.03 + 0.06)
    # A model without a cached price bills cached tokens as input.
    assert price_usage("gpt-4-turbo", Usage(input_tokens=1_000_000, cache_read_tokens=1_000_000)) == 10.0


def test_every_built_in_entry_is_valid() -> None:
    data = tomllib.loads(files("miniagent.models").joinpath("prices.toml").read_text(encoding="utf-8"))
    for name in [*data["models"], *data["aliases"]]:
        price = get_price(name)
        assert price is not None, name
        assert price.cached_input <= price.input, name


# ---- overrides ------------------------------------------------------------------------------------------------


def test_register_price() -> None:
    assert get_price("acme-1-large") is None
    register_price("acme-1", input=1.0, output=2.0)
    assert get_price("acme-1-large") == Price(input=1.0, output=2.0, cached_input=1.0)
    register_price("gpt-4o-mini", input=9.0, output=9.0, cached_input=1.0)  # replaces a built-in price
    assert get_price("gpt-4o-mini-2024-07-18") == Price(input=9.0, output=9.0, cached_input=1.0)
    reload_prices()
    assert get_price("acme-1") is None
    assert get_price("gpt-4o-mini") == Price(input=0.15, output=0.6, cached_input=0.075)


def test_register_price_rejects_negative_prices() -> None:
    with pytest.raises(UserError, match="must not be negative"):
        register_price("acme", input=-1.0, output=1.0)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_prices_file_is_merged_over_the_built_in_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    data: dict[str, Any] = {
        "models": {"gpt-4o": {"input": 1.0, "output": 4.0}, "acme-2": {"input": 0.5, "cached_input": 0.1, "output": 1}},
        "aliases": {"acme-latest": "acme-2"},
    }
    path = tmp_path / f"prices{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        path.write_text(
            '[models]\n"gpt-4o" = { input = 1.0, output = 4.0 }\n'
            '"acme-2" = { input = 0.5, cached_input = 0.1, output = 1 }\n'
            '[aliases]\n"acme-latest" = "acme-2"\n'
        )
    monkeypatch.setenv("MINIAGENT_PRICES_FILE", str(path))
    reload_prices()
    assert get_price("gpt-4o-2024-11-20") == Price(input=1.0, output=4.0, cached_input=1.0)
    assert get_price("acme-latest") == Price(input=0.5, output=1.0, cached_input=0.1)
    assert get_price("gpt-4o-mini") == Price(input=0.15, output=0.6, cached_input=0.075)  # the rest stays


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not [valid toml", "Could not read the price file"),
        ('[models]\n"m" = { input = 1.0 }\n', "needs numeric `input` and `output`"),
        ('[models]\n"m" = 3\n', "must be a table"),
        ('[aliases]\n"a" = "nothing"\n', "has no entry under `models`"),
    ],
)
def test_a_bad_prices_file_says_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, message: str
) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(content)
    monkeypatch.setenv("MINIAGENT_PRICES_FILE", str(path))
    reload_prices()
    with pytest.raises(UserError, match=message):
        get_price("gpt-4o")


# ---- usage totals ---------------------------------------------------------------------------------------------


def test_an_unknown_cost_makes_the_total_unknown() -> None:
    total = Usage(cost_usd=0.5)
    total.incr(Usage(cost_usd=None))
    assert total.cost_usd is None
    total.incr(Usage(cost_usd=1.0))
    assert total.cost_usd is None
    assert (Usage(cost_usd=0.25) + Usage(cost_usd=0.5)).cost_usd == 0.75
    assert Usage().cost_usd == 0.0


def test_price_response_falls_back_to_the_model_name() -> None:
    usage = Usage(input_tokens=1_000_000)
    assert price_response(ModelResponse([], usage=usage, model_name="gpt-4o")) == 2.5
    assert price_response(ModelResponse([], usage=usage), "openai:gpt-4o") == 2.5
    assert price_response(ModelResponse([], usage=usage)) is None


async def test_a_run_with_an_unknown_model_reports_unknown_cost() -> None:
    known = ModelResponse([ToolCallPart("noop", {}, "c1")], usage=Usage(input_tokens=10), model_name="gpt-4o")
    unknown = ModelResponse([TextPart("done")], usage=Usage(input_tokens=10), model_name="my-finetune")
    agent = Agent(model=ScriptedModel([known, unknown]))

    @agent.tool
    def noop() -> str:
        return "ok"

    result = await agent.run("go")
    assert result.usage.input_tokens == 20
    assert result.usage.cost_usd is None
    assert known.usage.cost_usd == pytest.approx(10 * 2.5 / 1_000_000)
    assert unknown.usage.cost_usd is None


async def test_test_models_are_free() -> None:
    result = await Agent(model=ScriptedModel([ModelResponse([TextPart("hi")])])).run("go")
    assert result.usage.cost_usd == 0.0


# ---- streamed and whole runs agree ----------------------------------------------------------------------------

MODEL = "gpt-4o-mini-2024-07-18"
FIRST_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 40,
    "total_tokens": 1240,
    "prompt_tokens_details": {"cached_tokens": 1024},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
SECOND_USAGE = {
    "prompt_tokens": 1300,
    "completion_tokens": 9,
    "total_tokens": 1309,
    "prompt_tokens_details": {"cached_tokens": 1152},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}


def _whole(message: dict[str, Any], finish: str, usage: dict[str, Any]) -> Reply:
    return Reply(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }
    )


def _streamed(deltas: list[dict[str, Any]], finish: str, usage: dict[str, Any]) -> Reply:
    def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-2",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": choices,
            "usage": usage,
        }

    events = [event([{"index": 0, "delta": delta, "finish_reason": None}]) for delta in deltas]
    events.append(event([{"index": 0, "delta": {}, "finish_reason": finish}]))
    events.append(event([], usage))  # `stream_options.include_usage`: usage comes last, with no choices
    return Reply(events=events)


def _weather_agent(model: OpenAIChatModel) -> Agent[None, str]:
    agent = Agent(model=model)

    @agent.tool
    def weather(city: str) -> str:
        return f"Sunny in {city}"

    return agent


async def test_streamed_and_whole_runs_report_the_same_tokens_and_cost(
    chat_server: Running,  # noqa: F811 (the fixture imported above)
) -> None:
    server: ChatServer = chat_server.server
    model = OpenAIChatModel("gpt-4o-mini", base_url=chat_server.base_url, api_key="sk-test-key-123456")
    agent = _weather_agent(model)

    server.script(
        _whole({"role": "assistant", "content": None, "tool_calls": [CALL]}, "tool_calls", FIRST_USAGE),
        _whole({"role": "assistant", "content": "Sunny in Rome."}, "stop", SECOND_USAGE),
    )
    whole = await agent.run("Weather in Rome?")

    server.script(
        _streamed(
            [
                {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "weather"}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '"Rome"}'}}]},
            ],
            "tool_calls",
            FIRST_USAGE,
        ),
        _streamed([{"role": "assistant", "content": "Sunny "}, {"content": "in Rome."}], "stop", SECOND_USAGE),
    )
    async with agent.run_stream("Weather in Rome?") as run:
        streamed = await run.get_result()
    assert all(r.body.get("stream") is True for r in server.received)
    assert all(r.body.get("stream_options") == {"include_usage": True} for r in server.received)

    assert whole.output == streamed.output == "Sunny in Rome."
    assert streamed.usage == whole.usage
    assert (whole.usage.requests, whole.usage.input_tokens, whole.usage.output_tokens) == (2, 2500, 49)
    price = get_price(MODEL)
    assert price is not None
    assert whole.usage.cost_usd is not None and whole.usage.cost_usd > 0
    # Whatever share of the prompt the provider reports as cached, the cost is priced from exactly that usage.
    assert whole.usage.cost_usd == pytest.approx(price.cost(whole.usage))
    assert whole.usage.cost_usd <= price.cost(Usage(input_tokens=2500, output_tokens=49))
    assert [m.usage.cost_usd for m in whole.messages if isinstance(m, ModelResponse)] == [
        m.usage.cost_usd for m in streamed.messages if isinstance(m, ModelResponse)
    ]
