"""Rate limits and budgets: requests per minute (token buckets) and daily token and cost budgets, per subject.

Two implementations of one [`RateLimiter`][miniagent.limits.RateLimiter] contract: in this process
([`InMemoryRateLimiter`][miniagent.limits.InMemoryRateLimiter], the default) and in Redis
([`RedisRateLimiter`][miniagent.limits.RedisRateLimiter], atomic Lua scripts, shared by replicas), chosen by
[`limiter_from_settings`][miniagent.limits.limiter_from_settings] (`MINIAGENT_REDIS_URL`). The server applies them
to every API request (see `docs/server.md`, "Limits and budgets").

```python
import anyio

from miniagent.limits import InMemoryRateLimiter, LimitPolicy

policy = LimitPolicy(rpm=120, burst=2, tokens_per_day=1_000)
subjects = ["key:k1", "user:t1/u1"]


async def main() -> None:
    limiter = InMemoryRateLimiter()
    assert (await limiter.admit(policy.buckets(subjects), policy.budgets(subjects))).allowed
    await limiter.add_usage(subjects, tokens=1_000, usd=0.0)
    refused = await limiter.admit(policy.buckets(subjects), policy.budgets(subjects))
    assert refused.budget is not None and refused.budget.budget == "tokens/day"


anyio.run(main)
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import (
    DAY_S,
    Admission,
    Bucket,
    BucketState,
    BudgetExceeded,
    BudgetName,
    DailyBudget,
    DailyUsage,
    LimiterUnavailable,
    LimitPolicy,
    RateLimiter,
    WallTime,
    day_of,
)
from ._factory import limiter_from_settings
from ._memory import InMemoryRateLimiter

if TYPE_CHECKING:
    from ._redis import RedisRateLimiter

__all__ = [
    "DAY_S",
    "Admission",
    "Bucket",
    "BucketState",
    "BudgetExceeded",
    "BudgetName",
    "DailyBudget",
    "DailyUsage",
    "InMemoryRateLimiter",
    "LimitPolicy",
    "LimiterUnavailable",
    "RateLimiter",
    "RedisRateLimiter",
    "WallTime",
    "day_of",
    "limiter_from_settings",
]


def __getattr__(name: str) -> Any:
    if name == "RedisRateLimiter":  # its module is light, but keep the Redis client's import out of `import` time
        from ._redis import RedisRateLimiter

        return RedisRateLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
