"""What only the Redis limiter does: Redis's own clock, keys that expire, sharing, an unreachable Redis."""

from __future__ import annotations

import math
import socket

import pytest
from redis.asyncio import Redis

from miniagent.errors import UserError
from miniagent.limits import Bucket, DailyBudget, LimiterUnavailable, RedisRateLimiter, day_of
from tests.redis_service import RedisServer

from .conftest import START

pytestmark = pytest.mark.anyio


def _redis_time(server: RedisServer) -> float:
    reply = server.command("TIME")
    assert isinstance(reply, list | tuple)
    return int(reply[0]) + int(reply[1]) / 1_000_000


async def test_without_a_clock_the_time_is_redis_time(redis_server: RedisServer, redis_url: str) -> None:
    limiter = RedisRateLimiter(redis_url)
    try:
        before = _redis_time(redis_server)
        admission = await limiter.admit([Bucket.per_minute("key:k1", rpm=60)])
        after = _redis_time(redis_server)
        usage = await limiter.usage("key:k1")
    finally:
        await limiter.aclose()
    assert before <= admission.now <= after
    assert usage.day == day_of(admission.now)


async def test_buckets_and_counters_expire_by_themselves(redis_server: RedisServer, redis_url: str) -> None:
    limiter = RedisRateLimiter(redis_url, prefix="test:")
    try:
        await limiter.admit([Bucket.per_minute("key:k1", rpm=60, burst=10)], now=START)
        await limiter.add_usage(["key:k1"], tokens=5, usd=0.5, now=START)
    finally:
        await limiter.aclose()
    bucket_ttl = redis_server.command("PTTL", "test:bucket:key:k1")
    assert isinstance(bucket_ttl, int) and 0 < bucket_ttl <= 2_000  # one token to refill (1 s) plus a second
    day = day_of(START)
    day_ttl = redis_server.command("TTL", f"test:day:key:k1:{day}")
    assert isinstance(day_ttl, int)
    assert 0 < day_ttl <= math.ceil((day + 1) * 86_400 - START) + 3_600
    assert redis_server.command("HGET", f"test:day:key:k1:{day}", "tokens") == b"5"


async def test_a_client_given_by_the_caller_is_used_and_left_open(redis_url: str) -> None:
    client = Redis.from_url(redis_url)  # replies as bytes: the limiter copes
    try:
        limiter = RedisRateLimiter(client=client)
        first = await limiter.admit([Bucket.per_minute("key:k1", rpm=60, burst=2)], [DailyBudget("key:k1", tokens=5)])
        await limiter.add_usage(["key:k1"], tokens=5, usd=0.0)
        refused = await limiter.admit([], [DailyBudget("key:k1", tokens=5)])
        await limiter.aclose()
        assert await client.ping()
    finally:
        await client.aclose()
    assert first.allowed and first.buckets[0].remaining == 1
    assert refused.budget is not None and refused.budget.used == 5


async def test_an_unreachable_redis_is_limiter_unavailable_without_the_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        limiter = RedisRateLimiter(f"redis://:hunter2secret@127.0.0.1:{port}/0")
        try:
            with pytest.raises(LimiterUnavailable) as caught:
                await limiter.admit([Bucket.per_minute("key:k1", rpm=60)])
            with pytest.raises(LimiterUnavailable, match="could not ping"):
                await limiter.ping()
        finally:
            await limiter.aclose()
    message = str(caught.value)
    assert "hunter2secret" not in message
    assert f"redis://:***@127.0.0.1:{port}/0" in message and "MINIAGENT_REDIS_URL" in message


async def test_ping_measures_a_round_trip(redis_url: str) -> None:
    limiter = RedisRateLimiter(redis_url)
    try:
        assert await limiter.ping() >= 0.0
    finally:
        await limiter.aclose()


def test_bad_construction_is_a_user_error() -> None:
    with pytest.raises(UserError, match="either a Redis `url` or a `client`, not neither"):
        RedisRateLimiter()
    with pytest.raises(UserError, match=r"must look like `redis://host:6379/0`.*postgres://u:\*\*\*@db"):
        RedisRateLimiter("postgres://u:pw@db/x")
    with pytest.raises(UserError, match="`prefix` must be a non-empty string"):
        RedisRateLimiter("redis://localhost", prefix="")
    with pytest.raises(UserError, match="`clock` must return POSIX seconds"):
        RedisRateLimiter("redis://localhost", clock=3.0)  # type: ignore[arg-type]  # the mistake under test
    assert "***" in repr(RedisRateLimiter("redis://:pw@localhost:6379/0"))
