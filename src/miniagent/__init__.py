"""miniagent: typed LLM agents that survive production, and chat offline out of the box.

```python
from miniagent import Agent

agent = Agent(instructions="You are a helpful assistant.")  # the bundled local model
print(agent.run_sync("Hello!").output)
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .agent import Agent, RunResult, StreamedRun
from .context import RunContext
from .errors import (
    AllModelsFailed,
    CircuitOpen,
    MiniAgentError,
    ModelRetry,
    ModelTimeout,
    RunError,
    RunTimeout,
    ToolRetriesExceeded,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
    UserError,
)
from .events import (
    AgentEvent,
    CircuitStateChanged,
    FallbackUsed,
    HistoryFitted,
    ModelRequestStarted,
    ModelResponseReceived,
    RetryScheduled,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StreamRestarted,
    TextDelta,
    ThinkingDelta,
    ToolCallArgsDelta,
    ToolCallFinished,
    ToolCallStarted,
    UsageUpdated,
)
from .messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from .models import Model, ModelSettings
from .tools import Tool
from .usage import Usage, UsageLimits

if TYPE_CHECKING:
    from .models.local import LocalModel
    from .models.openai_chat import OpenAIChatModel
    from .resilience import CircuitBreaker, FallbackModel, RetryPolicy
    from .settings import Settings

# Names served on first access, so `import miniagent` loads no provider SDK, llama.cpp or pydantic-settings.
_LAZY_EXPORTS: dict[str, tuple[str, str | None]] = {
    "LocalModel": ("miniagent.models.local", "local"),
    "OpenAIChatModel": ("miniagent.models.openai_chat", "openai"),
    "CircuitBreaker": ("miniagent.resilience", None),
    "FallbackModel": ("miniagent.resilience", None),
    "RetryPolicy": ("miniagent.resilience", None),
    "Settings": ("miniagent.settings", None),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, extra = _LAZY_EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'miniagent' has no attribute {name!r}") from None
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        from .errors import OptionalDependencyError

        raise OptionalDependencyError(f"`miniagent.{name}`", extra, missing=exc.name) from exc
    return getattr(module, name)


__all__ = [
    # agents
    "Agent",
    "RunContext",
    "RunResult",
    "StreamedRun",
    "Tool",
    # models
    "FallbackModel",
    "LocalModel",
    "Model",
    "ModelSettings",
    "OpenAIChatModel",
    # messages
    "ModelMessage",
    "ModelRequest",
    "ModelResponse",
    "RetryPromptPart",
    "SystemPromptPart",
    "TextPart",
    "ThinkingPart",
    "ToolCallPart",
    "ToolReturnPart",
    "UserPromptPart",
    # events
    "AgentEvent",
    "HistoryFitted",
    "ModelRequestStarted",
    "ModelResponseReceived",
    "RetryScheduled",
    "RunCancelled",
    "RunFailed",
    "RunFinished",
    "RunStarted",
    "TextDelta",
    "ThinkingDelta",
    "ToolCallArgsDelta",
    "ToolCallFinished",
    "ToolCallStarted",
    "UsageUpdated",
    "StreamRestarted",
    "FallbackUsed",
    "CircuitStateChanged",
    # resilience
    "CircuitBreaker",
    "RetryPolicy",
    # usage and settings
    "Settings",
    "Usage",
    "UsageLimits",
    # errors
    "MiniAgentError",
    "ModelRetry",
    "RunError",
    "RunTimeout",
    "ToolRetriesExceeded",
    "UnexpectedModelBehavior",
    "UsageLimitExceeded",
    "UserError",
    "AllModelsFailed",
    "CircuitOpen",
    "ModelTimeout",
    # version
    "__version__",
]
