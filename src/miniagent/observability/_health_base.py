"""The vocabulary of health checks: a `Check` (what to ask) and a `CheckResult` (what it answered).

Kept apart from the registry and the runner (`_health`) so the built-in checks (`_health_system`, `_health_models`)
can be written against these types without importing the registry that collects them.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias, get_args

from ..errors import UserError

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "CHECK_KINDS",
    "CHECK_STATUSES",
    "Check",
    "CheckFunction",
    "CheckKind",
    "CheckResult",
    "CheckStatus",
    "is_nonempty_text",
    "is_positive_seconds",
    "scrub",
]

CheckStatus: TypeAlias = Literal["ok", "warn", "fail", "skip"]
"""What a check found: fine, works but needs attention, broken, or does not apply to this configuration."""
CheckKind: TypeAlias = Literal["liveness", "readiness", "both"]
"""Which probe a check belongs to: `liveness` (`/healthz`: is the process itself sound), `readiness` (`/readyz`:
can it serve, are its dependencies there), or `both`."""

CHECK_STATUSES: tuple[CheckStatus, ...] = get_args(CheckStatus)
"""Every `CheckStatus`, best first."""
CHECK_KINDS: tuple[CheckKind, ...] = get_args(CheckKind)
"""Every `CheckKind`."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one check found.

    Example:
        ```python
        from miniagent.observability import CheckResult

        result = CheckResult("warn", "only 800 MiB free", fix="free some space")
        assert result.status == "warn"
        ```
    """

    status: CheckStatus
    """`ok`, `warn`, `fail` or `skip` (the check does not apply to this configuration; `detail` says why)."""
    detail: str
    """One line for an operator: what was found (never a secret)."""
    _: KW_ONLY
    fix: str | None = None
    """What to do about a `warn` or `fail`, e.g. "run `miniagent migrate`"."""
    duration_s: float = 0.0
    """How long the check took, in seconds (filled in by the runner)."""

    def __post_init__(self) -> None:
        if self.status not in CHECK_STATUSES:
            raise UserError(f"`status` must be one of {', '.join(CHECK_STATUSES)}, got {self.status!r}.")
        if not isinstance(self.detail, str):
            raise UserError(f"`detail` must be a string describing what was found, got {type(self.detail).__name__}.")
        if self.fix is not None and not isinstance(self.fix, str):
            raise UserError(f"`fix` must be a string or None, got {type(self.fix).__name__}.")


CheckFunction: TypeAlias = "Callable[[Settings], Awaitable[CheckResult]]"
"""The body of a check: an async function of the settings that returns a `CheckResult`.

It must not block the event loop: blocking work (files, sockets, C libraries) goes to a worker thread, e.g.
`anyio.to_thread.run_sync(fn, abandon_on_cancel=True)`, so the check's timeout can always stop waiting for it.
"""


@dataclass(frozen=True, slots=True)
class Check:
    """A named health check: an async function of the settings, run by `run_checks` under its own timeout.

    Example:
        ```python
        from miniagent.observability import Check, CheckRegistry, CheckResult
        from miniagent.settings import Settings


        async def queue_depth(settings: Settings) -> CheckResult:
            return CheckResult("ok", "12 messages waiting")


        registry = CheckRegistry([Check("queue", queue_depth, kind="readiness", critical=False)])
        assert registry.names() == ["queue"]
        ```
    """

    name: str
    """Unique within a registry; shown in the first column of `miniagent doctor`."""
    run: CheckFunction
    """The check itself."""
    _: KW_ONLY
    kind: CheckKind = "readiness"
    """`liveness`, `readiness` or `both`: which probes run it."""
    critical: bool = True
    """Whether a `fail` makes the whole report fail (not ready, `miniagent doctor` exits 1); a non-critical
    `fail` only degrades it."""
    timeout_s: float | None = None
    """Longest wait for an answer, in seconds; `None` uses the runner's `timeout_s`."""
    description: str = ""
    """One line saying what the check verifies."""

    def __post_init__(self) -> None:
        if not is_nonempty_text(self.name):
            raise UserError(f"A check needs a non-empty `name`, got {self.name!r}.")
        if not callable(self.run):
            raise UserError(f"Check {self.name!r}: `run` must be an async function of the settings.")
        if self.kind not in CHECK_KINDS:
            raise UserError(f"Check {self.name!r}: `kind` must be one of {', '.join(CHECK_KINDS)}, got {self.kind!r}.")
        if self.timeout_s is not None and not is_positive_seconds(self.timeout_s):
            raise UserError(
                f"Check {self.name!r}: `timeout_s` must be a positive number of seconds or None, "
                f"got {self.timeout_s!r}."
            )

    def applies_to(self, kind: CheckKind | None) -> bool:
        """Whether a probe of `kind` runs this check (`None`: every check runs)."""
        return kind is None or self.kind == "both" or self.kind == kind


def is_positive_seconds(value: object) -> bool:
    """Whether `value` is a finite positive number (not a bool): a valid timeout in seconds."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def is_nonempty_text(value: object) -> bool:
    """Whether `value` is a string with something besides whitespace."""
    return isinstance(value, str) and bool(value.strip())


# ---- redaction ---------------------------------------------------------------------------------------------


def scrub(text: str, *, secrets: Iterable[str] = ()) -> str:
    """`text` with secrets replaced by `[REDACTED]`, through the observability redactor.

    Hidden are: the secrets given to `configure`, the values of secret-looking environment variables as they are
    now (a key exported after start-up included), the given `secrets`, and every pattern the redactor knows
    (bearer tokens, `sk-...` keys, passwords in URLs...). Every detail and fix a check returns passes through here
    before anyone sees it.
    """
    from ._redact import Redactor, default_redactor, secret_values_from_env

    return default_redactor().redact(Redactor([*secret_values_from_env(), *secrets]).redact(text))
