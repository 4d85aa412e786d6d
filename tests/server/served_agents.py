"""Agents for the server tests that load agents from `module:attribute` paths."""

from __future__ import annotations

from miniagent import Agent
from miniagent.testing import EchoModel

support = Agent(EchoModel(), name="support")
billing = Agent(EchoModel(), name="billing-agent")
nothing_here = "not an agent"
