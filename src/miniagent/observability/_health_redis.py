"""The Redis check: when `MINIAGENT_REDIS_URL` is set, Redis answers, is recent enough, and how fast.

Redis holds the state replicas share (rate limits, budgets, circuit breakers), so the server is not ready without
it. Nothing is written; the client is imported only when the check runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._health_base import Check, CheckResult

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["redis_check"]

_MIN_VERSION = (5, 0)  # Lua scripts that read TIME before writing (script effects replication)
_FIX = "start Redis, or fix MINIAGENT_REDIS_URL (unset it to keep limits and breaker state in this process)"


def _version(text: str) -> tuple[int, ...]:
    import re

    return tuple(int(match.group()) if match else 0 for match in (re.match(r"\d+", p) for p in text.split(".")[:2]))


async def _check_redis(settings: Settings, clock: Callable[[], float] = time.perf_counter) -> CheckResult:
    from ..limits._redis_client import check_redis_url, redact_url

    url = settings.redis_url
    if not url:
        return CheckResult("skip", "MINIAGENT_REDIS_URL is not set: limits and breaker state stay in this process")
    shown = redact_url(url)
    try:
        check_redis_url(url, "MINIAGENT_REDIS_URL")
    except Exception:
        return CheckResult("fail", f"{shown} is not a Redis URL", fix="use redis://host:6379/0 (rediss:// for TLS)")
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        start = clock()
        await client.ping()
        latency = clock() - start
        info = await client.info("server")
    except (RedisError, OSError) as exc:
        return CheckResult("fail", f"Redis at {shown} does not answer ({type(exc).__name__}: {exc})", fix=_FIX)
    finally:
        await client.aclose()
    version = str(info.get("redis_version", "?"))
    if _version(version) < _MIN_VERSION:
        return CheckResult(
            "fail",
            f"Redis {version} at {shown} is older than {'.'.join(map(str, _MIN_VERSION))}",
            fix="upgrade Redis (the rate limiter's scripts need 5.0 or newer)",
        )
    return CheckResult("ok", f"Redis {version} at {shown} answers PING in {latency * 1000:.1f} ms")


def redis_check(*, name: str = "redis", critical: bool = True, timeout_s: float | None = None) -> Check:
    """Redis (`MINIAGENT_REDIS_URL`) answers `PING` and is 5.0 or newer; skipped when no Redis is configured.

    The detail gives the version and the round-trip time; a failure names the URL with its password hidden.

    Args:
        name: The check's name.
        critical: Whether a failure fails the report (replicas without their shared state should not serve).
        timeout_s: Its own timeout; `None` uses the runner's.
    """
    return Check(
        name,
        _check_redis,
        kind="readiness",
        critical=critical,
        timeout_s=timeout_s,
        description="Redis (shared rate limits, budgets and breaker state) answers",
    )
