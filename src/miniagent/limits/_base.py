"""The vocabulary of rate limits and budgets: buckets and budgets to check, what a check answered, the contract.

Kept apart from the implementations so the in-process and the Redis limiter share one set of types and the same
validation, and callers depend on the [`RateLimiter`][miniagent.limits.RateLimiter] protocol only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, runtime_checkable

from ..errors import MiniAgentError, UserError

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "DAY_S",
    "Admission",
    "Bucket",
    "BucketState",
    "BudgetExceeded",
    "BudgetName",
    "DailyBudget",
    "DailyUsage",
    "LimitPolicy",
    "LimiterUnavailable",
    "RateLimiter",
    "WallTime",
    "check_now",
    "day_of",
]

DAY_S = 86_400
"""Seconds in a (UTC, POSIX) day: budgets reset when `now // DAY_S` changes."""

BudgetName: TypeAlias = Literal["tokens/day", "usd/day"]
"""Which daily budget: model tokens (input plus output) or model cost in USD."""

WallTime: TypeAlias = Callable[[], float]
"""A wall clock: POSIX seconds (UTC), like `time.time`. Tests pass a manual one (`ManualClock().now`)."""


class LimiterUnavailable(MiniAgentError):
    """The shared rate limiter (Redis) did not answer: the request is refused rather than let through unlimited."""


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_key(owner: str, key: object) -> None:
    if not isinstance(key, str) or not key.strip():
        raise UserError(f"{owner}: `key` must be a non-empty string naming who is limited, got {key!r}.")


def check_now(now: object) -> float | None:
    """`now` validated: `None` (use the limiter's clock) or finite non-negative POSIX seconds.

    Raises:
        UserError: anything else.
    """
    if now is None:
        return None
    if not is_number(now) or now < 0:  # type: ignore[operator]  # narrowed by is_number
        raise UserError(f"`now` must be POSIX seconds (a finite number >= 0) or None, got {now!r}.")
    return float(now)  # type: ignore[arg-type]  # narrowed by is_number


def day_of(now: float) -> int:
    """The UTC day number of `now` (days since 1970-01-01); budgets count per day number."""
    return int(now // DAY_S)


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket a request takes one token from: `capacity` at once, refilled at `per_second`.

    Example:
        ```python
        from miniagent.limits import Bucket

        bucket = Bucket.per_minute("key:k1", rpm=60, burst=10)
        assert bucket.per_second == 1.0 and bucket.capacity == 10
        ```
    """

    key: str
    """Who is limited, e.g. `key:<api key id>` or `user:<tenant>/<user>`."""
    capacity: int
    """The most requests allowed at once (the burst); a full bucket holds this many tokens."""
    per_second: float
    """Tokens added back per second (requests per minute / 60)."""

    def __post_init__(self) -> None:
        _check_key("Bucket", self.key)
        if not is_count(self.capacity) or self.capacity < 1:
            raise UserError(f"Bucket {self.key!r}: `capacity` must be an integer >= 1, got {self.capacity!r}.")
        if not is_number(self.per_second) or self.per_second <= 0:
            raise UserError(
                f"Bucket {self.key!r}: `per_second` must be a positive finite number, got {self.per_second!r}."
            )

    @classmethod
    def per_minute(cls, key: str, *, rpm: float, burst: int | None = None) -> Bucket:
        """A bucket allowing `rpm` requests per minute, `burst` at once (default: one minute's worth).

        Raises:
            UserError: `rpm` is not a positive number, or `burst` not an integer >= 1.
        """
        if not is_number(rpm) or rpm <= 0:
            raise UserError(f"Bucket {key!r}: `rpm` must be a positive number of requests per minute, got {rpm!r}.")
        return cls(key, math.ceil(rpm) if burst is None else burst, rpm / 60.0)


@dataclass(frozen=True, slots=True)
class DailyBudget:
    """What one subject may use per UTC day; `None` means no bound on that quantity."""

    key: str
    """Whose usage is counted, e.g. `key:<api key id>` or `user:<tenant>/<user>`."""
    tokens: int | None = None
    """Model tokens (input plus output) allowed per day."""
    usd: float | None = None
    """Model cost allowed per day, in USD."""

    def __post_init__(self) -> None:
        _check_key("DailyBudget", self.key)
        if self.tokens is not None and (not is_count(self.tokens) or self.tokens < 0):
            raise UserError(f"DailyBudget {self.key!r}: `tokens` must be an integer >= 0 or None, got {self.tokens!r}.")
        if self.usd is not None and (not is_number(self.usd) or self.usd < 0):
            raise UserError(f"DailyBudget {self.key!r}: `usd` must be a finite number >= 0 or None, got {self.usd!r}.")


@dataclass(frozen=True, slots=True)
class BucketState:
    """One bucket after a check: what the `X-RateLimit-*` headers report."""

    key: str
    """The bucket's key."""
    limit: int
    """Its capacity (`X-RateLimit-Limit`)."""
    remaining: int
    """Whole requests left now (`X-RateLimit-Remaining`)."""
    reset_s: float
    """Seconds until the bucket is full again (`X-RateLimit-Reset`)."""
    retry_after_s: float
    """Seconds until it holds one token again (0 while `remaining > 0`): the `Retry-After` of a refusal."""

    @classmethod
    def of(cls, bucket: Bucket, tokens: float) -> BucketState:
        """The state of `bucket` holding `tokens` (possibly fractional)."""
        tokens = max(0.0, min(float(bucket.capacity), tokens))
        return cls(
            bucket.key,
            bucket.capacity,
            int(math.floor(tokens + 1e-9)),
            (bucket.capacity - tokens) / bucket.per_second,
            max(0.0, (1.0 - tokens) / bucket.per_second),
        )


@dataclass(frozen=True, slots=True)
class BudgetExceeded:
    """A daily budget that is used up: requests of its subject are refused until `resets_at`."""

    key: str
    """Whose budget."""
    budget: BudgetName
    """Which one: `tokens/day` or `usd/day`."""
    limit: float
    """The budget."""
    used: float
    """What was used today (at least `limit`)."""
    resets_at: float
    """When it resets: the next UTC midnight, POSIX seconds."""
    reset_s: float
    """Seconds from the check until `resets_at`."""


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to [`RateLimiter.admit`][miniagent.limits.RateLimiter.admit]."""

    allowed: bool
    """Whether the request may go ahead (it then took one token from every bucket)."""
    buckets: tuple[BucketState, ...]
    """Every bucket after the check, in the order given (empty when a budget refused the request)."""
    budget: BudgetExceeded | None
    """The used-up budget that refused the request, if one did (buckets are then left untouched)."""
    now: float
    """The time of the check, POSIX seconds."""

    @property
    def retry_after_s(self) -> float:
        """Seconds before a retry can succeed: until a budget resets or the emptiest bucket refills a token."""
        if self.budget is not None:
            return self.budget.reset_s
        return max((b.retry_after_s for b in self.buckets), default=0.0)

    @property
    def tightest(self) -> BucketState | None:
        """The bucket with the fewest requests left (the one the `X-RateLimit-*` headers describe)."""
        return min(self.buckets, key=lambda b: (b.remaining, -b.reset_s), default=None)


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """What one subject used on one UTC day."""

    key: str
    """Whose usage."""
    tokens: int
    """Model tokens (input plus output)."""
    usd: float
    """Model cost in USD (runs of unknown price count 0)."""
    day: int
    """The UTC day number (days since 1970-01-01)."""

    @property
    def resets_at(self) -> float:
        """The end of that day (the next UTC midnight), POSIX seconds."""
        return float((self.day + 1) * DAY_S)


@runtime_checkable
class RateLimiter(Protocol):
    """Request rates (token buckets) and daily budgets of tokens and cost, per subject (an API key, a user).

    Two implementations: [`InMemoryRateLimiter`][miniagent.limits.InMemoryRateLimiter] (this process) and
    [`RedisRateLimiter`][miniagent.limits.RedisRateLimiter] (shared by replicas);
    [`limiter_from_settings`][miniagent.limits.limiter_from_settings] picks one. Every method is one atomic step.
    """

    async def admit(
        self, buckets: Sequence[Bucket], budgets: Sequence[DailyBudget] = (), *, now: float | None = None
    ) -> Admission:
        """Admit one request: refuse it if a budget is used up, else take a token from every bucket, or from none.

        Args:
            buckets: The buckets the request counts against (all must have a token).
            budgets: The daily budgets that must not be used up.
            now: The time, POSIX seconds; `None` uses the limiter's clock.
        """
        ...

    async def add_usage(
        self, keys: Sequence[str], *, tokens: int, usd: float, now: float | None = None
    ) -> tuple[DailyUsage, ...]:
        """Add what a run used to today's counters of every key; returns the new totals, in order."""
        ...

    async def usage(self, key: str, *, now: float | None = None) -> DailyUsage:
        """What `key` used today."""
        ...

    async def aclose(self) -> None:
        """Release connections (the in-process limiter has none)."""
        ...


def check_request(buckets: Sequence[Bucket], budgets: Sequence[DailyBudget]) -> None:
    """Validate the arguments of `admit` (shared by the implementations).

    Raises:
        UserError: an argument of the wrong type.
    """
    if isinstance(buckets, Bucket | str) or not all(isinstance(b, Bucket) for b in buckets):
        raise UserError(f"`buckets` must be a sequence of Bucket, got {buckets!r}.")
    if isinstance(budgets, DailyBudget | str) or not all(isinstance(b, DailyBudget) for b in budgets):
        raise UserError(f"`budgets` must be a sequence of DailyBudget, got {budgets!r}.")


def check_usage(keys: Sequence[str], tokens: object, usd: object) -> None:
    """Validate the arguments of `add_usage` (shared by the implementations).

    Raises:
        UserError: a key that is not a non-empty string, negative tokens or cost.
    """
    if isinstance(keys, str) or not all(is_text(k) for k in keys):
        raise UserError(f"`keys` must be a sequence of non-empty strings, got {keys!r}.")
    if not is_count(tokens) or tokens < 0:  # type: ignore[operator]  # narrowed by is_count
        raise UserError(f"`tokens` must be an integer >= 0, got {tokens!r}.")
    if not is_number(usd) or usd < 0:  # type: ignore[operator]  # narrowed by is_number
        raise UserError(f"`usd` must be a finite number >= 0, got {usd!r}.")


def first_exceeded(
    budgets: Sequence[DailyBudget], used: Sequence[tuple[float, float]], now: float
) -> BudgetExceeded | None:
    """The first budget whose `(tokens, usd)` used today reach its bound, or `None`."""
    resets_at = float((day_of(now) + 1) * DAY_S)
    for budget, (tokens, usd) in zip(budgets, used, strict=True):
        for name, limit, value in (("tokens/day", budget.tokens, tokens), ("usd/day", budget.usd, usd)):
            if limit is not None and value >= limit:
                return BudgetExceeded(budget.key, name, float(limit), float(value), resets_at, resets_at - now)  # type: ignore[arg-type]  # name is a BudgetName
    return None


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    """The limits every subject gets: requests per minute (with a burst) and daily token and cost budgets.

    `None` means unlimited. The server applies one policy to each API key and to each user (both must allow a
    request); per-key overrides are not configurable yet.

    Example:
        ```python
        from miniagent.limits import LimitPolicy

        policy = LimitPolicy(rpm=60, burst=5, tokens_per_day=100_000)
        assert policy.enabled
        assert [b.capacity for b in policy.buckets(["key:k1", "user:t1/u1"])] == [5, 5]
        assert policy.budgets(["key:k1"])[0].tokens == 100_000
        ```
    """

    rpm: float | None = None
    """Requests per minute; `None`: no rate limit."""
    burst: int | None = None
    """Requests at once; `None`: one minute's worth."""
    tokens_per_day: int | None = None
    """Model tokens per UTC day; `None`: no token budget."""
    usd_per_day: float | None = None
    """Model cost per UTC day, in USD; `None`: no cost budget."""

    def __post_init__(self) -> None:
        if self.rpm is not None and (not is_number(self.rpm) or self.rpm <= 0):
            raise UserError(f"LimitPolicy: `rpm` must be a positive number or None, got {self.rpm!r}.")
        if self.burst is not None and (not is_count(self.burst) or self.burst < 1):
            raise UserError(f"LimitPolicy: `burst` must be an integer >= 1 or None, got {self.burst!r}.")
        DailyBudget("policy", self.tokens_per_day, self.usd_per_day)  # the same checks as each budget

    @classmethod
    def from_settings(cls, settings: Settings) -> LimitPolicy:
        """The policy of `rate_limit_rpm`, `rate_limit_burst`, `budget_tokens_per_day` and `budget_usd_per_day`."""
        return cls(
            rpm=settings.rate_limit_rpm,
            burst=settings.rate_limit_burst,
            tokens_per_day=settings.budget_tokens_per_day,
            usd_per_day=settings.budget_usd_per_day,
        )

    @property
    def enabled(self) -> bool:
        """Whether anything is limited."""
        return self.rpm is not None or self.budgeted

    @property
    def budgeted(self) -> bool:
        """Whether a daily budget is set (usage must then be counted)."""
        return self.tokens_per_day is not None or self.usd_per_day is not None

    def buckets(self, keys: Sequence[str]) -> tuple[Bucket, ...]:
        """One bucket per subject key (none without a rate limit)."""
        if self.rpm is None:
            return ()
        return tuple(Bucket.per_minute(key, rpm=self.rpm, burst=self.burst) for key in keys)

    def budgets(self, keys: Sequence[str]) -> tuple[DailyBudget, ...]:
        """One daily budget per subject key (none without a budget)."""
        if not self.budgeted:
            return ()
        return tuple(DailyBudget(key, self.tokens_per_day, self.usd_per_day) for key in keys)
