"""`/healthz` and `/readyz` behind the doctor's check registry, with readiness results cached a few seconds (a
load balancer probing every second does not re-run the database checks each time).
"""  # noqa: D205

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import anyio

from .._utils import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from ..observability import CheckRegistry, HealthReport
    from ..settings import Settings

__all__ = ["COSTLY_CHECKS", "HealthProbes"]

COSTLY_CHECKS = frozenset({"default model"})
"""Checks left out of the probes: the default model check sends a provider request."""


class HealthProbes:
    """Runs the liveness and readiness checks for the probes.

    Args:
        settings: The server's settings (what the checks check).
        registry: The checks; `None` uses the doctor's registry at each run (so checks registered later count).
        cache_s: How long a readiness report is reused.
        clock: Monotonic time for the cache.
        timeout_s: The timeout of a check that sets none.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CheckRegistry | None = None,
        cache_s: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
        timeout_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.cache_s = cache_s
        self.clock = clock
        self.timeout_s = timeout_s
        self._cached: dict[str, tuple[HealthReport, float]] = {}
        self._lock: anyio.Lock | None = None
        self.runs = 0
        """How many times checks ran (tests read it)."""

    def _checks(self) -> CheckRegistry:
        from ..observability import CheckRegistry, default_registry

        source = self.registry if self.registry is not None else default_registry
        return CheckRegistry([c for c in source if c.name not in COSTLY_CHECKS])

    async def liveness(self) -> HealthReport:
        """The liveness report (the process and its data dir), reused for `cache_s` seconds."""
        return await self._run("liveness")

    async def readiness(self) -> HealthReport:
        """The readiness report (database, migrations, disk, ...), reused for `cache_s` seconds."""
        return await self._run("readiness")

    async def _run(self, kind: Literal["liveness", "readiness"]) -> HealthReport:
        from ..observability import run_checks

        cached = self._cached.get(kind)
        if cached is not None and self.clock.now() - cached[1] < self.cache_s:
            return cached[0]
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:  # concurrent probes share one run
            cached = self._cached.get(kind)
            if cached is not None and self.clock.now() - cached[1] < self.cache_s:
                return cached[0]
            report = await run_checks(self.settings, kind=kind, registry=self._checks(), timeout_s=self.timeout_s)
            self.runs += 1
            self._cached[kind] = (report, self.clock.now())
            return report
