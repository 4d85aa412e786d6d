"""Circuit-breaker state in a real Redis: two registries (two replicas) agree; so does another process."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest

from miniagent import events as _events
from miniagent.errors import UserError
from miniagent.events import AgentEvent, CircuitStateChanged
from miniagent.resilience import (
    WALL_CLOCK,
    BreakerRegistry,
    BreakerStore,
    RedisBreakerStore,
    WallClock,
    default_breakers,
    redis_breakers,
)
from miniagent.testing import ManualClock
from tests.redis_service import RedisServer

pytestmark = pytest.mark.anyio

START = 1_700_000_000.0  # wall-clock seconds: what replicas sharing Redis compare


def _registry(url: str, clock: ManualClock) -> BreakerRegistry:
    return BreakerRegistry(
        failure_rate=0.5, window=4, min_calls=2, open_s=10.0, clock=clock, store=RedisBreakerStore(url)
    )


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[tuple[BreakerRegistry, BreakerRegistry, ManualClock]]:
    clock = ManualClock(START)  # one wall clock: the replicas' clocks are in sync
    a, b = _registry(redis_url, clock), _registry(redis_url, clock)
    try:
        yield a, b, clock
    finally:
        for registry in (a, b):
            assert isinstance(registry.store, RedisBreakerStore)
            await registry.store.aclose()


@pytest.fixture
def changes() -> Iterator[Callable[[], list[tuple[str, str, str]]]]:
    seen: list[tuple[str, str, str]] = []

    def handler(event: AgentEvent) -> None:
        if isinstance(event, CircuitStateChanged):
            seen.append((event.upstream, event.from_state, event.to_state))

    remove = _events.add_event_handler(handler)
    try:
        yield lambda: seen
    finally:
        remove()


async def test_the_store_implements_the_protocol(redis_url: str) -> None:
    store = RedisBreakerStore(redis_url)
    try:
        assert isinstance(store, BreakerStore)
        record = await store.get("api")
        assert (record.state, record.failures, record.calls, record.probes, record.opened_at) == ("closed", 0, 0, 0, 0)
        after = [await store.record("api", failed=f, window=3) for f in (True, False, True, True)]
        assert [(r.failures, r.calls) for r in after] == [(1, 1), (1, 2), (2, 3), (2, 3)]  # the oldest fell out
        assert await store.transition("api", from_state="closed", to_state="open", at=START)
        assert not await store.transition("api", from_state="closed", to_state="open", at=START + 1)
        opened = await store.get("api")
        assert (opened.state, opened.opened_at, opened.calls, opened.failures) == ("open", START, 0, 0)
        assert (await store.record("api", failed=True, window=3)).calls == 0  # not counted while open
        assert not await store.acquire_probe("api", 1)
        assert await store.transition("api", from_state="open", to_state="half-open", at=START + 10)
        assert await store.acquire_probe("api", 2) and await store.acquire_probe("api", 2)
        assert not await store.acquire_probe("api", 2)
        assert (await store.get("api")).probes == 2
        await store.release_probe("api")
        await store.release_probe("api")
        await store.release_probe("api")  # never below zero
        assert (await store.get("api")).probes == 0
        assert await store.transition("api", from_state="half-open", to_state="closed", at=START + 11)
        assert await store.acquire_probe("api", 1)  # closed: always
        assert (await store.get("api")).opened_at == START  # kept from the last opening
    finally:
        await store.aclose()


async def test_one_replica_opens_the_other_sees_it_open(
    replicas: tuple[BreakerRegistry, BreakerRegistry, ManualClock], changes: Callable[[], list[tuple[str, str, str]]]
) -> None:
    a, b, clock = replicas
    assert await a.get("openai").allow()
    await a.get("openai").record_failure()
    await b.get("openai").record_failure()  # the second failure, on the other replica, crosses the threshold
    assert b.get("openai").state == "open"
    assert not await a.get("openai").allow()  # the first replica never saw it open, but refuses now
    assert a.get("openai").state == "open"
    assert a.get("openai").retry_in_s() == pytest.approx(10.0)
    assert changes() == [("openai", "closed", "open")]
    clock.advance(10.0)
    assert await a.get("openai").allow()  # a's probe
    assert not await b.get("openai").allow()  # one probe at a time, across replicas
    await a.get("openai").record_success()
    assert await b.get("openai").allow()
    assert b.get("openai").state == "closed"
    assert changes() == [
        ("openai", "closed", "open"),
        ("openai", "open", "half-open"),
        ("openai", "half-open", "closed"),
    ]


async def test_a_failed_probe_on_one_replica_reopens_for_both(
    replicas: tuple[BreakerRegistry, BreakerRegistry, ManualClock],
) -> None:
    a, b, clock = replicas
    for registry in (a, b):
        await registry.get("x").record_failure()
    clock.advance(10.0)
    assert await b.get("x").allow()
    await b.get("x").record_failure()
    assert not await a.get("x").allow()
    clock.advance(9.0)
    assert not await a.get("x").allow()
    clock.advance(1.0)
    assert await a.get("x").allow()


async def test_concurrent_failures_open_the_breaker_exactly_once(
    replicas: tuple[BreakerRegistry, BreakerRegistry, ManualClock], changes: Callable[[], list[tuple[str, str, str]]]
) -> None:
    a, b, _ = replicas
    tasks = 8
    barrier = asyncio.Barrier(tasks)

    async def fail(index: int) -> None:
        breaker = (a, b)[index % 2].get("flaky")
        await barrier.wait()
        await breaker.record_failure()

    async with anyio.create_task_group() as group:
        for index in range(tasks):
            group.start_soon(fail, index)
    assert changes() == [("flaky", "closed", "open")]
    assert (await a.store.get("flaky")).state == "open"


async def test_another_process_sees_the_breaker_open(redis_server: RedisServer, redis_url: str) -> None:
    registry = redis_breakers(redis_url, window=4, min_calls=2, open_s=300.0)
    try:
        for _ in range(2):
            await registry.get("anthropic").record_failure()
        assert registry.get("anthropic").state == "open"
    finally:
        assert isinstance(registry.store, RedisBreakerStore)
        await registry.store.aclose()
    code = textwrap.dedent(
        """
        import os

        import anyio
        from miniagent.resilience import default_breakers, redis_breakers

        async def main() -> None:
            registry = redis_breakers(os.environ["MINIAGENT_REDIS_URL"], open_s=3600.0)
            breaker = registry.get("anthropic")
            allowed = await breaker.allow()
            print(type(default_breakers().store).__name__, breaker.state, allowed, breaker.retry_in_s() > 3000)
            await registry.store.aclose()

        anyio.run(main)
        """
    )
    env = {**os.environ, "MINIAGENT_REDIS_URL": redis_url}
    out = await anyio.run_process([sys.executable, "-c", code], env=env, check=False)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == ["RedisBreakerStore", "open", "False", "True"]


def test_default_breakers_use_redis_only_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    local = default_breakers()
    assert not isinstance(local.store, RedisBreakerStore)
    monkeypatch.setenv("MINIAGENT_REDIS_URL", "redis://:pw@127.0.0.1:1/0")
    shared = default_breakers()
    assert isinstance(shared.store, RedisBreakerStore) and shared.clock is WALL_CLOCK
    assert default_breakers() is shared  # one registry per URL
    assert "***" in repr(shared.store) and "pw" not in repr(shared.store)
    monkeypatch.delenv("MINIAGENT_REDIS_URL")
    assert default_breakers() is local


async def test_an_unreachable_redis_lets_calls_through_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    registry = redis_breakers("redis://:secretpw@127.0.0.1:1/0", window=2, min_calls=1)
    breaker = registry.get("api")
    try:
        with caplog.at_level("WARNING", logger="miniagent.resilience"):
            assert await breaker.allow()
            await breaker.record_failure()
            await breaker.record_success()
            assert await breaker.allow()
    finally:
        assert isinstance(registry.store, RedisBreakerStore)
        await registry.store.aclose()
    assert breaker.state == "closed"
    assert "unavailable in Redis" in caplog.text and "redis://:***@127.0.0.1:1/0" in caplog.text
    assert "secretpw" not in caplog.text


def test_wall_clock_is_posix_time() -> None:
    import time

    before = time.time()
    now = WallClock().now()
    assert before <= now <= time.time()


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(UserError, match="either a Redis `url` or a `client`"):
        RedisBreakerStore()
    with pytest.raises(UserError, match="`prefix` must be a non-empty string"):
        RedisBreakerStore("redis://localhost", prefix="")
    with pytest.raises(UserError, match="MINIAGENT_REDIS_URL"):
        redis_breakers("localhost:6379")
    with pytest.raises(UserError, match="`window`"):
        redis_breakers("redis://localhost", window=1, min_calls=2)
