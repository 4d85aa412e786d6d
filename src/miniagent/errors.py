"""Every exception miniagent raises.

```text
MiniAgentError                      every error of ours; `str(e)` says what went wrong and what to do
├── UserError                       misuse of the API or configuration: the message says what to change
│   ├── ToolDefinitionError         a tool function cannot become a tool (bad signature or type)
│   ├── OutputTypeError             `output_type` cannot be used as a structured output
│   ├── ModelNotFoundError          a model string names no registered provider
│   ├── OptionalDependencyError     a feature needs an extra that is not installed
│   ├── MissingCredentialError      a provider needs a key that is not set
│   └── ModelFileError              the local model file is missing or not a valid GGUF
├── RunError                        a run failed; carries the messages and usage so nothing is lost
│   ├── UsageLimitExceeded          a step, request, token or tool-call limit was reached
│   ├── UnexpectedModelBehavior     the model kept returning output we cannot use
│   │   └── ToolRetriesExceeded     a tool's arguments failed validation more often than allowed
│   ├── RunTimeout                  the run's own deadline passed
│   └── ModelAPIError               the model's API failed (transport or HTTP status)
│       └── ModelHTTPError          the API answered with an error status
└── ModelRetry                      raised by a tool to ask the model to try again (control flow)
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .messages import ModelMessage
    from .usage import Usage

__all__ = [
    "MiniAgentError",
    "MissingCredentialError",
    "ModelAPIError",
    "ModelFileError",
    "ModelHTTPError",
    "ModelNotFoundError",
    "ModelRetry",
    "OptionalDependencyError",
    "OutputTypeError",
    "RunError",
    "RunTimeout",
    "ToolDefinitionError",
    "ToolRetriesExceeded",
    "UnexpectedModelBehavior",
    "UsageLimitExceeded",
    "UserError",
]


class MiniAgentError(Exception):
    """Root of every error miniagent raises."""

    message: str
    """What went wrong, and what to do about it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UserError(MiniAgentError):
    """The API or the configuration was used in a way that cannot work; the message says what to change."""


class ToolDefinitionError(UserError):
    """A function cannot become a tool: an unsupported parameter, type or signature."""


class OutputTypeError(UserError):
    """The `output_type` given to an agent cannot be used as structured output."""


class ModelNotFoundError(UserError):
    """A model string names no registered provider."""


class OptionalDependencyError(UserError):
    """A feature needs an optional extra that is not installed."""

    def __init__(self, what: str, extra: str, *, missing: str | None = None) -> None:
        detail = f" (could not import {missing!r})" if missing else ""
        super().__init__(
            f"{what} needs the {extra!r} extra{detail}: install it with `pip install 'miniagent[{extra}]'`."
        )
        self.extra = extra


class MissingCredentialError(UserError):
    """A provider needs a credential that is not configured."""

    def __init__(self, provider: str, variable: str) -> None:
        super().__init__(
            f"The {provider} provider needs an API key and none is set: "
            f"set the {variable} environment variable or pass `api_key=` to the model."
        )
        self.variable = variable


class ModelFileError(UserError):
    """The local model's weights file is missing, unreadable or not a valid GGUF file."""


class RunError(MiniAgentError):
    """A run failed. The messages exchanged so far and the usage are kept on the error."""

    messages: list[ModelMessage]
    """Every message of the run up to the failure, in order."""
    usage: Usage | None
    """What the run consumed before it failed."""

    def __init__(self, message: str, *, messages: list[ModelMessage] | None = None, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.messages = messages if messages is not None else []
        self.usage = usage


class UsageLimitExceeded(RunError):
    """A limit on steps, requests, tokens or tool calls was reached before the run finished."""


class UnexpectedModelBehavior(RunError):
    """The model returned output that could not be used, more often than the retries allow."""


class ToolRetriesExceeded(UnexpectedModelBehavior):
    """A tool's arguments failed validation more times than the tool's `retries` allow."""


class RunTimeout(RunError):
    """The run's deadline passed before it finished."""


class ModelAPIError(RunError):
    """The model's API could not be reached or failed."""

    model_name: str
    """The model whose API failed."""

    def __init__(self, message: str, *, model_name: str) -> None:
        super().__init__(message)
        self.model_name = model_name


class ModelHTTPError(ModelAPIError):
    """The model's API answered with an HTTP error status."""

    def __init__(self, message: str, *, model_name: str, status_code: int, body: object = None) -> None:
        super().__init__(message, model_name=model_name)
        self.status_code = status_code
        self.body = body


class ModelRetry(MiniAgentError):
    """Raise from a tool (or output validator) to send `message` back to the model and let it try again."""
