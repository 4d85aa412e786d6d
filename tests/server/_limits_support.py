"""Helpers of the limits tests: an app with limits on a manual wall clock, and a model that counts its calls."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from miniagent import Agent
from miniagent.limits import DAY_S
from miniagent.messages import ModelMessage
from miniagent.server._limits import LIMITS_CLOCK_KEY, current_principal
from miniagent.server._state import Principal
from miniagent.settings import Settings
from miniagent.testing import AgentInfo, FunctionModel, ManualClock

from .conftest import AppFactory

START = 20_000 * DAY_S + 3_600.0  # 01:00 UTC
CHAT = {"model": "counter", "messages": [{"role": "user", "content": "hello there, how are you"}]}


class Counter:
    """A model answering `ok` (about 7 tokens a run) that records each call and who it ran for."""

    def __init__(self) -> None:
        self.calls = 0
        self.principals: list[Principal | None] = []
        self.model = FunctionModel(self.answer, name="counter")

    def answer(self, messages: list[ModelMessage], info: AgentInfo) -> str:
        self.calls += 1
        self.principals.append(current_principal.get())
        return "ok"

    def agent(self) -> Agent[Any, Any]:
        return Agent(self.model, name="counter")


def limited_app(
    make_app: AppFactory, settings: Settings, clock: ManualClock, counter: Counter, **limits: Any
) -> FastAPI:
    """An app serving `counter` with `limits` (settings fields), its limiter on `clock`."""
    app = make_app(settings.model_copy(update=limits), agents=[counter.agent()])
    app.state.miniagent.extras[LIMITS_CLOCK_KEY] = clock.now
    return app


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}
