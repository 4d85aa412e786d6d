"""Circuit-breaker state in Redis, so every replica sees an upstream's breaker open, probe and close together.

Each [`BreakerStore`][miniagent.resilience.BreakerStore] step is one Lua script (atomic on the server): two
replicas recording the failure that crosses the threshold both see the window, and exactly one of them wins the
`closed -> open` transition and reports it. Times are wall-clock POSIX seconds
([`WALL_CLOCK`][miniagent.resilience.WALL_CLOCK]), because a monotonic clock means nothing to another machine:
keep replicas' clocks in sync (NTP). When Redis does not answer, a breaker reads as closed (calls go through, a
warning is logged): a protection must not become an outage.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Final

from .._utils import SystemClock
from ..errors import UserError
from ..events import CircuitState
from ..limits._base import is_text
from ..limits._redis_client import RedisClients, as_str, redact_url
from ._breaker import BreakerRecord, BreakerRegistry

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["WALL_CLOCK", "RedisBreakerStore", "WallClock", "redis_breakers"]

_log = logging.getLogger("miniagent.resilience")
_TTL_S = 7 * 86_400  # an upstream not called for a week is forgotten (it starts closed again)
_STATES: Final[frozenset[str]] = frozenset({"closed", "open", "half-open"})

# Every script: KEYS[1] the upstream's hash (state, opened_at, failures, probes), KEYS[2] its window (a list of
# '1' failed / '0' succeeded, oldest first). Replies: {state, opened_at, failures, calls, probes} unless noted.
_READ = """
local r = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'failures', 'probes')
return {r[1] or 'closed', r[2] or '0', r[3] or '0', tostring(redis.call('LLEN', KEYS[2])), r[4] or '0'}
"""

_TOUCH = """
redis.call('EXPIRE', KEYS[1], ARGV[#ARGV])
redis.call('EXPIRE', KEYS[2], ARGV[#ARGV])
"""

# ARGV: failed ('1'/'0'), window size, ttl.
_RECORD = (
    """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then
  local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0') + tonumber(ARGV[1])
  redis.call('RPUSH', KEYS[2], ARGV[1])
  while redis.call('LLEN', KEYS[2]) > tonumber(ARGV[2]) do
    failures = failures - tonumber(redis.call('LPOP', KEYS[2]))
  end
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', failures)
"""
    + _TOUCH
    + """
end
"""
    + _READ
)

# ARGV: from state, to state, at (POSIX seconds), ttl. Reply: 1 if this call made the change, else 0.
_TRANSITION = (
    """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'failures', 0, 'probes', 0)
if ARGV[2] == 'open' then redis.call('HSET', KEYS[1], 'opened_at', ARGV[3]) end
"""
    + _TOUCH
    + """
return 1
"""
)

# ARGV: limit, ttl. Reply: 1 if a probe slot was taken (or the breaker is closed), else 0.
_ACQUIRE = (
    """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then return 1 end
if state ~= 'half-open' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'probes') or '0') >= tonumber(ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'probes', 1)
"""
    + _TOUCH
    + """
return 1
"""
)

# ARGV: ttl.
_RELEASE = """
local probes = tonumber(redis.call('HGET', KEYS[1], 'probes') or '0')
if probes > 0 then redis.call('HSET', KEYS[1], 'probes', probes - 1) end
return 0
"""

_SHA: Final = {s: hashlib.sha1(s.encode()).hexdigest() for s in (_READ, _RECORD, _TRANSITION, _ACQUIRE, _RELEASE)}


class WallClock(SystemClock):
    """The system clock with wall-clock time: `now()` is POSIX seconds (`time.time()`), comparable across machines.

    Breakers sharing state through Redis use it, since the default clock's monotonic seconds are private to each
    process. Sleeps and deadlines are the event loop's, as for the system clock.
    """

    __slots__ = ()

    def now(self) -> float:
        """POSIX seconds."""
        return time.time()


WALL_CLOCK: Final = WallClock()
"""The wall clock of breakers that share their state."""


class RedisBreakerStore:
    """Breaker state in Redis (`<prefix><upstream>`), shared by every process using the same Redis and prefix.

    Use it with a wall clock (see [`redis_breakers`][miniagent.resilience.redis_breakers], which sets both up);
    `MINIAGENT_REDIS_URL` makes [`default_breakers()`][miniagent.resilience.default_breakers] use it. Records read
    back carry the state and counts, not the window's outcomes (kept in Redis).

    Args:
        url: The Redis URL; a connection pool is opened per event loop.
        client: A `redis.asyncio.Redis` to use instead (the caller closes it).
        prefix: Put before every key.

    Raises:
        UserError: neither or both of `url` and `client`, a URL that is not a Redis URL, or an empty `prefix`.
    """

    def __init__(
        self, url: str | None = None, *, client: Redis | None = None, prefix: str = "miniagent:breaker:"
    ) -> None:
        if not is_text(prefix):
            raise UserError(f"RedisBreakerStore: `prefix` must be a non-empty string, got {prefix!r}.")
        self._clients: Final = RedisClients(url, client=client, owner="RedisBreakerStore")
        self.prefix: Final = prefix
        """Put before every key."""

    def __repr__(self) -> str:
        return f"RedisBreakerStore({self._clients!r}, prefix={self.prefix!r})"

    async def _run(self, script: str, upstream: str, *args: str | int | float) -> object | None:
        """Run `script` on the upstream's keys; `None` when Redis fails (logged; the breaker lets calls through)."""
        from redis.exceptions import NoScriptError, RedisError

        if not is_text(upstream):
            raise UserError(f"RedisBreakerStore: `upstream` must be a non-empty string, got {upstream!r}.")
        keys = (f"{self.prefix}{upstream}", f"{self.prefix}{upstream}:window")
        client = self._clients.get()
        try:
            try:
                reply: object = await client.evalsha(_SHA[script], 2, *keys, *args)
            except NoScriptError:
                reply = await client.eval(script, 2, *keys, *args)
        except RedisError as exc:
            where = redact_url(self._clients.url) if self._clients.url else "the given client"
            _log.warning(
                "circuit breaker state of %r unavailable in Redis (%s): %s: %s; calls go through unguarded until "
                "Redis answers (check MINIAGENT_REDIS_URL, `miniagent doctor`)",
                upstream,
                where,
                type(exc).__name__,
                exc,
            )
            return None
        return reply

    @staticmethod
    def _record(reply: object | None) -> BreakerRecord:
        if reply is None:
            return BreakerRecord()
        state, opened_at, failures, calls, probes = (as_str(item) for item in reply)  # type: ignore[attr-defined]  # a list reply
        if state not in _STATES:
            _log.warning(
                "unknown circuit breaker state %r in Redis: read as closed (delete the key to reset it)", state
            )
            return BreakerRecord()
        return BreakerRecord(
            state=state,  # type: ignore[arg-type]  # checked against _STATES
            opened_at=float(opened_at),
            failures=int(float(failures)),
            calls=int(calls),
            probes=int(float(probes)),
            window=deque(),
        )

    async def get(self, upstream: str) -> BreakerRecord:
        """The upstream's record (a fresh closed one if unknown)."""
        return self._record(await self._run(_READ, upstream))

    async def record(self, upstream: str, *, failed: bool, window: int) -> BreakerRecord:
        """Add an outcome to the window of the last `window` calls (only while closed); returns the record."""
        return self._record(await self._run(_RECORD, upstream, "1" if failed else "0", int(window), _TTL_S))

    async def transition(self, upstream: str, *, from_state: CircuitState, to_state: CircuitState, at: float) -> bool:
        """Compare-and-set the state; true for the one caller that made the change."""
        return bool(await self._run(_TRANSITION, upstream, from_state, to_state, repr(float(at)), _TTL_S))

    async def acquire_probe(self, upstream: str, limit: int) -> bool:
        """Take a probe slot while half-open (at most `limit` in flight); true at once when closed."""
        reply = await self._run(_ACQUIRE, upstream, int(limit), _TTL_S)
        return reply is None or bool(reply)

    async def release_probe(self, upstream: str) -> None:
        """Give a probe slot back."""
        await self._run(_RELEASE, upstream, _TTL_S)

    async def aclose(self) -> None:
        """Close this event loop's connection pool (a client given by the caller is left open)."""
        await self._clients.aclose()


def redis_breakers(
    url: str | None = None,
    *,
    client: Redis | None = None,
    prefix: str = "miniagent:breaker:",
    failure_rate: float = 0.5,
    window: int = 20,
    min_calls: int = 5,
    open_s: float = 30.0,
    half_open_probes: int = 1,
) -> BreakerRegistry:
    """A [`BreakerRegistry`][miniagent.resilience.BreakerRegistry] whose state lives in Redis, on the wall clock.

    Pass it to agents (`Agent(breakers=...)`) or set `MINIAGENT_REDIS_URL` to have
    [`default_breakers()`][miniagent.resilience.default_breakers] return one.

    Raises:
        UserError: a bad URL, prefix or breaker setting.
    """
    return BreakerRegistry(
        failure_rate=failure_rate,
        window=window,
        min_calls=min_calls,
        open_s=open_s,
        half_open_probes=half_open_probes,
        clock=WALL_CLOCK,
        store=RedisBreakerStore(url, client=client, prefix=prefix),
    )
