"""An agent whose model's stream breaks off once mid-answer, then answers whole (for `miniagent chat --agent`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from miniagent import Agent
from miniagent.errors import ModelAPIError
from miniagent.messages import ModelMessage
from miniagent.testing import AgentInfo, FunctionModel, RecordingClock

_calls = 0


async def _stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    global _calls
    _calls += 1
    yield "Hello "
    if _calls == 1:
        raise ModelAPIError("The stream was cut after 1 event.", model_name="flaky")
    yield "world"


agent = Agent(model=FunctionModel(stream_function=_stream, name="flaky"), clock=RecordingClock())
