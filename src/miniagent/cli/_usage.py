"""`miniagent usage`: tokens and cost of the model responses in the store, by day, model, user or thread."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

if TYPE_CHECKING:
    from ..store import UsageGroup, UsageRow

__all__ = ["format_cost", "usage"]


def format_cost(row: UsageRow) -> str:
    """The cost of a report row: dollars, `unknown` when no price is known, or both when some are missing."""
    if row.unpriced_requests == 0:
        return f"${row.priced_cost_usd:,.6f}"
    if row.unpriced_requests == row.requests:
        return "unknown"
    return f"${row.priced_cost_usd:,.6f} + unknown ({row.unpriced_requests} unpriced)"


def _date(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date: use YYYY-MM-DD, e.g. 2025-01-31.", param_hint=option
        ) from None


def _total(rows: list[UsageRow]) -> UsageRow:
    from ..store import UsageRow

    return UsageRow(
        requests=sum(r.requests for r in rows),
        input_tokens=sum(r.input_tokens for r in rows),
        output_tokens=sum(r.output_tokens for r in rows),
        cache_read_tokens=sum(r.cache_read_tokens for r in rows),
        reasoning_tokens=sum(r.reasoning_tokens for r in rows),
        priced_cost_usd=sum(r.priced_cost_usd for r in rows),
        unpriced_requests=sum(r.unpriced_requests for r in rows),
    )


def _json_row(row: UsageRow, groups: list[str]) -> dict[str, Any]:
    keys = {"day": row.day.isoformat() if row.day else None, "model": row.model, "user": row.user_id}
    keys["thread"] = row.thread_id
    return {
        **{g: keys[g] for g in groups},
        "requests": row.requests,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cache_read_tokens": row.cache_read_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "cost_usd": row.cost_usd,
        "priced_cost_usd": row.priced_cost_usd,
        "unpriced_requests": row.unpriced_requests,
    }


def usage(
    since: Annotated[str | None, typer.Option("--since", help="From this day (UTC), YYYY-MM-DD.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Up to this day (UTC, included), YYYY-MM-DD.")] = None,
    by: Annotated[
        str, typer.Option("--by", help="Group by any of day, model, user, thread (comma-separated, in column order).")
    ] = "day,model,user",
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's usage.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print what the model responses consumed and cost (from the price table); unknown prices show as unknown."""
    from rich.console import Console
    from rich.table import Table

    from ..store import USAGE_GROUPS
    from . import _with_store

    start, stop = _date(since, "--since"), _date(until, "--until")
    if start is not None and stop is not None and start > stop:
        raise typer.BadParameter(f"--since {since} is after --until {until}.", param_hint="--since")
    groups = [g.strip() for g in by.split(",") if g.strip()]
    unknown = [g for g in groups if g not in USAGE_GROUPS]
    if unknown or not groups:
        raise typer.BadParameter(
            f"cannot group by {', '.join(unknown) or 'nothing'}: choose among {', '.join(USAGE_GROUPS)}.",
            param_hint="--by",
        )
    chosen = cast("list[UsageGroup]", list(dict.fromkeys(groups)))
    rows = _with_store(lambda store: store.usage_report(group_by=chosen, since=start, until=stop, user_id=user))
    total = _total(rows)
    if as_json:
        typer.echo(json.dumps({"rows": [_json_row(r, groups) for r in rows], "total": _json_row(total, [])}, indent=2))
        return
    if not rows:
        typer.echo("(no usage recorded in this range)")
        return
    groups = list(chosen)
    table = Table(*groups, "requests", "input", "output", "cached", "reasoning", "cost (USD)", show_footer=True)
    names = {"day": "day", "model": "model", "user": "user_id", "thread": "thread_id"}
    for row in rows:
        cells = [str(getattr(row, names[g]) or "-") for g in groups]
        table.add_row(
            *cells,
            f"{row.requests:,}",
            f"{row.input_tokens:,}",
            f"{row.output_tokens:,}",
            f"{row.cache_read_tokens:,}",
            f"{row.reasoning_tokens:,}",
            format_cost(row),
        )
    footers = ["total", *[""] * (len(groups) - 1)]
    footers += [f"{total.requests:,}", f"{total.input_tokens:,}", f"{total.output_tokens:,}"]
    footers += [f"{total.cache_read_tokens:,}", f"{total.reasoning_tokens:,}", format_cost(total)]
    for column, footer in zip(table.columns, footers, strict=True):
        column.footer = footer
    Console(highlight=False).print(table)
