"""The agent the scaled-stack test serves from its `miniagent serve` replicas and `miniagent worker` processes.

`agent` (named `stack`) runs two steps on a prompt that is a unique token:

1. the model (after a short sleep, so runs are in flight when the test breaks things) calls the tool
   `record_effect(token=<prompt>)`;
2. the tool, declared **not idempotent**, records its effect and sleeps a little;
3. the model (after another short sleep) answers `done <token>`.

Every model call and the tool's begin and end are appended to the file `STACK_EFFECTS_LOG` names, one line each:
`<what> <token> <pid> <time>` with `<what>` one of `model0` (the first step's model call), `tool-begin`, `tool-end`,
`model1` (the answering call). Lines are written with one `write()` on an `O_APPEND` descriptor, so the lines of
concurrent processes never interleave, and their order in the file is the order the calls happened in. The test
reads the file to count effects per run (the prompt is the run's token), and to prove a completed step's model
call was never made again after a worker was killed.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass

from miniagent import Agent
from miniagent.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from miniagent.testing import AgentInfo, FunctionModel

__all__ = ["EFFECTS_LOG_ENV", "MODEL_SLEEP_S", "TOOL_SLEEP_S", "LogLine", "agent", "read_log"]

EFFECTS_LOG_ENV = "STACK_EFFECTS_LOG"
"""The environment variable naming the file the agent appends its calls to."""


MODEL_SLEEP_S = (0.05, 0.15)
"""Each model call sleeps a random time in this range (seconds) before it answers."""
TOOL_SLEEP_S = 0.1
"""The tool sleeps this long between its begin and end lines."""


def _log(what: str, token: str) -> None:
    path = os.environ.get(EFFECTS_LOG_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{what} {token} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


def _token(messages: list[ModelMessage]) -> str:
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart):
                    return str(part.content)
    raise AssertionError("the stack agent was called without a user prompt")


async def _model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    token = _token(messages)
    answering = any(
        isinstance(part, ToolReturnPart)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
    )
    _log("model1" if answering else "model0", token)
    await asyncio.sleep(random.uniform(*MODEL_SLEEP_S))
    if answering:
        return ModelResponse([TextPart(f"done {token}")])
    return ModelResponse([ToolCallPart("record_effect", {"token": token}, f"call-{token}")])


agent: Agent[None, str] = Agent(FunctionModel(_model, name="stack-stub"), name="stack")
"""The two-step agent with a non-idempotent tool (see the module docs)."""


@agent.tool(idempotent=False)
async def record_effect(token: str) -> str:
    """Record this run's side effect (not idempotent: a second call would repeat it)."""
    _log("tool-begin", token)
    await asyncio.sleep(TOOL_SLEEP_S)
    _log("tool-end", token)
    return f"recorded {token}"


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of the effects log."""

    what: str
    """`model0`, `tool-begin`, `tool-end` or `model1`."""
    token: str
    """The run's token (its prompt)."""
    pid: int
    """The process that made the call."""
    at: float
    """When (epoch seconds)."""


def read_log(path: str | os.PathLike[str]) -> list[LogLine]:
    """The effects log's complete lines, in the order they were written (none if the file does not exist yet).

    A last line without its newline is being written right now: it is left for the next read.
    """
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.split("\n")[:-1]:
        what, token, pid, at = raw.split(" ")
        lines.append(LogLine(what, token, int(pid), float(at)))
    return lines
