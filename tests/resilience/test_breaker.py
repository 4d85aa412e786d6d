from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from miniagent.errors import UserError
from miniagent.events import AgentEvent, CircuitState, CircuitStateChanged, add_event_handler
from miniagent.resilience import (
    BreakerRecord,
    BreakerRegistry,
    BreakerStore,
    CircuitBreaker,
    InMemoryBreakerStore,
    default_breakers,
)
from miniagent.testing import ManualClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def changes() -> Iterator[list[CircuitStateChanged]]:
    seen: list[CircuitStateChanged] = []

    def handler(event: AgentEvent) -> None:
        if isinstance(event, CircuitStateChanged):
            seen.append(event)

    remove = add_event_handler(handler)
    yield seen
    remove()


def state(b: CircuitBreaker) -> CircuitState:
    """The breaker's state, read through a call (so type checkers do not narrow it across awaits)."""
    return b.state


def breaker(clock: ManualClock, **kwargs: object) -> CircuitBreaker:
    settings: dict[str, object] = {"failure_rate": 0.5, "window": 4, "min_calls": 4, "open_s": 10.0}
    settings.update(kwargs)
    return CircuitBreaker("api", clock=clock, **settings)  # type: ignore[arg-type]


async def test_opens_when_the_failure_rate_is_reached(changes: list[CircuitStateChanged]) -> None:
    clock = ManualClock()
    b = breaker(clock)
    for failed in (False, True, False):
        assert await b.allow()
        await (b.record_failure() if failed else b.record_success())
    assert state(b) == "closed"  # 1 of 3: below min_calls
    assert await b.allow()
    await b.record_failure()  # 2 of 4 = 50 %
    assert state(b) == "open"
    assert not await b.allow()
    assert b.retry_in_s() == 10.0
    assert [(c.from_state, c.to_state) for c in changes] == [("closed", "open")]
    assert changes[0].upstream == "api" and "2 of the last 4 calls failed" in changes[0].reason
    assert changes[0].run_id is None


async def test_the_window_slides() -> None:
    clock = ManualClock()
    b = breaker(clock, window=4, min_calls=4, failure_rate=0.75)
    for failed in (True, True, False, False, False, True, True):
        await (b.record_failure() if failed else b.record_success())
    assert state(b) == "closed"  # never 3 failures among the last 4 calls
    await b.record_failure()  # the last 4: ok, failed, failed, failed
    assert state(b) == "open"


async def test_half_open_probe_success_closes(changes: list[CircuitStateChanged]) -> None:
    clock = ManualClock()
    b = breaker(clock, min_calls=1, window=1)
    await b.record_failure()
    assert state(b) == "open"
    clock.advance(9.9)
    assert not await b.allow()
    clock.advance(0.1)
    assert state(b) == "half-open"  # open_s has passed
    assert await b.allow()  # the one probe
    assert not await b.allow()  # a second concurrent probe is refused
    await b.record_success()
    assert state(b) == "closed"
    assert await b.allow()
    assert [(c.from_state, c.to_state) for c in changes] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


async def test_half_open_probe_failure_reopens() -> None:
    clock = ManualClock()
    b = breaker(clock, min_calls=1, window=1)
    await b.record_failure()
    clock.advance(10.0)
    assert await b.allow()
    await b.record_failure()
    assert state(b) == "open"
    assert b.retry_in_s() == 10.0  # a fresh open period from the failed probe
    assert not await b.allow()


async def test_several_probes_and_a_cancelled_probe_gives_its_slot_back() -> None:
    clock = ManualClock()
    b = breaker(clock, min_calls=1, window=1, half_open_probes=2)
    await b.record_failure()
    clock.advance(10.0)
    assert await b.allow() and await b.allow()
    assert not await b.allow()
    await b.record_cancelled()
    assert await b.allow()


async def test_breakers_of_one_upstream_share_the_store() -> None:
    clock = ManualClock()
    store = InMemoryBreakerStore()
    assert isinstance(store, BreakerStore)
    first = CircuitBreaker("api", min_calls=1, window=1, clock=clock, store=store)
    second = CircuitBreaker("api", min_calls=1, window=1, clock=clock, store=store)
    await first.record_failure()
    assert not await second.allow()
    assert state(second) == "open"


async def test_registry_makes_one_breaker_per_upstream_with_its_defaults() -> None:
    clock = ManualClock()
    registry = BreakerRegistry(min_calls=2, window=2, open_s=5.0, clock=clock)
    a = registry.get("a")
    assert registry.get("a") is a and registry.get("b") is not a
    assert (a.min_calls, a.window, a.open_s, a.clock) == (2, 2, 5.0, clock)
    assert {b.upstream for b in registry.breakers()} == {"a", "b"}
    await a.record_failure()
    await a.record_failure()
    assert state(a) == "open"
    registry.reset()
    assert state(registry.get("a")) == "closed"
    assert isinstance(default_breakers(), BreakerRegistry) and default_breakers() is default_breakers()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"failure_rate": 0}, "failure_rate"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"window": 0}, "window"),
        ({"window": 3, "min_calls": 5}, "smaller than `min_calls`"),
        ({"min_calls": 0}, "min_calls"),
        ({"open_s": 0}, "open_s"),
        ({"half_open_probes": 0}, "half_open_probes"),
    ],
)
def test_nonsensical_breakers_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        CircuitBreaker("api", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=match):
        BreakerRegistry(**kwargs)  # type: ignore[arg-type]


def test_an_upstream_is_required() -> None:
    with pytest.raises(UserError, match="upstream"):
        CircuitBreaker(" ")
    with pytest.raises(UserError, match="BreakerStore"):
        CircuitBreaker("api", store=object())  # type: ignore[arg-type]


class SharedStore:
    """Another `BreakerStore`: every call goes through the event loop, as a networked store (Redis) would."""

    def __init__(self) -> None:
        self.inner = InMemoryBreakerStore()
        self.calls = 0

    async def _hop(self) -> None:
        self.calls += 1
        await anyio.lowlevel.checkpoint()

    async def get(self, upstream: str) -> BreakerRecord:
        await self._hop()
        return await self.inner.get(upstream)

    async def record(self, upstream: str, *, failed: bool, window: int) -> BreakerRecord:
        await self._hop()
        return await self.inner.record(upstream, failed=failed, window=window)

    async def transition(self, upstream: str, *, from_state: CircuitState, to_state: CircuitState, at: float) -> bool:
        await self._hop()
        return await self.inner.transition(upstream, from_state=from_state, to_state=to_state, at=at)

    async def acquire_probe(self, upstream: str, limit: int) -> bool:
        await self._hop()
        return await self.inner.acquire_probe(upstream, limit)

    async def release_probe(self, upstream: str) -> None:
        await self._hop()
        await self.inner.release_probe(upstream)


async def test_a_store_of_another_kind_drives_the_same_state_machine(changes: list[CircuitStateChanged]) -> None:
    clock = ManualClock()
    store = SharedStore()
    registry = BreakerRegistry(min_calls=2, window=2, open_s=5.0, clock=clock, store=store)
    first = registry.get("api")
    other_replica = CircuitBreaker("api", min_calls=2, window=2, open_s=5.0, clock=clock, store=store)
    assert await first.allow()
    await first.record_success()
    await first.record_failure()  # 1 of the last 2: the rate is reached
    assert state(first) == "open"
    await first.record_failure()  # a call that ends while open changes nothing
    assert state(first) == "open"
    assert not await other_replica.allow()  # the other breaker reads the shared state
    clock.advance(5.0)
    assert await other_replica.allow()  # its probe
    assert not await first.allow()  # one probe at a time
    await other_replica.record_success()
    assert await first.allow()
    assert state(first) == "closed"
    assert [(c.from_state, c.to_state) for c in changes] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]
    assert store.calls > 0
