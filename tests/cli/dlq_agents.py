"""Agents for the `miniagent dlq` tests: one that fails for good, one that answers."""

from __future__ import annotations

from miniagent import Agent
from miniagent.errors import ModelAuthError
from miniagent.messages import ModelMessage
from miniagent.testing import AgentInfo, FunctionModel


def _rejected(messages: list[ModelMessage], info: AgentInfo) -> str:
    raise ModelAuthError("the key was rejected", model_name="m", status_code=401)


failing = Agent(FunctionModel(_rejected), name="failing")
answering = Agent(FunctionModel(lambda messages, info: "fixed now"), name="answering")
