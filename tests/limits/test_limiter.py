"""The RateLimiter contract, run against the in-process limiter and the Redis one (same tests, a manual clock)."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from miniagent.errors import UserError
from miniagent.limits import DAY_S, Admission, Bucket, DailyBudget, day_of

from .conftest import START, Limiters

pytestmark = pytest.mark.anyio

KEY = Bucket.per_minute("key:k1", rpm=60, burst=3)  # one request a second, three at once


async def test_a_full_bucket_allows_the_burst_then_refuses_with_the_wait(limiters: Limiters) -> None:
    limiter = limiters.limiter
    seen = [await limiter.admit([KEY]) for _ in range(3)]
    assert [a.allowed for a in seen] == [True, True, True]
    assert [a.buckets[0].remaining for a in seen] == [2, 1, 0]
    assert [a.buckets[0].limit for a in seen] == [3, 3, 3]
    assert [a.buckets[0].reset_s for a in seen] == pytest.approx([1.0, 2.0, 3.0])
    refused = await limiter.admit([KEY])
    assert not refused.allowed and refused.budget is None
    assert refused.retry_after_s == pytest.approx(1.0)
    assert refused.buckets[0].remaining == 0
    assert refused.now == START


async def test_the_bucket_refills_at_rpm_over_60_per_second(limiters: Limiters) -> None:
    limiter, clock = limiters.limiter, limiters.clock
    for _ in range(3):
        assert (await limiter.admit([KEY])).allowed
    clock.advance(0.5)
    half = await limiter.admit([KEY])
    assert not half.allowed and half.retry_after_s == pytest.approx(0.5)
    clock.advance(0.5)
    one = await limiter.admit([KEY])
    assert one.allowed and one.buckets[0].remaining == 0
    clock.advance(2.0)
    two = [await limiter.admit([KEY]) for _ in range(3)]
    assert [a.allowed for a in two] == [True, True, False]


async def test_refill_stops_at_the_capacity(limiters: Limiters) -> None:
    limiter, clock = limiters.limiter, limiters.clock
    assert (await limiter.admit([KEY])).allowed
    clock.advance(3_600.0)
    allowed = [(await limiter.admit([KEY])).allowed for _ in range(4)]
    assert allowed == [True, True, True, False]


async def test_a_slow_rate_paces_requests(limiters: Limiters) -> None:
    slow = Bucket.per_minute("user:t/u", rpm=2)  # burst: one minute's worth, 2; one token every 30 s
    limiter, clock = limiters.limiter, limiters.clock
    assert slow.capacity == 2
    assert [(await limiter.admit([slow])).allowed for _ in range(3)] == [True, True, False]
    clock.advance(29.0)
    refused = await limiter.admit([slow])
    assert not refused.allowed and refused.retry_after_s == pytest.approx(1.0)
    clock.advance(1.0)
    assert (await limiter.admit([slow])).allowed


async def test_a_clock_stepping_back_refills_nothing(limiters: Limiters) -> None:
    limiter, clock = limiters.limiter, limiters.clock
    for _ in range(3):
        assert (await limiter.admit([KEY])).allowed
    back = await limiter.admit([KEY], now=START - 100.0)
    assert not back.allowed
    clock.advance(1.0)
    assert (await limiter.admit([KEY])).allowed


async def test_all_buckets_or_none(limiters: Limiters) -> None:
    limiter = limiters.limiter
    key = Bucket.per_minute("key:k1", rpm=60, burst=5)
    user = Bucket.per_minute("user:t1/u1", rpm=60, burst=2)
    assert [(await limiter.admit([key, user])).allowed for _ in range(2)] == [True, True]
    refused = await limiter.admit([key, user])
    assert not refused.allowed
    assert [b.remaining for b in refused.buckets] == [3, 0]  # the key's bucket was not charged for the refusal
    assert refused.tightest is not None and refused.tightest.key == "user:t1/u1"
    assert (await limiter.admit([key])).buckets[0].remaining == 2  # the key alone still has its tokens


async def test_subjects_do_not_share_buckets(limiters: Limiters) -> None:
    limiter = limiters.limiter
    other = Bucket.per_minute("key:k2", rpm=60, burst=3)
    for _ in range(3):
        assert (await limiter.admit([KEY])).allowed
    assert not (await limiter.admit([KEY])).allowed
    assert (await limiter.admit([other])).buckets[0].remaining == 2


async def test_no_buckets_and_no_budgets_always_admits(limiters: Limiters) -> None:
    admission = await limiters.limiter.admit([])
    assert admission == Admission(True, (), None, START)
    assert admission.retry_after_s == 0.0 and admission.tightest is None


async def test_concurrent_requests_never_share_the_last_token(limiters: Limiters) -> None:
    bucket = Bucket.per_minute("key:race", rpm=60, burst=5)
    tasks = 40
    barrier = asyncio.Barrier(tasks)
    results: list[bool] = []
    replicas = [limiters.limiter, limiters.another()]

    async def request(index: int) -> None:
        await barrier.wait()  # every task is ready: they all ask at once
        results.append((await replicas[index % 2].admit([bucket])).allowed)

    try:
        async with anyio.create_task_group() as group:
            for index in range(tasks):
                group.start_soon(request, index)
    finally:
        if replicas[1] is not replicas[0]:
            await replicas[1].aclose()
    assert len(results) == tasks
    assert results.count(True) == 5


async def test_a_replica_sees_the_tokens_another_took(limiters: Limiters) -> None:
    other = limiters.another()
    try:
        for _ in range(3):
            assert (await limiters.limiter.admit([KEY])).allowed
        refused = await other.admit([KEY])
        assert not refused.allowed and refused.retry_after_s == pytest.approx(1.0)
    finally:
        if other is not limiters.limiter:
            await other.aclose()


# ---- daily budgets ---------------------------------------------------------------------------------------


async def test_usage_adds_up_per_key_and_day(limiters: Limiters) -> None:
    limiter = limiters.limiter
    first = await limiter.add_usage(["key:k1", "user:t1/u1"], tokens=120, usd=0.25)
    assert [(u.key, u.tokens, u.usd) for u in first] == [("key:k1", 120, 0.25), ("user:t1/u1", 120, 0.25)]
    second = await limiter.add_usage(["key:k1"], tokens=30, usd=0.125)
    assert (second[0].tokens, second[0].usd, second[0].day) == (150, 0.375, day_of(START))
    today = await limiter.usage("user:t1/u1")
    assert (today.tokens, today.usd) == (120, 0.25)
    assert today.resets_at == (day_of(START) + 1) * DAY_S
    assert (await limiter.usage("key:nobody")).tokens == 0
    assert await limiter.add_usage([], tokens=1, usd=0.0) == ()


async def test_small_costs_add_up_exactly_enough(limiters: Limiters) -> None:
    limiter = limiters.limiter
    for _ in range(10):
        await limiter.add_usage(["key:k1"], tokens=1, usd=0.00001)
    assert (await limiter.usage("key:k1")).usd == pytest.approx(0.0001)


async def test_a_used_up_token_budget_refuses_before_any_bucket_is_charged(limiters: Limiters) -> None:
    limiter = limiters.limiter
    budgets = [DailyBudget("key:k1", tokens=1_000), DailyBudget("user:t1/u1", tokens=5_000)]
    assert (await limiter.admit([KEY], budgets)).allowed
    await limiter.add_usage(["key:k1", "user:t1/u1"], tokens=999, usd=0.0)
    assert (await limiter.admit([KEY], budgets)).allowed  # 999 < 1000: a budget not yet used up lets one more in
    await limiter.add_usage(["key:k1", "user:t1/u1"], tokens=400, usd=0.0)  # the run in flight goes over
    refused = await limiter.admit([KEY], budgets)
    assert not refused.allowed and refused.buckets == ()
    assert refused.budget is not None
    assert (refused.budget.key, refused.budget.budget, refused.budget.limit, refused.budget.used) == (
        "key:k1",
        "tokens/day",
        1_000.0,
        1_399.0,
    )
    midnight = (day_of(START) + 1) * DAY_S
    assert refused.budget.resets_at == midnight
    assert refused.retry_after_s == pytest.approx(midnight - START)
    limiters.clock.advance(2.0)
    assert (await limiter.admit([KEY])).buckets[0].remaining == 2  # the bucket kept its token: 1 used, refilled


async def test_a_used_up_cost_budget_names_usd_per_day(limiters: Limiters) -> None:
    limiter = limiters.limiter
    budgets = [DailyBudget("key:k1", tokens=10**9, usd=1.0)]
    await limiter.add_usage(["key:k1"], tokens=10, usd=0.5)
    assert (await limiter.admit([], budgets)).allowed
    await limiter.add_usage(["key:k1"], tokens=10, usd=0.5)
    refused = await limiter.admit([], budgets)
    assert refused.budget is not None
    assert (refused.budget.budget, refused.budget.used, refused.budget.limit) == ("usd/day", 1.0, 1.0)


async def test_a_zero_budget_refuses_everything(limiters: Limiters) -> None:
    refused = await limiters.limiter.admit([KEY], [DailyBudget("user:t1/u1", usd=0.0)])
    assert refused.budget is not None and refused.budget.key == "user:t1/u1"


async def test_budgets_reset_at_utc_midnight(limiters: Limiters) -> None:
    limiter, clock = limiters.limiter, limiters.clock
    midnight = (day_of(START) + 1) * DAY_S
    clock.advance(midnight - START - 10.0)  # 23:59:50
    budgets = [DailyBudget("user:t1/u1", tokens=100)]
    await limiter.add_usage(["user:t1/u1"], tokens=100, usd=0.0)
    refused = await limiter.admit([], budgets)
    assert refused.budget is not None and refused.retry_after_s == pytest.approx(10.0)
    clock.advance(9.999)
    assert not (await limiter.admit([], budgets)).allowed
    clock.advance(0.001)  # 00:00:00 the next day
    assert (await limiter.admit([], budgets)).allowed
    assert (await limiter.usage("user:t1/u1")).tokens == 0
    assert (await limiter.usage("user:t1/u1", now=midnight - 1.0)).tokens == 100  # yesterday's count is kept
    after = await limiter.add_usage(["user:t1/u1"], tokens=7, usd=0.0)
    assert (after[0].tokens, after[0].day) == (7, day_of(midnight))


# ---- bad input -------------------------------------------------------------------------------------------


async def test_bad_arguments_are_user_errors(limiters: Limiters) -> None:
    limiter = limiters.limiter
    with pytest.raises(UserError, match="`buckets` must be a sequence of Bucket"):
        await limiter.admit(KEY)  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(UserError, match="`budgets` must be a sequence of DailyBudget"):
        await limiter.admit([], [{"tokens": 1}])  # type: ignore[list-item]  # the mistake under test
    with pytest.raises(UserError, match="`now` must be POSIX seconds"):
        await limiter.admit([KEY], now=-1.0)
    with pytest.raises(UserError, match="`now` must be POSIX seconds"):
        await limiter.usage("key:k1", now=float("nan"))
    with pytest.raises(UserError, match="`tokens` must be an integer >= 0"):
        await limiter.add_usage(["key:k1"], tokens=-1, usd=0.0)
    with pytest.raises(UserError, match="`usd` must be a finite number >= 0"):
        await limiter.add_usage(["key:k1"], tokens=1, usd=float("inf"))
    with pytest.raises(UserError, match="`keys` must be a sequence of non-empty strings"):
        await limiter.add_usage("key:k1", tokens=1, usd=0.0)
    with pytest.raises(UserError, match="`keys` must be a sequence of non-empty strings"):
        await limiter.usage(" ")
