"""Health and readiness: a registry of checks, a runner that never hangs, and a report.

`miniagent doctor` prints the report of every check; the server's `/healthz` runs the `liveness` checks and
`/readyz` the `readiness` ones. Other parts add their checks (Redis, the broker...) with `register_check`, or
build their own `CheckRegistry`.

```python
import anyio

from miniagent.observability import Check, CheckRegistry, CheckResult, run_checks
from miniagent.settings import Settings


async def broker(settings: Settings) -> CheckResult:
    return CheckResult("ok", "connected")


registry = CheckRegistry([Check("broker", broker, kind="readiness")])
report = anyio.run(lambda: run_checks(Settings(), registry=registry, kind="readiness"))
assert report.ok and report.status == "ok"
```
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ._health_base import (
    CHECK_KINDS,
    Check,
    CheckFunction,
    CheckKind,
    CheckResult,
    CheckStatus,
    is_positive_seconds,
    scrub,
)
from ._health_models import local_model_check, model_check
from ._health_queue import queue_check
from ._health_redis import redis_check
from ._health_system import (
    DiskUsage,
    DiskUsageFunction,
    data_dir_check,
    database_check,
    disk_space_check,
    sqlite_extension_check,
    versions_check,
)

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "Check",
    "CheckFunction",
    "CheckKind",
    "CheckOutcome",
    "CheckRegistry",
    "CheckResult",
    "CheckStatus",
    "DiskUsage",
    "DiskUsageFunction",
    "HealthReport",
    "builtin_checks",
    "data_dir_check",
    "database_check",
    "default_registry",
    "disk_space_check",
    "local_model_check",
    "model_check",
    "queue_check",
    "redis_check",
    "register_check",
    "run_checks",
    "sqlite_extension_check",
    "unregister_check",
    "versions_check",
]

DEFAULT_TIMEOUT_S = 10.0
"""How long `run_checks` waits for a check that sets no timeout of its own."""


class CheckRegistry:
    """Checks by name, in registration order. The process has one (`default_registry`); a server may build its own.

    Args:
        checks: Checks to register at once.

    Raises:
        UserError: two checks share a name.
    """

    def __init__(self, checks: Iterable[Check] = ()) -> None:
        self._checks: dict[str, Check] = {}
        for check in checks:
            self.register(check)

    def register(self, check: Check, *, replace: bool = False) -> Check:
        """Add `check`; returns it.

        Args:
            check: The check.
            replace: Replace a check of the same name instead of refusing.

        Raises:
            UserError: `check` is not a `Check`, or one of that name is registered and `replace` is false.
        """
        if not isinstance(check, Check):
            raise UserError(
                f"Only a `Check` can be registered, got {type(check).__name__}: wrap your function in Check()."
            )
        if check.name in self._checks and not replace:
            raise UserError(
                f"A check named {check.name!r} is already registered: pick another name, or pass `replace=True`."
            )
        self._checks[check.name] = check
        return check

    def unregister(self, name: str) -> Check:
        """Remove the check called `name` and return it.

        Raises:
            UserError: no check has that name.
        """
        try:
            return self._checks.pop(name)
        except KeyError:
            known = ", ".join(self._checks) or "none"
            raise UserError(f"No check named {name!r} is registered (registered: {known}).") from None

    def get(self, name: str) -> Check | None:
        """The check called `name`, or `None`."""
        return self._checks.get(name)

    def checks(self, kind: CheckKind | None = None) -> list[Check]:
        """The registered checks a probe of `kind` runs (`None`: all), in registration order."""
        _validate_kind(kind)
        return [check for check in self._checks.values() if check.applies_to(kind)]

    def names(self) -> list[str]:
        """Every registered check's name, in registration order."""
        return list(self._checks)

    def copy(self) -> CheckRegistry:
        """A new registry with the same checks, to extend without touching this one."""
        return CheckRegistry(self._checks.values())

    def __contains__(self, name: object) -> bool:
        return name in self._checks

    def __iter__(self) -> Iterator[Check]:
        return iter(list(self._checks.values()))

    def __len__(self) -> int:
        return len(self._checks)

    def __repr__(self) -> str:
        return f"CheckRegistry({self.names()!r})"


def builtin_checks() -> list[Check]:
    """The checks miniagent ships, as `default_registry` holds them.

    The default model, the database and its migration level, Redis (when configured), the job queue, the data dir,
    disk space, SQLite extension loading, versions.
    """
    return [
        model_check(),
        database_check(),
        redis_check(),
        queue_check(),
        data_dir_check(),
        disk_space_check(),
        sqlite_extension_check(),
        versions_check(),
    ]


default_registry = CheckRegistry(builtin_checks())
"""The process's checks: the built-in ones, plus whatever `register_check` adds."""


def register_check(check: Check, *, replace: bool = False) -> Check:
    """Add `check` to `default_registry` (what `miniagent doctor` and the server's probes run); returns it.

    Raises:
        UserError: a check of that name is registered and `replace` is false.
    """
    return default_registry.register(check, replace=replace)


def unregister_check(name: str) -> Check:
    """Remove the check called `name` from `default_registry` and return it.

    Raises:
        UserError: no check has that name.
    """
    return default_registry.unregister(name)


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """One check's result in a report, with what the report needs to know about the check."""

    name: str
    """The check's name."""
    kind: CheckKind
    """Its probe: `liveness`, `readiness` or `both`."""
    critical: bool
    """Whether its failure fails the report."""
    result: CheckResult
    """What it found."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: name, kind, critical, status, detail, fix, duration_s."""
        return {
            "name": self.name,
            "kind": self.kind,
            "critical": self.critical,
            "status": self.result.status,
            "detail": self.result.detail,
            "fix": self.result.fix,
            "duration_s": round(self.result.duration_s, 6),
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Every check's outcome, and what they add up to."""

    outcomes: tuple[CheckOutcome, ...]
    """One per check run, in registration order."""

    @property
    def ok(self) -> bool:
        """No critical check failed: the process is live (or ready, for a readiness run)."""
        return not any(o.critical and o.result.status == "fail" for o in self.outcomes)

    @property
    def status(self) -> CheckStatus:
        """`fail` when a critical check failed, `warn` when some check warned or a non-critical one failed, else
        `ok` (a report of only skipped checks is `ok`).
        """  # noqa: D205
        if not self.ok:
            return "fail"
        if any(o.result.status in ("warn", "fail") for o in self.outcomes):
            return "warn"
        return "ok"

    def get(self, name: str) -> CheckOutcome | None:
        """The outcome of the check called `name`, or `None`."""
        return next((o for o in self.outcomes if o.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: `{"status", "ok", "checks": [...]}` (the body of `/healthz` and `/readyz`)."""
        return {"status": self.status, "ok": self.ok, "checks": [o.as_dict() for o in self.outcomes]}

    def to_json(self, *, indent: int | None = None) -> str:
        """`as_dict()` as JSON text."""
        return json.dumps(self.as_dict(), indent=indent)


def _validate_kind(kind: object) -> None:
    if kind is not None and kind not in CHECK_KINDS:
        raise UserError(f"`kind` must be one of {', '.join(CHECK_KINDS)} or None, got {kind!r}.")


async def _run_one(check: Check, settings: Settings, timeout_s: float, clock: Callable[[], float]) -> CheckResult:
    import anyio

    start = clock()
    limit = check.timeout_s if check.timeout_s is not None else timeout_s
    result: CheckResult
    try:
        value: object = None
        with anyio.move_on_after(limit) as scope:
            value = await check.run(settings)
        if scope.cancelled_caught:
            result = CheckResult(
                "fail",
                f"did not answer within {limit:g} s",
                fix="find what this dependency is waiting for (network, lock, server), or raise the check's timeout",
            )
        elif isinstance(value, CheckResult):
            result = value
        else:
            result = CheckResult(
                "fail", f"the check returned {type(value).__name__}, not a CheckResult", fix="fix the check's code"
            )
    except Exception as exc:
        result = CheckResult("fail", f"the check raised {type(exc).__name__}: {exc}")
    detail = scrub(result.detail)
    fix = scrub(result.fix) if result.fix is not None else None
    return dataclasses.replace(result, detail=detail, fix=fix, duration_s=max(0.0, clock() - start))


async def run_checks(
    settings: Settings | None = None,
    *,
    kind: CheckKind | None = None,
    registry: CheckRegistry | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    clock: Callable[[], float] = time.perf_counter,
) -> HealthReport:
    """Run the checks concurrently, each under its own timeout, and report.

    A check that does not answer in time is a `fail` ("did not answer within N s"), and one that raises is a
    `fail` with the error: the report always comes back. Details and fixes are scrubbed of secrets.

    Args:
        settings: The configuration to check; `None` reads the environment now.
        kind: Run only `liveness` or `readiness` checks (and those of kind `both`); `None` runs every check.
        registry: The checks; default `default_registry`.
        timeout_s: The timeout of a check that sets none, in seconds.
        clock: Measures each check's duration (seconds, monotonic).

    Raises:
        UserError: `kind` is not a probe kind, or `timeout_s` is not a positive number.
    """
    import anyio

    _validate_kind(kind)
    if not is_positive_seconds(timeout_s):
        raise UserError(f"`timeout_s` must be a positive number of seconds, got {timeout_s!r}.")
    if registry is None:
        registry = default_registry
    elif not isinstance(registry, CheckRegistry):
        raise UserError(f"`registry` must be a CheckRegistry, got {type(registry).__name__}.")
    if settings is None:
        from ..settings import get_settings

        settings = get_settings()
    checks = registry.checks(kind)
    results: list[CheckResult | None] = [None] * len(checks)

    async def run(index: int, check: Check) -> None:
        results[index] = await _run_one(check, settings, float(timeout_s), clock)

    async with anyio.create_task_group() as group:
        for index, check in enumerate(checks):
            group.start_soon(run, index, check, name=f"health check {check.name}")
    outcomes = tuple(
        CheckOutcome(check.name, check.kind, check.critical, result)
        for check, result in zip(checks, results, strict=True)
        if result is not None
    )
    return HealthReport(outcomes)
