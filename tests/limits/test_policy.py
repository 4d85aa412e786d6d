"""The policy from settings, the factory that picks a limiter, and the value types' validation."""

from __future__ import annotations

import pytest

from miniagent.errors import UserError
from miniagent.limits import (
    Bucket,
    BucketState,
    DailyBudget,
    InMemoryRateLimiter,
    LimitPolicy,
    RateLimiter,
    RedisRateLimiter,
    limiter_from_settings,
)
from miniagent.settings import Settings
from miniagent.testing import ManualClock

pytestmark = pytest.mark.anyio


def test_policy_from_settings() -> None:
    settings = Settings(rate_limit_rpm=30, budget_tokens_per_day=5_000, budget_usd_per_day=2.5)
    policy = LimitPolicy.from_settings(settings)
    assert policy == LimitPolicy(rpm=30, burst=None, tokens_per_day=5_000, usd_per_day=2.5)
    assert policy.enabled and policy.budgeted
    (bucket,) = policy.buckets(["key:k1"])
    assert bucket == Bucket("key:k1", 30, 0.5)
    assert policy.budgets(["key:k1", "user:t/u"]) == (
        DailyBudget("key:k1", 5_000, 2.5),
        DailyBudget("user:t/u", 5_000, 2.5),
    )


def test_the_default_policy_limits_nothing() -> None:
    policy = LimitPolicy.from_settings(Settings())
    assert not policy.enabled and not policy.budgeted
    assert policy.buckets(["key:k1"]) == () and policy.budgets(["key:k1"]) == ()


def test_rate_only_and_budget_only_policies() -> None:
    assert LimitPolicy(rpm=0.5).buckets(["k"]) == (Bucket("k", 1, 0.5 / 60),)  # burst rounds up to one request
    assert LimitPolicy(rpm=10, burst=50).buckets(["k"])[0].capacity == 50
    budget_only = LimitPolicy(usd_per_day=1.0)
    assert budget_only.enabled and budget_only.buckets(["k"]) == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rpm": 0}, "`rpm` must be a positive number"),
        ({"rpm": float("nan")}, "`rpm` must be a positive number"),
        ({"burst": 0}, "`burst` must be an integer >= 1"),
        ({"burst": 1.5}, "`burst` must be an integer >= 1"),
        ({"tokens_per_day": -1}, "`tokens` must be an integer >= 0"),
        ({"usd_per_day": -0.01}, "`usd` must be a finite number >= 0"),
    ],
)
def test_bad_policies_are_user_errors(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(UserError, match=message):
        LimitPolicy(**kwargs)  # type: ignore[arg-type]  # the mistakes under test


def test_settings_refuse_nonsense_limits() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="rate_limit_rpm"):
        Settings(rate_limit_rpm=0)
    with pytest.raises(ValidationError, match="budget_usd_per_day"):
        Settings(budget_usd_per_day=-1)


def test_bad_buckets_and_budgets_are_user_errors() -> None:
    with pytest.raises(UserError, match="`key` must be a non-empty string"):
        Bucket("", 1, 1.0)
    with pytest.raises(UserError, match="`capacity` must be an integer >= 1"):
        Bucket("k", 0, 1.0)
    with pytest.raises(UserError, match="`per_second` must be a positive finite number"):
        Bucket("k", 1, float("inf"))
    with pytest.raises(UserError, match="`rpm` must be a positive number"):
        Bucket.per_minute("k", rpm=-5)
    with pytest.raises(UserError, match="`tokens` must be an integer >= 0 or None"):
        DailyBudget("k", tokens=True)
    with pytest.raises(UserError, match="`usd` must be a finite number >= 0 or None"):
        DailyBudget("k", usd=float("nan"))


def test_bucket_state_reports_whole_requests() -> None:
    bucket = Bucket("k", 10, 2.0)
    assert BucketState.of(bucket, 3.75) == BucketState("k", 10, 3, 3.125, 0.0)
    assert BucketState.of(bucket, 0.5) == BucketState("k", 10, 0, 4.75, 0.25)
    assert BucketState.of(bucket, 0.9999999999999).remaining == 1  # float noise of a refill is a whole token


def test_the_factory_picks_redis_only_when_configured() -> None:
    memory = limiter_from_settings(Settings())
    assert isinstance(memory, InMemoryRateLimiter) and isinstance(memory, RateLimiter)
    shared = limiter_from_settings(Settings(redis_url="redis://:pw@localhost:6379/0"))
    assert isinstance(shared, RedisRateLimiter) and isinstance(shared, RateLimiter)
    with pytest.raises(UserError, match="MINIAGENT_REDIS_URL"):
        limiter_from_settings(Settings(redis_url="http://localhost:6379"))


async def test_the_factory_uses_a_given_client(redis_url: str) -> None:
    from redis.asyncio import Redis

    clock = ManualClock(1_000_000.0)
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        limiter = limiter_from_settings(Settings(), redis=client, clock=clock.now)
        assert isinstance(limiter, RedisRateLimiter)
        assert (await limiter.admit([Bucket("k", 1, 1.0)])).now == 1_000_000.0
        assert await client.exists("miniagent:limits:bucket:k") == 1
    finally:
        await client.aclose()


async def test_the_in_process_limiter_forgets_the_oldest_subjects() -> None:
    clock = ManualClock(1_000_000.0)
    limiter = InMemoryRateLimiter(clock=clock.now, max_keys=2)
    for key in ("a", "b", "c"):
        assert (await limiter.admit([Bucket(key, 1, 0.001)])).allowed
        await limiter.add_usage([key], tokens=1, usd=0.0)
    assert (await limiter.admit([Bucket("a", 1, 0.001)])).allowed  # forgotten: it starts full again
    assert not (await limiter.admit([Bucket("c", 1, 0.001)])).allowed
    assert (await limiter.usage("a")).tokens == 0 and (await limiter.usage("c")).tokens == 1
    assert "subjects=2" in repr(limiter)
    limiter.clear()
    assert (await limiter.admit([Bucket("c", 1, 0.001)])).allowed
    with pytest.raises(UserError, match="`max_keys` must be an integer >= 1"):
        InMemoryRateLimiter(max_keys=0)
    with pytest.raises(UserError, match="`clock` must return POSIX seconds"):
        InMemoryRateLimiter(clock="now")  # type: ignore[arg-type]  # the mistake under test
