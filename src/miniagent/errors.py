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
├── StoreError                      the store (SQLite / PostgreSQL) failed: unreachable, corrupt, read-only, no schema
│   ├── ThreadNotFound              no such thread for this user and tenant (never another user's data)
│   ├── ThreadConflict              another writer moved the thread's leaf first: reload and retry
│   └── DeadLetterNotFound          no such dead letter in this tenant (never another tenant's)
├── RunError                        a run failed; carries the messages and usage so nothing is lost
│   ├── UsageLimitExceeded          a step, request, token or tool-call limit was reached
│   ├── UnexpectedModelBehavior     the model kept returning output we cannot use
│   │   └── ToolRetriesExceeded     a tool's arguments failed validation more often than allowed
│   ├── RunTimeout                  a deadline passed; `stage` says which (run, step, request, tool)
│   └── ModelAPIError               the model's API failed: transport, timeout, a body we cannot parse
│       ├── ModelTimeout            one request (or a silent stream) passed its deadline
│       ├── CircuitOpen             the upstream's breaker is open: not called until it cools down
│       ├── AllModelsFailed         every model of a fallback chain failed (`failures` names each)
│       ├── InvalidModelResponse    (`miniagent.resilience`) a fallback member's answer was unusable; only
│       │                           seen in `AllModelsFailed.failures` and `FallbackUsed` events
│       └── ModelHTTPError          the API answered with an error status
│           ├── ModelRateLimited        429: too many requests (carries `retry_after_s`)
│           ├── ModelOverloaded         503/529: the provider is overloaded or unavailable
│           ├── ContextLengthExceeded   the conversation does not fit the model's context window
│           ├── ContentFiltered         the provider refused the content
│           ├── ModelAuthError          401/403: the key is missing, wrong or lacks access
│           └── ModelBadRequest         400/404/422: the request is invalid for this model
├── LimiterUnavailable              (`miniagent.limits`) the shared rate limiter (Redis) did not answer: refused
├── QueueUnavailable                the job queue (SQLite file, RabbitMQ, Redis) cannot be reached: nothing enqueued
├── ToolNotReplayable               a run taken over after a crash would repeat a non-idempotent tool call: failed
└── ModelRetry                      raised by a tool to ask the model to try again (control flow)
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .messages import ModelMessage
    from .usage import Usage

__all__ = [
    "QueueUnavailable",
    "ToolNotReplayable",
    "AllModelsFailed",
    "CircuitOpen",
    "ContentFiltered",
    "ContextLengthExceeded",
    "DeadLetterNotFound",
    "MiniAgentError",
    "MissingCredentialError",
    "ModelAPIError",
    "ModelAuthError",
    "ModelBadRequest",
    "ModelFileError",
    "ModelHTTPError",
    "ModelNotFoundError",
    "ModelOverloaded",
    "ModelRateLimited",
    "ModelRetry",
    "ModelTimeout",
    "OptionalDependencyError",
    "OutputTypeError",
    "RunError",
    "RunTimeout",
    "StoreError",
    "ThreadConflict",
    "ThreadNotFound",
    "TimeoutStage",
    "ToolDefinitionError",
    "ToolRetriesExceeded",
    "UnexpectedModelBehavior",
    "UsageLimitExceeded",
    "UserError",
    "is_permanent_failure",
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


class StoreError(MiniAgentError):
    """The store failed: the database is unreachable, corrupt, read-only or has no schema; the message says what to do.

    A store operation is one transaction: when this is raised, nothing of that operation was written.
    """


class ThreadNotFound(StoreError):
    """No thread (or message) with that id exists for this user and tenant."""


class ThreadConflict(StoreError):
    """Another writer appended to the thread first (its leaf moved): reload the thread and retry."""


class DeadLetterNotFound(StoreError):
    """No dead letter with that id exists for this tenant (never another tenant's)."""


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


TimeoutStage = Literal["run", "step", "request", "tool"]
"""What timed out: the whole run, one step (model request plus its tool calls), one model request, one tool call."""


class RunTimeout(RunError):
    """A deadline passed before the run finished; `stage` says which one (the run's, a step's, ...)."""

    stage: TimeoutStage
    """The deadline that passed."""
    timeout_s: float | None
    """The deadline, in seconds."""

    def __init__(
        self,
        message: str,
        *,
        stage: TimeoutStage = "run",
        timeout_s: float | None = None,
        messages: list[ModelMessage] | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message, messages=messages, usage=usage)
        self.stage = stage
        self.timeout_s = timeout_s


class ModelAPIError(RunError):
    """The model's API could not be reached or failed: connection, timeout, or a response we cannot use."""

    model_name: str
    """The model whose API failed."""
    provider: str | None
    """The provider (`openai`, `anthropic`, `openai-compatible`...), when known."""
    request_id: str | None
    """The provider's id of the failed request, for its support and logs."""
    retryable: bool
    """Whether the same request may succeed if tried again (the resilience layer reads this)."""

    default_retryable = True
    """What `retryable` is when not given: transport failures are worth retrying."""

    def __init__(
        self,
        message: str,
        *,
        model_name: str,
        provider: str | None = None,
        request_id: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.model_name = model_name
        self.provider = provider
        self.request_id = request_id
        self.retryable = self.default_retryable if retryable is None else retryable


class ModelTimeout(ModelAPIError):
    """One model request did not answer (or a stream went silent) within its deadline; worth retrying."""

    stage: TimeoutStage = "request"
    """Always `request`: the deadline of one model request."""


class CircuitOpen(ModelAPIError):
    """The upstream's circuit breaker is open: it failed too often recently, so it is not called until it cools down.

    Not retryable on the same upstream (the breaker decides when to probe it again); a fallback moves on at once.
    """

    default_retryable = False

    upstream: str
    """The upstream whose breaker is open."""
    retry_in_s: float
    """Seconds until the breaker lets a probe request through."""

    def __init__(self, message: str, *, model_name: str, upstream: str, retry_in_s: float) -> None:
        super().__init__(message, model_name=model_name)
        self.upstream = upstream
        self.retry_in_s = retry_in_s


class AllModelsFailed(ModelAPIError):
    """Every model of a fallback chain failed; `failures` names each one and why."""

    default_retryable = False

    failures: list[tuple[str, BaseException]]
    """Each model's name and the error it ended with, in the order they were tried."""

    def __init__(self, message: str, *, model_name: str, failures: list[tuple[str, BaseException]]) -> None:
        super().__init__(message, model_name=model_name)
        self.failures = failures


class ModelHTTPError(ModelAPIError):
    """The model's API answered with an HTTP error status."""

    status_code: int
    """The HTTP status."""
    body: object
    """The error body as the provider sent it (parsed JSON when possible), secrets removed."""

    def __init__(
        self,
        message: str,
        *,
        model_name: str,
        status_code: int,
        body: object = None,
        provider: str | None = None,
        request_id: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        if retryable is None and type(self) is ModelHTTPError:
            retryable = status_code in (408, 409, 425, 429) or status_code >= 500
        super().__init__(message, model_name=model_name, provider=provider, request_id=request_id, retryable=retryable)
        self.status_code = status_code
        self.body = body


class ModelRateLimited(ModelHTTPError):
    """The provider limited our request rate (HTTP 429)."""

    retry_after_s: float | None
    """How long the provider asked us to wait (`Retry-After`, seconds or HTTP date, or its rate-limit headers)."""

    def __init__(
        self,
        message: str,
        *,
        model_name: str,
        status_code: int = 429,
        body: object = None,
        provider: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(
            message,
            model_name=model_name,
            status_code=status_code,
            body=body,
            provider=provider,
            request_id=request_id,
            retryable=retryable,
        )
        self.retry_after_s = retry_after_s


class ModelOverloaded(ModelHTTPError):
    """The provider is overloaded or temporarily unavailable (HTTP 503, Anthropic 529)."""


class ContextLengthExceeded(ModelHTTPError):
    """The conversation does not fit the model's context window; retrying the same request cannot help."""

    default_retryable = False


class ContentFiltered(ModelHTTPError):
    """The provider refused the request or response content."""

    default_retryable = False


class ModelAuthError(ModelHTTPError):
    """The API key is missing, wrong, or lacks access to the model (HTTP 401/403)."""

    default_retryable = False


class ModelBadRequest(ModelHTTPError):
    """The request is invalid for this model or endpoint (HTTP 400/404/422)."""

    default_retryable = False


class QueueUnavailable(MiniAgentError):
    """The job queue cannot be reached (a file that cannot be opened, a broker that does not answer); nothing was
    enqueued or settled. The message names the queue's URL (without its password) and what to check.
    """  # noqa: D205


class ToolNotReplayable(RunError):
    """A run taken over after its worker stopped (crash, kill) would call again a tool that is not idempotent and
    may already have run: the run fails visibly instead of repeating its effect. Check the tool's effect, then
    resume the thread.
    """  # noqa: D205

    def __init__(self, message: str, *, tool_name: str, tool_call_id: str | None = None) -> None:
        super().__init__(message)
        self.tool_name = tool_name
        self.tool_call_id = tool_call_id


class ModelRetry(MiniAgentError):
    """Raise from a tool (or output validator) to send `message` back to the model and let it try again."""


def is_permanent_failure(exc: BaseException) -> bool:
    """Whether a run that ended with `exc` failed for good and belongs in the dead-letter table.

    True for upstream failures that survived the retry policy, breakers and fallbacks (every `ModelAPIError`,
    including `CircuitOpen` and `AllModelsFailed`), for timeouts and for a taken-over run that would repeat a
    non-idempotent tool call (`ToolNotReplayable`); false for the caller's own limits, bad input
    and cancellation, which a replay would not fix.
    """
    return isinstance(exc, ModelAPIError | RunTimeout | ToolNotReplayable)
