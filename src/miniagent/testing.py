"""Test doubles for agents: scripted and function models, and a clock tests control.

```python
from miniagent import Agent
from miniagent.testing import ScriptedModel

agent = Agent(model=ScriptedModel(["Hello!"]))
assert agent.run_sync("Hi").output == "Hello!"
```
"""

from __future__ import annotations

import heapq
import itertools

import anyio

from .models.test import (
    AgentInfo,
    EchoModel,
    FunctionModel,
    ModelCall,
    ScriptedModel,
    ScriptedStep,
    UnconsumedModelSteps,
    UnexpectedModelCall,
    estimate_usage,
    text_response,
    tool_call_response,
)

__all__ = [
    "AgentInfo",
    "EchoModel",
    "FunctionModel",
    "ManualClock",
    "ModelCall",
    "RecordingClock",
    "ScriptedModel",
    "ScriptedStep",
    "UnconsumedModelSteps",
    "UnexpectedModelCall",
    "estimate_usage",
    "text_response",
    "tool_call_response",
]


class ManualClock:
    """A clock that moves only when a test calls [`advance`][miniagent.testing.ManualClock.advance].

    Timeouts and sleeps on this clock fire deterministically, with no real waiting.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, anyio.CancelScope | anyio.Event]] = []

    def now(self) -> float:
        """The clock's current time."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by `seconds`."""
        event = anyio.Event()
        heapq.heappush(self._timers, (self._now + seconds, next(self._seq), event))
        await event.wait()

    def deadline_scope(self, seconds: float | None) -> anyio.CancelScope:
        """A cancel scope cancelled when the clock passes `seconds` from now."""
        scope = anyio.CancelScope()
        if seconds is not None:
            heapq.heappush(self._timers, (self._now + seconds, next(self._seq), scope))
        return scope

    @property
    def pending(self) -> int:
        """Timers (sleeps and deadlines) not yet fired."""
        return len(self._timers)

    def advance(self, seconds: float) -> None:
        """Move time forward, firing every sleep and deadline that falls due. Call from the event loop."""
        self._now += seconds
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            if isinstance(timer, anyio.Event):
                timer.set()
            else:
                timer.cancel()


class RecordingClock(ManualClock):
    """A [`ManualClock`][miniagent.testing.ManualClock] whose `sleep` returns at once: it records the delay and
    moves time forward by it (firing any deadline that falls due).

    Retry delays are asserted from `sleeps` instead of being waited out.

    Example:
        ```python
        import anyio

        from miniagent.testing import RecordingClock

        clock = RecordingClock()
        anyio.run(clock.sleep, 1.5)
        assert clock.sleeps == [1.5] and clock.now() == 1.5
        ```
    """  # noqa: D205 (the summary needs both lines)

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []
        """Every delay slept, in order."""

    async def sleep(self, seconds: float) -> None:
        """Record `seconds` and advance the clock by them, without waiting."""
        self.sleeps.append(seconds)
        self.advance(seconds)
        await anyio.lowlevel.checkpoint()
