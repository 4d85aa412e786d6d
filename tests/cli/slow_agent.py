"""An agent for CLI tests: it streams one word, then waits until cancelled (as a slow model would)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from miniagent import Agent
from miniagent.messages import ModelMessage, ModelRequest, UserPromptPart
from miniagent.testing import AgentInfo, FunctionModel


async def _stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    last = messages[-1]
    part = last.parts[-1] if isinstance(last, ModelRequest) else None
    prompt = part.content if isinstance(part, UserPromptPart) else ""
    if prompt == "hang":
        yield "thinking..."
        await anyio.sleep_forever()
    yield f"you said {prompt}"


agent = Agent(model=FunctionModel(stream_function=_stream), name="slow")
not_an_agent = 42
