"""`miniagent doctor`: run the health checks and print what is wrong and how to fix it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..observability._health import CheckRegistry, HealthReport

__all__ = ["doctor_registry", "run_doctor"]

_STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def doctor_registry(models: Sequence[str]) -> CheckRegistry:
    """The default registry plus one model check per extra model string (duplicates of the default kept once)."""
    from ..errors import UserError
    from ..observability._health import default_registry, model_check
    from ..settings import get_settings

    registry = default_registry.copy()
    default = get_settings().default_model.strip()
    for spec in dict.fromkeys(spec.strip() for spec in models):
        if not spec:
            raise UserError("`--model` needs a model string, e.g. --model openai:gpt-4o-mini.")
        if spec == default and "default model" in registry:
            continue
        check = model_check(spec)
        registry.register(check, replace=True)
    return registry


def _print_table(report: HealthReport, *, readiness: bool) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="miniagent doctor" + (" (readiness)" if readiness else ""), show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for outcome in report.outcomes:
        status = outcome.result.status
        label = status if outcome.critical or status != "fail" else "fail (non-critical)"
        table.add_row(
            outcome.name,
            Text(label, style=_STYLES[status]),
            outcome.result.detail,
            outcome.result.fix or "",
        )
    console = Console()
    console.print(table)
    counts = {status: sum(o.result.status == status for o in report.outcomes) for status in _STYLES}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    verdict = "all critical checks passed" if report.ok else "a critical check failed"
    console.print(Text(f"{verdict} ({summary})", style=_STYLES[report.status]))


def run_doctor(*, models: Sequence[str] = (), as_json: bool = False, readiness: bool = False, timeout_s: float) -> int:
    """Run the checks and print them; returns the exit status: 0 when no critical check failed, else 1."""
    import anyio

    from ..errors import MiniAgentError
    from ..observability._health import run_checks

    try:
        registry = doctor_registry(models)
        report = anyio.run(
            lambda: run_checks(kind="readiness" if readiness else None, registry=registry, timeout_s=timeout_s)
        )
    except MiniAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(report.to_json(indent=2))
    else:
        _print_table(report, readiness=readiness)
    return 0 if report.ok else 1
