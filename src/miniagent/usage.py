"""What a run consumed, and the limits it must stay within."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

from .errors import UsageLimitExceeded, UserError

__all__ = ["Usage", "UsageLimits"]


@dataclass(slots=True)
class Usage:
    """Counters of what a run (or one model response) consumed. Mutable so a run can accumulate in place."""

    _: KW_ONLY
    requests: int = 0
    """Model requests made."""
    tool_calls: int = 0
    """Tool calls executed (successful or not)."""
    input_tokens: int = 0
    """Prompt tokens sent to the model, as the model reported them (cache reads included)."""
    output_tokens: int = 0
    """Tokens the model generated (reasoning tokens included)."""
    cache_read_tokens: int = 0
    """The part of `input_tokens` read from the provider's prompt cache (billed at the cached-input price)."""
    reasoning_tokens: int = 0
    """The part of `output_tokens` spent on hidden reasoning."""
    cost_usd: float | None = 0.0
    """What the model responses cost in USD, from the provider-reported usage and the price table; `None` when
    the price of a model used is unknown (an unknown part makes the whole total unknown, never zero)."""

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def incr(self, other: Usage) -> None:
        """Add `other`'s counters to this one, in place."""
        self.requests += other.requests
        self.tool_calls += other.tool_calls
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost_usd = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd

    def __add__(self, other: Usage) -> Usage:
        total = Usage()
        total.incr(self)
        total.incr(other)
        return total


@dataclass(frozen=True, slots=True)
class UsageLimits:
    """Upper bounds for one run; `None` means no bound.

    Exceeding a limit ends the run with [`UsageLimitExceeded`][miniagent.errors.UsageLimitExceeded].
    """

    _: KW_ONLY
    request_limit: int | None = 50
    """Model requests (steps) allowed in one run."""
    tool_calls_limit: int | None = None
    """Tool calls allowed in one run."""
    input_tokens_limit: int | None = None
    """Input tokens allowed across the run's requests."""
    output_tokens_limit: int | None = None
    """Output tokens allowed across the run's requests."""
    total_tokens_limit: int | None = None
    """Input plus output tokens allowed across the run's requests."""

    def __post_init__(self) -> None:
        for name in ("request_limit", "tool_calls_limit", "input_tokens_limit", "output_tokens_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise UserError(f"UsageLimits.{name} must be a non-negative integer or None, got {value!r}.")
        if self.total_tokens_limit is not None and self.total_tokens_limit < 0:
            raise UserError(
                f"UsageLimits.total_tokens_limit must be non-negative or None, got {self.total_tokens_limit!r}."
            )

    def check_before_request(self, usage: Usage) -> None:
        """Raise if one more model request would go over the request limit."""
        if self.request_limit is not None and usage.requests >= self.request_limit:
            raise UsageLimitExceeded(
                f"The run reached its limit of {self.request_limit} model requests (steps) without a final answer; "
                "raise `request_limit` in `UsageLimits` (or `max_steps`) if the task needs more steps.",
                usage=usage,
            )

    def check_tokens(self, usage: Usage) -> None:
        """Raise if the tokens used so far go over a token limit."""
        checks = (
            ("input_tokens_limit", self.input_tokens_limit, usage.input_tokens),
            ("output_tokens_limit", self.output_tokens_limit, usage.output_tokens),
            ("total_tokens_limit", self.total_tokens_limit, usage.total_tokens),
        )
        for name, limit, used in checks:
            if limit is not None and used > limit:
                raise UsageLimitExceeded(
                    f"The run used {used} tokens, over its {name} of {limit}; raise `{name}` in `UsageLimits` "
                    "or shorten the conversation.",
                    usage=usage,
                )

    def check_tool_calls(self, usage: Usage, requested: int) -> None:
        """Raise if running `requested` more tool calls would go over the tool-call limit."""
        if self.tool_calls_limit is not None and usage.tool_calls + requested > self.tool_calls_limit:
            raise UsageLimitExceeded(
                f"The model asked for {requested} more tool call(s) but the run's tool_calls_limit is "
                f"{self.tool_calls_limit} ({usage.tool_calls} used); raise `tool_calls_limit` in `UsageLimits`.",
                usage=usage,
            )
