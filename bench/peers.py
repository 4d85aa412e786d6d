"""Peer frameworks doing the bench's agent job against the stub, one peer per process.

`python bench/peers.py --base-url URL --peer NAME` prints one JSON line of figures (see `_harness.Result`).
Run with the interpreter of the venv that has the peers (`make bench-peers` builds `.venv-peers`); a peer
that is not installed is reported as such. `--peer raw` measures the raw-SDK baseline in that same interpreter,
so each peer's ratio compares like with like. Telemetry and tracing are switched off before any peer is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _harness
from _harness import INSTRUCTIONS, PROMPT, Result, RunOnce, check_answer, get_time, get_weather

MODEL = "stub-model"
KEY = "sk-bench-not-a-real-key"


@dataclass
class Peer:
    """A framework set up against the stub: one run, and a fresh agent with instructions only."""

    run_once: RunOnce
    make_agent: Callable[[], object]
    version: str


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _client(base_url: str) -> Any:
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)


def openai_agents(base_url: str) -> Peer:
    from agents import (  # type: ignore[import-not-found, unused-ignore]
        Agent,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=_client(base_url))
    tools = [function_tool(get_weather), function_tool(get_time)]
    agent = Agent(name="bench", instructions=INSTRUCTIONS, model=model, tools=tools)

    async def run_once() -> object:
        output: object = (await Runner.run(agent, PROMPT)).final_output
        check_answer(output, "openai-agents")
        return output

    return Peer(
        run_once, lambda: Agent(name="bench", instructions=INSTRUCTIONS, model=model), _version("openai-agents")
    )


def pydantic_ai(base_url: str) -> Peer:
    from pydantic_ai import Agent  # type: ignore[import-not-found, unused-ignore]
    from pydantic_ai.models.openai import OpenAIChatModel  # type: ignore[import-not-found, unused-ignore]
    from pydantic_ai.providers.openai import OpenAIProvider  # type: ignore[import-not-found, unused-ignore]

    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=_client(base_url)))
    agent = Agent(model, instructions=INSTRUCTIONS, tools=[get_weather, get_time])

    async def run_once() -> object:
        output: object = (await agent.run(PROMPT)).output
        check_answer(output, "pydantic-ai")
        return output

    return Peer(run_once, lambda: Agent(model, instructions=INSTRUCTIONS), _version("pydantic-ai-slim"))


def agno(base_url: str) -> Peer:
    from agno.agent import Agent  # type: ignore[import-not-found, unused-ignore]
    from agno.models.openai import OpenAIChat  # type: ignore[import-not-found, unused-ignore]

    model = OpenAIChat(id=MODEL, base_url=base_url, api_key=KEY, max_retries=0)
    agent = Agent(model=model, instructions=INSTRUCTIONS, tools=[get_weather, get_time], telemetry=False)

    async def run_once() -> object:
        output: object = (await agent.arun(PROMPT)).content
        check_answer(output, "agno")
        return output

    return Peer(run_once, lambda: Agent(model=model, instructions=INSTRUCTIONS, telemetry=False), _version("agno"))


def langgraph(base_url: str) -> Peer:
    from langchain_openai import ChatOpenAI  # type: ignore[import-not-found, unused-ignore]
    from langgraph.prebuilt import create_react_agent  # type: ignore[import-not-found, unused-ignore]

    llm = ChatOpenAI(model=MODEL, base_url=base_url, api_key=KEY, max_retries=0)
    graph = create_react_agent(llm, tools=[get_weather, get_time], prompt=INSTRUCTIONS)

    async def run_once() -> object:
        state = await graph.ainvoke({"messages": [("user", PROMPT)]})
        output: object = state["messages"][-1].content
        check_answer(output, "langgraph")
        return output

    return Peer(
        run_once,
        lambda: create_react_agent(llm, tools=[], prompt=INSTRUCTIONS),
        f"{_version('langgraph')} + langchain-openai {_version('langchain-openai')}",
    )


def raw(base_url: str) -> Peer:
    from _raw import raw_client, raw_run_once

    return Peer(raw_run_once(raw_client(base_url)), lambda: None, _version("openai"))


PEERS: dict[str, tuple[str, str, Callable[[str], Peer]]] = {
    "raw": ("openai", "import openai", raw),
    "openai-agents": ("agents", "import agents", openai_agents),
    "pydantic-ai": ("pydantic_ai", "import pydantic_ai, pydantic_ai.models.openai", pydantic_ai),
    "agno": ("agno", "import agno.agent, agno.models.openai", agno),
    "langgraph": ("langgraph", "import langgraph.prebuilt, langchain_openai", langgraph),
}
"""Peer name -> (a module that shows it is installed, the imports an agent on OpenAI needs, its setup)."""


async def _measure_runs(peer: Peer, result: Result, args: argparse.Namespace) -> None:
    result.cpu_ms, result.wall_ms = await _harness.sequential(peer.run_once, warmup=args.warmup, runs=args.runs)
    result.runs_per_s = await _harness.concurrent(peer.run_once, concurrency=args.concurrency, rounds=args.rounds)


def measure(name: str, args: argparse.Namespace) -> Result:
    module, imports, setup = PEERS[name]
    label = "raw openai" if name == "raw" else name
    result = Result(label)
    if importlib.util.find_spec(module) is None:
        result.note = "not installed"
        return result
    if name != "raw":  # run.py times `import openai` itself
        result.import_ms = _harness.import_ms(sys.executable, imports, repeat=args.import_repeat)
        result.extra["imports"] = imports
    peer = setup(args.base_url)
    result.note = peer.version
    asyncio.run(_measure_runs(peer, result, args))
    if name != "raw":
        result.construct_us = _harness.construction_us(peer.make_agent)
        result.bytes_per_agent, count = _harness.bytes_per_agent(peer.make_agent, count=args.agents)
        result.extra["agents_measured"] = count
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure one peer framework against the stub server.")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--peer", choices=sorted(PEERS), required=True)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--import-repeat", type=int, default=3)
    args = parser.parse_args()
    _harness.apply_quiet_env()
    warnings.simplefilter("ignore")  # peers' deprecation notices are not the bench's business
    try:
        result = measure(args.peer, args)
    except Exception as exc:  # a peer that breaks is reported, not fatal to the whole bench
        result = Result("raw openai" if args.peer == "raw" else args.peer, note=f"failed: {type(exc).__name__}: {exc}")
    print(json.dumps(result.as_dict()), flush=True)


if __name__ == "__main__":
    main()
