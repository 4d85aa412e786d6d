"""Every limiter test runs against the in-process limiter and against the Redis one on a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from miniagent.limits import DAY_S, InMemoryRateLimiter, RateLimiter, RedisRateLimiter
from miniagent.testing import ManualClock

START = 20_000 * DAY_S + 3_600.0  # 2024-10-04 01:00 UTC: a realistic time, an hour into a UTC day


@dataclass
class Limiters:
    kind: str
    clock: ManualClock
    limiter: RateLimiter
    url: str | None

    def another(self) -> RateLimiter:
        """A second limiter on the same state: another replica for Redis, the same object in process."""
        if self.url is None:
            return self.limiter
        return RedisRateLimiter(self.url, clock=self.clock.now)


@pytest.fixture(params=["memory", "redis"])
async def limiters(request: pytest.FixtureRequest) -> AsyncIterator[Limiters]:
    clock = ManualClock(START)
    if request.param == "memory":
        yield Limiters("memory", clock, InMemoryRateLimiter(clock=clock.now), None)
        return
    url: str = request.getfixturevalue("redis_url")
    limiter = RedisRateLimiter(url, clock=clock.now)
    try:
        yield Limiters("redis", clock, limiter, url)
    finally:
        await limiter.aclose()
