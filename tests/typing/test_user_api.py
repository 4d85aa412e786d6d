"""User-style code that must type-check under mypy --strict (and run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_type

from pydantic import BaseModel

from miniagent import Agent, RunContext, RunResult
from miniagent.testing import ScriptedModel, tool_call_response


class Answer(BaseModel):
    city: str


@dataclass
class Deps:
    greeting: str


def test_inferred_types() -> None:
    plain = Agent(model=ScriptedModel(["hi"]))
    assert_type(plain, Agent[None, str])
    result = plain.run_sync("x")
    assert_type(result, RunResult[str])
    assert_type(result.output, str)

    structured = Agent(
        model=ScriptedModel([tool_call_response(("final_result", {"city": "Oslo"}))]), output_type=Answer
    )
    assert_type(structured, Agent[None, Answer])
    assert_type(structured.run_sync("x").output, Answer)

    with_deps = Agent(model=ScriptedModel([tool_call_response(("greet", {})), "ok"]), deps_type=Deps)
    assert_type(with_deps, Agent[Deps, str])

    @with_deps.tool
    def greet(ctx: RunContext[Deps]) -> str:
        return ctx.deps.greeting

    assert with_deps.run_sync("x", deps=Deps("hello")).output == "ok"
