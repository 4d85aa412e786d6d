"""A run that commits one step, then blocks inside its second model request until it is killed.

`python -m tests.store.crash_agent URL THREAD_ID` (used by test_durability.py).
"""

from __future__ import annotations

import sys

import anyio

from miniagent import Agent
from miniagent.messages import ModelMessage, ModelResponse
from miniagent.store import SQLStore
from miniagent.testing import AgentInfo, FunctionModel, tool_call_response


async def _model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        return tool_call_response(("lookup", {"key": "answer"}))
    await anyio.sleep_forever()  # the test SIGKILLs the process here
    raise AssertionError("unreachable")


async def main(url: str, thread_id: str) -> None:
    store = await SQLStore.open(url, migrate=False)
    agent = Agent(FunctionModel(_model), store=store)

    @agent.tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value of {key}"

    await agent.run("What is the answer?", thread_id=thread_id)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
