"""The retry policy: decorrelated jitter, an attempt cap, a total deadline and the server's `Retry-After`."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Final, cast

from ..errors import MiniAgentError, ModelAPIError, ModelRateLimited, UserError

__all__ = ["RetryPolicy", "default_retryable"]


def default_retryable(error: BaseException) -> bool:
    """Whether a model error is worth trying again: the provider error's `retryable` flag (set for timeouts)."""
    return isinstance(error, ModelAPIError) and error.retryable


def _number(name: str, value: object, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise UserError(f"RetryPolicy: `{name}` must be a number of seconds, got {value!r}.")
    if value < minimum or (strict and value == minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise UserError(f"RetryPolicy: `{name}` must be {bound} seconds, got {value!r}.")
    return float(value)


class RetryPolicy:
    """How a failed model request (or tool call) is tried again.

    Delays follow "decorrelated jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter"): each delay is
    drawn uniformly between `base_delay_s` and three times the previous delay, capped at `max_delay_s`, so retries
    spread out instead of arriving in waves. A `Retry-After` the server sent (`ModelRateLimited.retry_after_s`, in
    seconds or as an HTTP date, or from rate-limit headers) is honoured: the delay is never shorter. Only retryable
    errors are retried (the provider error's `retryable` flag, timeouts included), at most `max_attempts` attempts
    in all, and never past `deadline_s` from the first attempt.

    Example:
        ```python
        import random

        from miniagent.errors import ModelRateLimited
        from miniagent.resilience import RetryPolicy

        policy = RetryPolicy(max_attempts=3, base_delay_s=0.5, max_delay_s=10.0, rng=random.Random(1))
        first = policy.next_delay(1, None, None)
        assert 0.5 <= first <= 1.5
        limited = ModelRateLimited("429", model_name="m", retry_after_s=7.0)
        assert policy.next_delay(2, first, limited) >= 7.0
        ```

    Args:
        max_attempts: Attempts in all, the first one included (1 never retries).
        base_delay_s: The shortest delay, and the first delay's lower bound.
        max_delay_s: The longest delay the backoff computes (a server's `Retry-After` may ask for more, up to
            `max_retry_after_s`).
        deadline_s: No retry starts later than this many seconds after the first attempt (`None`: no deadline).
        respect_retry_after: Wait at least as long as the server asked.
        max_retry_after_s: The longest server-requested wait honoured; a longer one is not waited out: the error is
            raised at once, saying so.
        retry_on: Which errors to retry (default: model errors whose `retryable` flag is set, and timeouts; for a
            tool, any exception).
        rng: The random source of the jitter (pass `random.Random(seed)` for reproducible delays).

    Raises:
        UserError: a nonsensical policy (zero attempts, negative delays, `base_delay_s > max_delay_s`, a deadline
            shorter than the first delay...).
    """

    __slots__ = (
        "max_attempts",
        "base_delay_s",
        "max_delay_s",
        "deadline_s",
        "respect_retry_after",
        "max_retry_after_s",
        "retry_on",
        "_rng",
    )

    def __init__(
        self,
        max_attempts: int = 4,
        *,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        deadline_s: float | None = 120.0,
        respect_retry_after: bool = True,
        max_retry_after_s: float = 120.0,
        retry_on: Callable[[BaseException], bool] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(cast(object, max_attempts), int) or max_attempts < 1:
            raise UserError(
                f"RetryPolicy: `max_attempts` must be an integer >= 1 (1 means no retry), got {max_attempts!r}."
            )
        base = _number("base_delay_s", base_delay_s)
        top = _number("max_delay_s", max_delay_s)
        if base > top:
            raise UserError(
                f"RetryPolicy: `base_delay_s` ({base}) is larger than `max_delay_s` ({top}); the shortest delay "
                "cannot exceed the longest."
            )
        deadline = None if deadline_s is None else _number("deadline_s", deadline_s, strict=True)
        if deadline is not None and max_attempts > 1 and deadline < base:
            raise UserError(
                f"RetryPolicy: `deadline_s` ({deadline}) is shorter than `base_delay_s` ({base}): no retry could "
                "ever start. Raise `deadline_s`, lower `base_delay_s`, or use `RetryPolicy.none()`."
            )
        cap = _number("max_retry_after_s", max_retry_after_s)
        if retry_on is not None and not callable(retry_on):
            raise UserError(f"RetryPolicy: `retry_on` must be a function (error) -> bool, got {retry_on!r}.")
        if rng is not None and not isinstance(rng, random.Random):
            raise UserError(f"RetryPolicy: `rng` must be a random.Random, got {type(rng).__name__}.")
        self.max_attempts: Final = max_attempts
        """Attempts in all, the first included."""
        self.base_delay_s: Final = base
        """The shortest delay, in seconds."""
        self.max_delay_s: Final = top
        """The longest computed delay, in seconds."""
        self.deadline_s: Final = deadline
        """No retry starts later than this after the first attempt (`None`: no deadline)."""
        self.respect_retry_after: Final = bool(respect_retry_after)
        """Whether a server's `Retry-After` sets the shortest delay."""
        self.max_retry_after_s: Final = cap
        """The longest server-requested wait honoured."""
        self.retry_on: Final = retry_on
        """The errors retried, when not the default."""
        self._rng = rng

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries (one attempt)."""
        return cls(max_attempts=1, base_delay_s=0.0, max_delay_s=0.0, deadline_s=None)

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(max_attempts={self.max_attempts}, base_delay_s={self.base_delay_s}, "
            f"max_delay_s={self.max_delay_s}, deadline_s={self.deadline_s})"
        )

    def is_retryable(self, error: BaseException) -> bool:
        """Whether `error` is one this policy retries (before counting attempts or time)."""
        predicate = self.retry_on
        return predicate(error) if predicate is not None else default_retryable(error)

    def server_wait(self, error: BaseException | None) -> float | None:
        """The wait the server asked for with `error` (its `Retry-After`), when this policy honours it."""
        if self.respect_retry_after and isinstance(error, ModelRateLimited):
            return error.retry_after_s
        return None

    def next_delay(self, attempt: int, previous_delay: float | None, error: BaseException | None) -> float:
        """The delay before retry number `attempt` (from 1), given the previous delay and the error.

        Decorrelated jitter: `min(max_delay_s, uniform(base_delay_s, 3 * previous))`, the first from
        `uniform(base_delay_s, 3 * base_delay_s)`; never shorter than the server's `Retry-After` when honoured.
        """
        base = self.base_delay_s
        previous = base if previous_delay is None else max(previous_delay, base)
        upper = max(base, previous * 3)
        draw = self._rng.uniform(base, upper) if self._rng is not None else random.uniform(base, upper)
        delay = min(self.max_delay_s, draw)
        asked = self.server_wait(error)
        if asked is not None and asked > delay:
            delay = asked
        return delay

    def give_up_reason(self, attempt: int, delay: float, error: BaseException, elapsed_s: float) -> str | None:
        """Why attempt `attempt` (which failed with `error`) is the last one, or `None` to retry after `delay`."""
        if attempt >= self.max_attempts:
            return f"gave up after {attempt} attempt{'s' if attempt > 1 else ''} (`max_attempts`={self.max_attempts})"
        asked = self.server_wait(error)
        if asked is not None and asked > self.max_retry_after_s:
            return (
                f"not retried: the server asked to wait {asked:.1f} s, longer than `max_retry_after_s` "
                f"({self.max_retry_after_s:g} s)"
            )
        deadline = self.deadline_s
        if deadline is not None and elapsed_s + delay > deadline:
            return (
                f"not retried: waiting {delay:.1f} s more would pass the retry deadline of {deadline:g} s "
                f"({elapsed_s:.1f} s spent over {attempt} attempt{'s' if attempt > 1 else ''})"
            )
        return None


class Attempts:
    """The state of one retried operation (sans-I/O): counts attempts and decides each retry's delay."""

    __slots__ = ("policy", "attempt", "previous_delay", "started")

    def __init__(self, policy: RetryPolicy, started: float) -> None:
        self.policy = policy
        self.attempt = 0
        self.previous_delay: float | None = None
        self.started = started

    def begin(self) -> int:
        """Count a new attempt; returns its number, from 1."""
        self.attempt += 1
        return self.attempt

    def retry_delay(self, error: BaseException, now: float, *, retryable: bool | None = None) -> float | None:
        """The delay before the next attempt, or `None` when `error` ends the operation (its message then says why).

        Args:
            error: What the last attempt failed with.
            now: The clock's time now.
            retryable: Overrides the policy's verdict on `error` (tools decide by their own rules).
        """
        policy = self.policy
        if not (policy.is_retryable(error) if retryable is None else retryable):
            return None
        delay = policy.next_delay(self.attempt, self.previous_delay, error)
        reason = policy.give_up_reason(self.attempt, delay, error, now - self.started)
        if reason is not None:
            if policy.max_attempts > 1:  # a policy that never retries has nothing to explain
                annotate(error, reason)
            return None
        self.previous_delay = delay
        return delay


def annotate(error: BaseException, note: str) -> None:
    """Append `note` to an error's message (ours keep `message` and `str()` in step)."""
    if isinstance(error, MiniAgentError):
        text = f"{error.message.rstrip()} ({note}.)"
        error.message = text
        error.args = (text,)
    else:
        error.add_note(note)
