"""The in-process rate limiter: token buckets and daily counters in dictionaries of this process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

from ..errors import UserError
from ._base import (
    Admission,
    Bucket,
    BucketState,
    DailyBudget,
    DailyUsage,
    WallTime,
    check_now,
    check_request,
    check_usage,
    day_of,
    first_exceeded,
    is_count,
)

__all__ = ["InMemoryRateLimiter"]


class InMemoryRateLimiter:
    """Rate limits and budgets in this process (the default): right for one server process, not shared by replicas.

    Every method is one step under a lock, with no await inside, so concurrent requests (tasks of one event loop or
    threads) never both take the last token. Bounded: the least recently used subjects are forgotten beyond
    `max_keys` (a forgotten bucket starts full again, a forgotten counter at zero).

    Example:
        ```python
        import anyio

        from miniagent.limits import Bucket, InMemoryRateLimiter
        from miniagent.testing import ManualClock

        async def main() -> None:
            clock = ManualClock()
            limiter = InMemoryRateLimiter(clock=clock.now)
            bucket = Bucket.per_minute("key:k1", rpm=60, burst=2)
            assert (await limiter.admit([bucket])).allowed
            assert (await limiter.admit([bucket])).allowed
            refused = await limiter.admit([bucket])
            assert not refused.allowed and refused.retry_after_s == 1.0
            clock.advance(1.0)
            assert (await limiter.admit([bucket])).allowed

        anyio.run(main)
        ```

    Args:
        clock: The wall clock, POSIX seconds (default `time.time`); tests pass a manual one.
        max_keys: How many subjects' buckets, and subject-days' counters, are remembered.

    Raises:
        UserError: `clock` is not callable or `max_keys` is not an integer >= 1.
    """

    def __init__(self, *, clock: WallTime | None = None, max_keys: int = 100_000) -> None:
        if clock is not None and not callable(clock):
            raise UserError(f"InMemoryRateLimiter: `clock` must return POSIX seconds, got {clock!r}.")
        if not is_count(max_keys) or max_keys < 1:
            raise UserError(f"InMemoryRateLimiter: `max_keys` must be an integer >= 1, got {max_keys!r}.")
        self.clock: Final[WallTime] = clock or time.time
        """The wall clock."""
        self.max_keys: Final = max_keys
        """Subjects remembered."""
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._days: OrderedDict[tuple[str, int], tuple[int, float]] = OrderedDict()  # (key, day) -> (tokens, usd)
        self._lock = threading.Lock()  # no await inside: a plain lock is enough for tasks and threads alike

    def __repr__(self) -> str:
        return f"InMemoryRateLimiter(subjects={len(self._buckets)})"

    def _now(self, now: float | None) -> float:
        checked = check_now(now)
        return float(self.clock()) if checked is None else checked

    def _tokens(self, bucket: Bucket, now: float) -> float:
        tokens, at = self._buckets.get(bucket.key, (float(bucket.capacity), now))
        return min(float(bucket.capacity), tokens + max(0.0, now - at) * bucket.per_second)

    def _used(self, key: str, day: int) -> tuple[int, float]:
        return self._days.get((key, day), (0, 0.0))

    async def admit(
        self, buckets: Sequence[Bucket], budgets: Sequence[DailyBudget] = (), *, now: float | None = None
    ) -> Admission:
        """Refuse if a budget is used up; else take a token from every bucket if each has one (or from none).

        Raises:
            UserError: arguments of the wrong type, or a `now` that is not POSIX seconds.
        """
        check_request(buckets, budgets)
        at = self._now(now)
        day = day_of(at)
        with self._lock:
            exceeded = first_exceeded(budgets, [self._used(b.key, day) for b in budgets], at)
            if exceeded is not None:
                return Admission(False, (), exceeded, at)
            levels = [self._tokens(bucket, at) for bucket in buckets]
            allowed = all(level >= 1.0 for level in levels)
            if allowed:
                levels = [level - 1.0 for level in levels]
                for bucket, level in zip(buckets, levels, strict=True):
                    previous = self._buckets.pop(bucket.key, (0.0, at))[1]
                    self._buckets[bucket.key] = (level, max(at, previous))  # a clock stepping back refills nothing
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
        states = tuple(BucketState.of(bucket, level) for bucket, level in zip(buckets, levels, strict=True))
        return Admission(allowed, states, None, at)

    async def add_usage(
        self, keys: Sequence[str], *, tokens: int, usd: float, now: float | None = None
    ) -> tuple[DailyUsage, ...]:
        """Add a run's tokens and cost to today's counters of every key.

        Raises:
            UserError: a bad key, negative tokens or cost, or a `now` that is not POSIX seconds.
        """
        check_usage(keys, tokens, usd)
        day = day_of(self._now(now))
        totals = []
        with self._lock:
            for key in keys:
                used_tokens, used_usd = self._days.pop((key, day), (0, 0.0))
                self._days[(key, day)] = (used_tokens + tokens, used_usd + float(usd))
                totals.append(DailyUsage(key, used_tokens + tokens, used_usd + float(usd), day))
            while len(self._days) > self.max_keys:
                self._days.popitem(last=False)  # the oldest counters: yesterday's go first
        return tuple(totals)

    async def usage(self, key: str, *, now: float | None = None) -> DailyUsage:
        """What `key` used today.

        Raises:
            UserError: a bad key, or a `now` that is not POSIX seconds.
        """
        check_usage([key], 0, 0.0)
        day = day_of(self._now(now))
        with self._lock:
            tokens, usd = self._used(key, day)
        return DailyUsage(key, tokens, usd, day)

    async def aclose(self) -> None:
        """Nothing to release."""

    def clear(self) -> None:
        """Forget every bucket and counter."""
        with self._lock:
            self._buckets.clear()
            self._days.clear()
