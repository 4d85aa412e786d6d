"""Which limiter a configuration gets: the one place that chooses between in-process and Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._base import RateLimiter, WallTime
from ._memory import InMemoryRateLimiter

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..settings import Settings

__all__ = ["limiter_from_settings"]


def limiter_from_settings(
    settings: Settings, *, redis: Redis | None = None, clock: WallTime | None = None
) -> RateLimiter:
    """The limiter `settings` ask for: Redis when `redis_url` is set (or a client is given), else in-process.

    Args:
        settings: The configuration (`redis_url`).
        redis: A `redis.asyncio.Redis` client to share (e.g. the server's); it wins over `redis_url`.
        clock: A wall clock (POSIX seconds) for tests; `None` uses `time.time` in process and Redis's `TIME`.

    Raises:
        UserError: `redis_url` is not a Redis URL.
    """
    if redis is not None:
        from ._redis import RedisRateLimiter

        return RedisRateLimiter(client=redis, clock=clock)
    if settings.redis_url:
        from ._redis import RedisRateLimiter

        return RedisRateLimiter(settings.redis_url, clock=clock)
    return InMemoryRateLimiter(clock=clock)
