from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import anyio
import pytest
from typer.testing import CliRunner

from miniagent import Agent
from miniagent.messages import ModelMessage, ModelResponse, TextPart
from miniagent.models._prices import register_price, reload_prices
from miniagent.store import SQLStore
from miniagent.testing import AgentInfo, FunctionModel
from miniagent.usage import Usage

_ENV = {"COLUMNS": "200"}


@pytest.fixture(autouse=True)
def prices() -> Iterator[None]:
    register_price("priced-model", input=1.0, output=2.0)
    try:
        yield
    finally:
        reload_prices()


def _model(name: str) -> FunctionModel:
    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse([TextPart("ok")], usage=Usage(input_tokens=1_000, output_tokens=500), model_name=name)

    return FunctionModel(answer, name=name)


def _record(*runs: tuple[str, str, dt.datetime]) -> None:
    async def go() -> None:
        for model, user, when in runs:
            async with await SQLStore.open(now=lambda when=when: when) as store:  # type: ignore[misc]
                await Agent(_model(model)).run("hi", user_id=user, store=store)

    anyio.run(go)


def _invoke(*args: str) -> tuple[int, str]:
    from miniagent.cli import app

    result = CliRunner().invoke(app, ["usage", *args], env=_ENV)
    return result.exit_code, result.output


def test_report_table_json_and_filters() -> None:
    code, out = _invoke()
    assert code == 0 and "(no usage recorded" in out
    day1 = dt.datetime(2025, 4, 1, 10, tzinfo=dt.UTC)
    day2 = dt.datetime(2025, 4, 2, 10, tzinfo=dt.UTC)
    _record(("priced-model", "alice", day1), ("mystery-model", "bob", day1), ("priced-model", "bob", day2))

    code, out = _invoke()
    assert code == 0, out
    assert "2025-04-01" in out and "2025-04-02" in out and "mystery-model" in out
    assert "unknown" in out  # the unpriced model's cost, never $0
    assert "$0.004000 + unknown (1 unpriced)" in out  # the total: known part and what is missing
    assert "total" in out

    code, out = _invoke("--by", "model", "--json")
    report = json.loads(out)
    assert [(r["model"], r["requests"], r["cost_usd"]) for r in report["rows"]] == [
        ("mystery-model", 1, None),
        ("priced-model", 2, pytest.approx(0.004)),
    ]
    assert report["total"]["cost_usd"] is None and report["total"]["priced_cost_usd"] == pytest.approx(0.004)

    code, out = _invoke("--by", "user", "--user", "alice", "--json")
    assert [(r["user"], r["cost_usd"]) for r in json.loads(out)["rows"]] == [("alice", pytest.approx(0.002))]
    code, out = _invoke("--by", "day", "--since", "2025-04-02", "--until", "2025-04-02", "--json")
    assert [(r["day"], r["requests"]) for r in json.loads(out)["rows"]] == [("2025-04-02", 1)]


def test_bad_options_are_clear_errors() -> None:
    code, out = _invoke("--since", "2025-13-01")
    assert code == 2 and "not a date: use YYYY-MM-DD" in out
    code, out = _invoke("--since", "2025-02-01", "--until", "2025-01-01")
    assert code == 2 and "after --until" in out
    code, out = _invoke("--by", "tenant")
    assert code == 2 and "choose among day, model, user, thread" in out
