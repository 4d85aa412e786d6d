"""Circuit breakers: an upstream that keeps failing is not called for a while, then probed."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from .._utils import SYSTEM_CLOCK, Clock
from ..context import current_run, emit_event
from ..errors import UserError
from ..events import CircuitState, CircuitStateChanged

__all__ = [
    "BreakerRecord",
    "BreakerRegistry",
    "BreakerStore",
    "CircuitBreaker",
    "InMemoryBreakerStore",
    "default_breakers",
]

_MAX_ENTRIES = 10_000  # upstreams remembered per store/registry; the oldest is forgotten beyond (it restarts closed)


@dataclass(slots=True)
class BreakerRecord:
    """The shared state of one upstream's breaker, as a [`BreakerStore`][miniagent.resilience.BreakerStore] keeps it."""

    state: CircuitState = "closed"
    """Closed (calls flow), open (calls fail fast) or half-open (probes test the upstream)."""
    opened_at: float = 0.0
    """When it last opened, on the breakers' clock."""
    failures: int = 0
    """Failed calls among the last `calls` (while closed)."""
    calls: int = 0
    """Calls in the window (while closed)."""
    probes: int = 0
    """Probe calls in flight (while half-open)."""
    window: deque[bool] = field(default_factory=deque, repr=False)
    """Outcomes in the window, oldest first (`True`: failed)."""


@runtime_checkable
class BreakerStore(Protocol):
    """Where breaker state lives: in this process by default; a shared store (Redis) lets replicas agree.

    Each method is one atomic step on one upstream's record.
    """

    async def get(self, upstream: str) -> BreakerRecord:
        """The upstream's record (a fresh closed one if unknown). Callers must not modify it."""
        ...

    async def record(self, upstream: str, *, failed: bool, window: int) -> BreakerRecord:
        """Add a call's outcome to the window of the last `window` calls (only while closed); returns the record."""
        ...

    async def transition(self, upstream: str, *, from_state: CircuitState, to_state: CircuitState, at: float) -> bool:
        """Move from `from_state` to `to_state` if still in `from_state` (clearing the window and probes).

        Returns whether this call made the change (so exactly one caller reports it).
        """
        ...

    async def acquire_probe(self, upstream: str, limit: int) -> bool:
        """Take a probe slot while half-open (at most `limit` in flight); true at once when closed."""
        ...

    async def release_probe(self, upstream: str) -> None:
        """Give a probe slot back."""
        ...


class InMemoryBreakerStore:
    """Breaker state in this process (the default); thread-safe, bounded to the most recent upstreams."""

    def __init__(self) -> None:
        self._records: OrderedDict[str, BreakerRecord] = OrderedDict()
        self._lock = threading.Lock()  # a breaker may be shared by runs on several threads' event loops

    def _entry(self, upstream: str) -> BreakerRecord:
        record = self._records.get(upstream)
        if record is None:
            record = self._records[upstream] = BreakerRecord()
            if len(self._records) > _MAX_ENTRIES:
                self._records.popitem(last=False)
        return record

    async def get(self, upstream: str) -> BreakerRecord:
        """The upstream's record."""
        return self.get_now(upstream)

    def get_now(self, upstream: str) -> BreakerRecord:
        """`get` without awaiting (the breakers' fast path for this store)."""
        with self._lock:
            return self._entry(upstream)

    async def record(self, upstream: str, *, failed: bool, window: int) -> BreakerRecord:
        """Add an outcome to the window (while closed)."""
        return self.record_now(upstream, failed=failed, window=window)

    def record_now(self, upstream: str, *, failed: bool, window: int) -> BreakerRecord:
        """`record` without awaiting (the breakers' fast path for this store)."""
        with self._lock:
            record = self._entry(upstream)
            self._add(record, failed, window)
            return record

    def record_into(self, record: BreakerRecord, *, failed: bool, window: int) -> None:
        """`record` on a record this store handed out (the breakers' fast path for this store)."""
        with self._lock:
            self._add(record, failed, window)

    @staticmethod
    def _add(record: BreakerRecord, failed: bool, window: int) -> None:
        if record.state == "closed":
            outcomes = record.window
            outcomes.append(failed)
            record.failures += failed
            if len(outcomes) > window:
                record.failures -= outcomes.popleft()
            record.calls = len(outcomes)

    async def transition(self, upstream: str, *, from_state: CircuitState, to_state: CircuitState, at: float) -> bool:
        """Compare-and-set the state."""
        with self._lock:
            record = self._entry(upstream)
            if record.state != from_state:
                return False
            record.state = to_state
            record.window.clear()
            record.failures = record.calls = record.probes = 0
            if to_state == "open":
                record.opened_at = at
            return True

    async def acquire_probe(self, upstream: str, limit: int) -> bool:
        """Take a probe slot."""
        with self._lock:
            record = self._entry(upstream)
            if record.state == "closed":
                return True
            if record.state == "half-open" and record.probes < limit:
                record.probes += 1
                return True
            return False

    async def release_probe(self, upstream: str) -> None:
        """Give a probe slot back."""
        with self._lock:
            record = self._entry(upstream)
            record.probes = max(0, record.probes - 1)

    def clear(self) -> None:
        """Forget every upstream (all breakers start closed again)."""
        with self._lock:
            for record in self._records.values():  # breakers holding a record see the reset too
                record.state = "closed"
                record.window.clear()
                record.failures = record.calls = record.probes = 0
            self._records.clear()


def _is(value: object, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # NaN is not a number


def _check(name: str, ok: bool, value: object, what: str) -> None:
    if not ok:
        raise UserError(f"CircuitBreaker: `{name}` must be {what}, got {value!r}.")


class CircuitBreaker:
    """Fails fast on an upstream that keeps failing, then lets a few probe calls test it.

    Closed: calls flow; among the last `window` calls (once there are at least `min_calls`), when the share of
    failures reaches `failure_rate`, it opens. Open: calls are refused at once, for `open_s` seconds. Then
    half-open: up to `half_open_probes` calls go through at a time; a success closes it, a failure opens it
    again. Each change is a [`CircuitStateChanged`][miniagent.events.CircuitStateChanged] event.

    The state lives in a [`BreakerStore`][miniagent.resilience.BreakerStore] (in this process by default), keyed by
    `upstream`, so breakers of the same upstream share it.

    Example:
        ```python
        import anyio

        from miniagent.resilience import CircuitBreaker
        from miniagent.testing import ManualClock

        async def main() -> None:
            clock = ManualClock()
            breaker = CircuitBreaker("api", failure_rate=0.5, window=4, min_calls=2, open_s=10.0, clock=clock)
            for _ in range(2):
                assert await breaker.allow()
                await breaker.record_failure()
            assert breaker.state == "open" and not await breaker.allow()
            clock.advance(10.0)
            assert await breaker.allow()  # a probe
            await breaker.record_success()
            assert breaker.state == "closed"

        anyio.run(main)
        ```

    Args:
        upstream: What is protected: a model's `upstream` or `tool:<name>`.
        failure_rate: The share of failed calls in the window that opens the breaker, in (0, 1].
        window: How many recent calls are counted.
        min_calls: Calls needed in the window before the rate is judged.
        open_s: Seconds an open breaker refuses calls before probing.
        half_open_probes: Probe calls allowed at a time while half-open.
        clock: The clock for the open duration (tests inject `ManualClock`).
        store: Where the state lives (default: a store of this breaker's own).

    Raises:
        UserError: a nonsensical setting (a rate outside (0, 1], `window < min_calls`, a non-positive duration...).
    """

    __slots__ = (
        "upstream",
        "failure_rate",
        "window",
        "min_calls",
        "open_s",
        "half_open_probes",
        "clock",
        "store",
        "_state",
        "_opened_at",
        "_local",
        "_record",
    )

    def __init__(
        self,
        upstream: str,
        *,
        failure_rate: float = 0.5,
        window: int = 20,
        min_calls: int = 5,
        open_s: float = 30.0,
        half_open_probes: int = 1,
        clock: Clock | None = None,
        store: BreakerStore | None = None,
    ) -> None:
        _check("upstream", _is(upstream, str) and bool(upstream.strip()), upstream, "a non-empty name")
        _check("failure_rate", _is_number(failure_rate) and 0 < failure_rate <= 1, failure_rate, "a share in (0, 1]")
        for name, value in (("window", window), ("min_calls", min_calls), ("half_open_probes", half_open_probes)):
            _check(name, _is(value, int) and not _is(value, bool) and value >= 1, value, "an integer >= 1")
        if window < min_calls:
            raise UserError(
                f"CircuitBreaker: `window` ({window}) is smaller than `min_calls` ({min_calls}): the breaker could "
                "never judge the failure rate. Raise `window` or lower `min_calls`."
            )
        _check("open_s", _is_number(open_s) and open_s > 0, open_s, "a positive number of seconds")
        if store is not None and not isinstance(store, BreakerStore):
            raise UserError(f"CircuitBreaker: `store` must implement BreakerStore, got {type(store).__name__}.")
        self.upstream: Final = upstream
        """What this breaker protects."""
        self.failure_rate: Final = float(failure_rate)
        """The failure share that opens it."""
        self.window: Final = window
        """Recent calls counted."""
        self.min_calls: Final = min_calls
        """Calls needed before judging."""
        self.open_s: Final = float(open_s)
        """Seconds open before probing."""
        self.half_open_probes: Final = half_open_probes
        """Probes at a time while half-open."""
        self.clock: Final[Clock] = clock or SYSTEM_CLOCK
        """The clock of the open duration."""
        self.store: Final[BreakerStore] = store if store is not None else InMemoryBreakerStore()
        """Where the state lives."""
        self._state: CircuitState = "closed"
        self._opened_at = 0.0
        # The in-process store answers at once: skip the coroutine round trips on the happy path.
        self._local = self.store if isinstance(self.store, InMemoryBreakerStore) else None
        self._record: BreakerRecord | None = None  # the in-process store's live record of this upstream

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.upstream!r}, state={self.state!r})"

    @property
    def state(self) -> CircuitState:
        """The state as this process last saw it; an open breaker reads half-open once `open_s` has passed."""
        if self._state == "open" and self.clock.now() >= self._opened_at + self.open_s:
            return "half-open"
        return self._state

    def retry_in_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self._state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.open_s - self.clock.now())

    def _bind(self, local: InMemoryBreakerStore) -> BreakerRecord:
        record = self._record = local.get_now(self.upstream)
        return record

    def _seen(self, record: BreakerRecord) -> None:
        self._state = record.state
        self._opened_at = record.opened_at

    async def allow(self) -> bool:
        """Whether a call may go ahead now (while half-open, an allowed call is a probe: record its outcome)."""
        local = self._local
        if local is not None:
            record = self._record or self._bind(local)
        else:
            record = await self.store.get(self.upstream)
        if record.state == "closed":
            self._state = "closed"
            return True
        self._seen(record)
        if record.state == "open":
            now = self.clock.now()
            if now < record.opened_at + self.open_s:
                return False
            await self._move("open", "half-open", f"{self.open_s:g} s passed since it opened: probing", now)
        allowed = await self.store.acquire_probe(self.upstream, self.half_open_probes)
        self._seen(await self.store.get(self.upstream))
        return allowed

    async def record_success(self) -> None:
        """Report a call that succeeded (a successful probe closes the breaker)."""
        local = self._local
        if local is not None:
            record = self._record or self._bind(local)
            if record.state == "closed":  # the happy path: one outcome more in the window
                local.record_into(record, failed=False, window=self.window)
                self._state = "closed"
                return
        record = await self.store.record(self.upstream, failed=False, window=self.window)
        if record.state == "half-open":
            await self.store.release_probe(self.upstream)
            await self._move("half-open", "closed", "a probe call succeeded", self.clock.now())
        elif record.state != self._state:
            self._seen(record)

    async def record_failure(self) -> None:
        """Report a call that failed (it may open the breaker; a failed probe opens it again)."""
        record = await self.store.record(self.upstream, failed=True, window=self.window)
        if record.state == "closed":
            self._state = "closed"
            calls = record.calls
            if calls >= self.min_calls and record.failures >= self.failure_rate * calls:
                await self._move(
                    "closed",
                    "open",
                    f"{record.failures} of the last {calls} calls failed (threshold {self.failure_rate:.0%})",
                    self.clock.now(),
                )
        elif record.state == "half-open":
            await self.store.release_probe(self.upstream)
            await self._move("half-open", "open", "a probe call failed", self.clock.now())
        else:
            self._seen(record)

    async def record_cancelled(self) -> None:
        """Report a call that ended with no verdict (cancelled): a probe slot is given back."""
        record = await self.store.get(self.upstream)
        if record.state == "half-open":
            await self.store.release_probe(self.upstream)

    async def _move(self, from_state: CircuitState, to_state: CircuitState, reason: str, now: float) -> None:
        changed = await self.store.transition(self.upstream, from_state=from_state, to_state=to_state, at=now)
        self._seen(await self.store.get(self.upstream))
        if changed:
            run = current_run()
            run_id = run.run_id if run is not None else None
            await emit_event(CircuitStateChanged(run_id, self.upstream, from_state, to_state, reason))


class BreakerRegistry:
    """One [`CircuitBreaker`][miniagent.resilience.CircuitBreaker] per upstream, made on first use with `defaults`.

    Every breaker of a registry shares one store. The process-wide registry is
    [`default_breakers()`][miniagent.resilience.default_breakers]; pass a registry of your own to an agent
    (`Agent(breakers=...)`) to isolate it, e.g. in tests.

    Args:
        failure_rate: See [`CircuitBreaker`][miniagent.resilience.CircuitBreaker]; the same for every breaker.
        window: Recent calls counted.
        min_calls: Calls needed before judging.
        open_s: Seconds open before probing.
        half_open_probes: Probes at a time while half-open.
        clock: The clock of every breaker.
        store: Where the breakers' state lives (default: in this process).

    Raises:
        UserError: a setting that `CircuitBreaker` rejects.
    """

    def __init__(
        self,
        *,
        failure_rate: float = 0.5,
        window: int = 20,
        min_calls: int = 5,
        open_s: float = 30.0,
        half_open_probes: int = 1,
        clock: Clock | None = None,
        store: BreakerStore | None = None,
    ) -> None:
        self.store: Final[BreakerStore] = store if store is not None else InMemoryBreakerStore()
        """The state of every breaker of this registry."""
        self._settings: Final = {
            "failure_rate": failure_rate,
            "window": window,
            "min_calls": min_calls,
            "open_s": open_s,
            "half_open_probes": half_open_probes,
        }
        self.clock: Final = clock
        """The clock of every breaker (`None`: the system clock)."""
        self._make("validation")  # rejects bad settings now, not at the first failure
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._lock = threading.Lock()

    def _make(self, upstream: str) -> CircuitBreaker:
        s = self._settings
        return CircuitBreaker(
            upstream,
            failure_rate=s["failure_rate"],
            window=int(s["window"]),
            min_calls=int(s["min_calls"]),
            open_s=s["open_s"],
            half_open_probes=int(s["half_open_probes"]),
            clock=self.clock,
            store=self.store,
        )

    def get(self, upstream: str) -> CircuitBreaker:
        """The breaker of `upstream` (made on first use)."""
        breaker = self._breakers.get(upstream)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(upstream)
                if breaker is None:
                    breaker = self._make(upstream)
                    self._breakers[upstream] = breaker
                    if len(self._breakers) > _MAX_ENTRIES:
                        self._breakers.popitem(last=False)
        return breaker

    def breakers(self) -> list[CircuitBreaker]:
        """The breakers made so far."""
        return list(self._breakers.values())

    def reset(self) -> None:
        """Forget every breaker and, for the in-process store, its state (all closed again)."""
        with self._lock:
            self._breakers.clear()
            if isinstance(self.store, InMemoryBreakerStore):
                self.store.clear()


_default_registry = BreakerRegistry()
_shared_lock = threading.Lock()
_shared_registries: dict[str, BreakerRegistry] = {}  # Redis URL -> its registry


def default_breakers() -> BreakerRegistry:
    """The process-wide registry that agents use unless given `breakers=`.

    In this process by default; with `MINIAGENT_REDIS_URL` set, one whose state lives in that Redis (on the wall
    clock), so every replica sees the same breakers (see [`redis_breakers`][miniagent.resilience.redis_breakers]).
    """
    url = os.environ.get("MINIAGENT_REDIS_URL")  # read per call (a dict lookup): the run path stays cheap
    if not url:
        return _default_registry
    registry = _shared_registries.get(url)
    if registry is None:
        from ._redis_breakers import redis_breakers

        with _shared_lock:
            registry = _shared_registries.get(url)
            if registry is None:
                registry = _shared_registries[url] = redis_breakers(url)
    return registry
