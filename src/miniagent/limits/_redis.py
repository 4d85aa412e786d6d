"""The Redis rate limiter: token buckets and daily counters in Redis, each step one atomic Lua script.

Replicas sharing one Redis share every limit: a script runs alone on the server, so two replicas never both take
the last token, and the time is Redis's own (`TIME`) unless the caller passes one, so replicas with skewed clocks
agree. The keys (`<prefix>bucket:<subject>`, `<prefix>day:<subject>:<day>`) expire by themselves: a bucket once it
would be full again, a day's counters an hour after that UTC day ends. Scripts name the day's keys themselves
(from the time they read), so the limiter needs a single Redis, not a Redis Cluster.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

from ..errors import UserError
from ._base import (
    Admission,
    Bucket,
    BucketState,
    BudgetExceeded,
    DailyBudget,
    DailyUsage,
    LimiterUnavailable,
    WallTime,
    check_now,
    check_request,
    check_usage,
    day_of,
    is_text,
)
from ._redis_client import RedisClients, as_str, redact_url

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisRateLimiter"]

_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local day = math.floor(now / 86400)
"""

# KEYS: n bucket keys, then m day-counter prefixes (the script appends ':<day>').
# ARGV: now ('' = Redis TIME), n, m, (capacity, per_second) per bucket, (tokens, usd) limit per budget ('' = none).
# Reply: {'budget', now, j, 'tokens'|'usd', used} or {'ok'|'rate', now, level of each bucket after the check}.
_ADMIT = (
    _NOW
    + """
local n = tonumber(ARGV[2])
local m = tonumber(ARGV[3])
local base = 3 + 2 * n
for j = 1, m do
  local used = redis.call('HMGET', KEYS[n + j] .. ':' .. day, 'tokens', 'usd')
  local tokens = tonumber(used[1]) or 0
  local usd = tonumber(used[2]) or 0
  local token_limit = tonumber(ARGV[base + 2 * j - 1])
  local usd_limit = tonumber(ARGV[base + 2 * j])
  if token_limit and tokens >= token_limit then
    return {'budget', string.format('%.6f', now), j, 'tokens', string.format('%.17g', tokens)}
  end
  if usd_limit and usd >= usd_limit then
    return {'budget', string.format('%.6f', now), j, 'usd', string.format('%.17g', usd)}
  end
end
local levels, stamps, allowed = {}, {}, true
for i = 1, n do
  local capacity = tonumber(ARGV[2 + 2 * i])
  local rate = tonumber(ARGV[3 + 2 * i])
  local state = redis.call('HMGET', KEYS[i], 'level', 'at')
  local level, at = tonumber(state[1]), tonumber(state[2])
  if level == nil or at == nil then
    level, at = capacity, now
  end
  levels[i] = math.min(capacity, level + math.max(0, now - at) * rate)
  stamps[i] = math.max(now, at)
  if levels[i] < 1 then allowed = false end
end
local reply = {allowed and 'ok' or 'rate', string.format('%.6f', now)}
for i = 1, n do
  local level = levels[i]
  if allowed then
    local capacity = tonumber(ARGV[2 + 2 * i])
    local rate = tonumber(ARGV[3 + 2 * i])
    level = level - 1
    redis.call('HSET', KEYS[i], 'level', string.format('%.17g', level), 'at', string.format('%.6f', stamps[i]))
    redis.call('PEXPIRE', KEYS[i], math.ceil((capacity - level) / rate * 1000) + 1000)
  end
  reply[#reply + 1] = string.format('%.17g', level)
end
return reply
"""
)

# KEYS: day-counter prefixes. ARGV: now ('' = Redis TIME), tokens, usd. Reply: {day, tokens, usd, tokens, usd...}.
_ADD = (
    _NOW
    + """
local ttl = math.ceil((day + 1) * 86400 - now) + 3600
local reply = {string.format('%d', day)}
for i = 1, #KEYS do
  local key = KEYS[i] .. ':' .. string.format('%d', day)
  local tokens = redis.call('HINCRBY', key, 'tokens', ARGV[2])
  local usd = redis.call('HINCRBYFLOAT', key, 'usd', ARGV[3])
  redis.call('EXPIRE', key, ttl)
  reply[#reply + 1] = string.format('%d', tokens)
  reply[#reply + 1] = usd
end
return reply
"""
)

# KEYS: one day-counter prefix. ARGV: now ('' = Redis TIME). Reply: {day, tokens, usd}.
_USAGE = (
    _NOW
    + """
local used = redis.call('HMGET', KEYS[1] .. ':' .. string.format('%d', day), 'tokens', 'usd')
return {string.format('%d', day), used[1] or '0', used[2] or '0'}
"""
)

_SHA: Final = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_ADMIT, _ADD, _USAGE)}


class RedisRateLimiter:
    """Rate limits and budgets in Redis, shared by every replica using the same Redis and `prefix`.

    Example:
        ```python
        from miniagent.limits import Bucket, RedisRateLimiter

        limiter = RedisRateLimiter("redis://:secret@localhost:6379/0")  # connects on first use
        assert "secret" not in repr(limiter)
        # admission = await limiter.admit([Bucket.per_minute("key:k1", rpm=60, burst=10)])
        ```

    Args:
        url: The Redis URL (`redis://host:6379/0`); a connection pool is opened per event loop.
        client: A `redis.asyncio.Redis` to use instead of `url` (the caller closes it).
        prefix: Put before every key, to share one Redis between deployments.
        clock: A wall clock (POSIX seconds) to use instead of Redis's `TIME` (tests pass a manual one).

    Raises:
        UserError: neither or both of `url` and `client`, a URL that is not a Redis URL, or an empty `prefix`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        prefix: str = "miniagent:limits:",
        clock: WallTime | None = None,
    ) -> None:
        if not is_text(prefix):
            raise UserError(f"RedisRateLimiter: `prefix` must be a non-empty string, got {prefix!r}.")
        if clock is not None and not callable(clock):
            raise UserError(f"RedisRateLimiter: `clock` must return POSIX seconds, got {clock!r}.")
        self._clients: Final = RedisClients(url, client=client, owner="RedisRateLimiter")
        self.prefix: Final = prefix
        """Put before every key."""
        self.clock: Final = clock
        """The wall clock; `None`: Redis's `TIME`."""

    def __repr__(self) -> str:
        return f"RedisRateLimiter({self._clients!r}, prefix={self.prefix!r})"

    def _now_arg(self, now: float | None) -> str:
        checked = check_now(now)
        if checked is None and self.clock is not None:
            checked = check_now(self.clock())
        return "" if checked is None else f"{checked:.6f}"

    @contextmanager
    def _failures(self, operation: str) -> Iterator[None]:
        from redis.exceptions import RedisError

        try:
            yield
        except RedisError as exc:
            where = redact_url(self._clients.url) if self._clients.url else "the given client"
            raise LimiterUnavailable(
                f"The rate limiter could not {operation} in Redis ({where}): {type(exc).__name__}: {exc}. "
                "Check that Redis is running and MINIAGENT_REDIS_URL is right (`miniagent doctor` checks it)."
            ) from exc

    async def _call(self, script: str, keys: list[str], args: list[str], operation: str) -> list[str]:
        from redis.exceptions import NoScriptError

        client = self._clients.get()
        with self._failures(operation):
            try:  # the script's hash first: Redis keeps scripts it has seen, so the text is sent once per server
                reply = await client.evalsha(_SHA[script], len(keys), *keys, *args)
            except NoScriptError:
                reply = await client.eval(script, len(keys), *keys, *args)
        return [as_str(item) for item in reply]

    async def admit(
        self, buckets: Sequence[Bucket], budgets: Sequence[DailyBudget] = (), *, now: float | None = None
    ) -> Admission:
        """Refuse if a budget is used up; else take a token from every bucket if each has one (or from none).

        Raises:
            UserError: arguments of the wrong type, or a `now` that is not POSIX seconds.
            LimiterUnavailable: Redis did not answer.
        """
        check_request(buckets, budgets)
        keys = [f"{self.prefix}bucket:{b.key}" for b in buckets] + [f"{self.prefix}day:{b.key}" for b in budgets]
        args = [self._now_arg(now), str(len(buckets)), str(len(budgets))]
        for bucket in buckets:
            args += [str(bucket.capacity), repr(float(bucket.per_second))]
        for budget in budgets:
            args += [
                "" if budget.tokens is None else str(budget.tokens),
                "" if budget.usd is None else repr(budget.usd),
            ]
        reply = await self._call(_ADMIT, keys, args, "check a rate limit")
        at = float(reply[1])
        if reply[0] == "budget":
            budget = budgets[int(reply[2]) - 1]
            name, limit = ("tokens/day", budget.tokens) if reply[3] == "tokens" else ("usd/day", budget.usd)
            resets_at = float((day_of(at) + 1) * 86_400)
            exceeded = BudgetExceeded(budget.key, name, float(limit or 0), float(reply[4]), resets_at, resets_at - at)  # type: ignore[arg-type]  # name is a BudgetName
            return Admission(False, (), exceeded, at)
        states = tuple(BucketState.of(bucket, float(level)) for bucket, level in zip(buckets, reply[2:], strict=True))
        return Admission(reply[0] == "ok", states, None, at)

    async def add_usage(
        self, keys: Sequence[str], *, tokens: int, usd: float, now: float | None = None
    ) -> tuple[DailyUsage, ...]:
        """Add a run's tokens and cost to today's counters of every key, in one atomic step.

        Raises:
            UserError: a bad key, negative tokens or cost, or a `now` that is not POSIX seconds.
            LimiterUnavailable: Redis did not answer.
        """
        check_usage(keys, tokens, usd)
        if not keys:
            return ()
        args = [self._now_arg(now), str(tokens), repr(float(usd))]
        reply = await self._call(_ADD, [f"{self.prefix}day:{k}" for k in keys], args, "add usage")
        day = int(reply[0])
        return tuple(DailyUsage(key, int(reply[1 + 2 * i]), float(reply[2 + 2 * i]), day) for i, key in enumerate(keys))

    async def usage(self, key: str, *, now: float | None = None) -> DailyUsage:
        """What `key` used today.

        Raises:
            UserError: a bad key, or a `now` that is not POSIX seconds.
            LimiterUnavailable: Redis did not answer.
        """
        check_usage([key], 0, 0.0)
        reply = await self._call(_USAGE, [f"{self.prefix}day:{key}"], [self._now_arg(now)], "read usage")
        return DailyUsage(key, int(reply[1]), float(reply[2]), int(reply[0]))

    async def ping(self) -> float:
        """Round-trip time of a `PING`, in seconds.

        Raises:
            LimiterUnavailable: Redis did not answer.
        """
        client = self._clients.get()
        start = time.perf_counter()
        with self._failures("ping"):
            await client.ping()
        return time.perf_counter() - start

    async def aclose(self) -> None:
        """Close this event loop's connection pool (a client given by the caller is left open)."""
        await self._clients.aclose()
