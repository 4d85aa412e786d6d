"""Resilience: retries with jitter, circuit breakers, fallback chains and graceful degradation of tools.

Agents use all of it by default: each agent wraps its model in a [`ResilientModel`][miniagent.resilience.ResilientModel]
with a default [`RetryPolicy`][miniagent.resilience.RetryPolicy] and the upstream's
[`CircuitBreaker`][miniagent.resilience.CircuitBreaker] from the process-wide
[`default_breakers()`][miniagent.resilience.default_breakers]. See `docs/resilience.md`.
"""

from __future__ import annotations

from ._breaker import (
    BreakerRecord,
    BreakerRegistry,
    BreakerStore,
    CircuitBreaker,
    InMemoryBreakerStore,
    default_breakers,
)
from ._fallback import FallbackModel, InvalidModelResponse
from ._redis_breakers import WALL_CLOCK, RedisBreakerStore, WallClock, redis_breakers
from ._resilient import DEFAULT_RETRY, ResilientModel
from ._retry import RetryPolicy, default_retryable
from ._tools import InMemoryLastGoodCache, LastGoodCache, args_key, describe_age

__all__ = [
    "DEFAULT_RETRY",
    "WALL_CLOCK",
    "BreakerRecord",
    "BreakerRegistry",
    "BreakerStore",
    "CircuitBreaker",
    "FallbackModel",
    "InMemoryBreakerStore",
    "InMemoryLastGoodCache",
    "InvalidModelResponse",
    "LastGoodCache",
    "RedisBreakerStore",
    "ResilientModel",
    "RetryPolicy",
    "WallClock",
    "args_key",
    "default_breakers",
    "default_retryable",
    "describe_age",
    "redis_breakers",
]
