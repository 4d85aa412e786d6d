"""`miniagent dlq list|show|replay|purge`: the runs that failed for good, kept in the store's dead-letter table."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..store import DeadLetter, SQLStore

__all__ = ["dlq_app"]

dlq_app = typer.Typer(
    name="dlq",
    help="Dead letters: runs that failed for good (retries, breakers and fallbacks exhausted). List, inspect, replay, "
    "purge them.",
    no_args_is_help=True,
)

_Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
_Id = Annotated[str, typer.Argument(help="A dead letter's id, as `miniagent dlq list` shows it.")]


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _when(letter_time: Any) -> str:
    return str(letter_time.strftime("%Y-%m-%d %H:%M:%S")) if letter_time is not None else "-"


def _summary(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "run_id": letter.run_id,
        "thread_id": letter.thread_id,
        "user_id": letter.user_id,
        "agent_name": letter.agent_name,
        "prompt": letter.prompt,
        "error": letter.error,
        "correlation_id": letter.correlation_id,
        "created_at": letter.created_at.isoformat(),
        "replay_of": letter.replay_of,
        "replayed_at": letter.replayed_at.isoformat() if letter.replayed_at else None,
        "replayed_run_id": letter.replayed_run_id,
    }


def _full(letter: DeadLetter) -> dict[str, Any]:
    from ..messages import messages_to_json

    return {
        **_summary(letter),
        "error_chain": [link.to_json() for link in letter.error_chain],
        "meta": letter.meta,
        "messages": json.loads(messages_to_json(letter.messages)),
    }


@dlq_app.command("list")
def dlq_list(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000, help="How many, newest first.")] = 50,
    as_json: _Json = False,
) -> None:
    """List the dead letters, newest first."""
    from rich.table import Table

    from . import _with_store

    letters = _with_store(lambda store: store.list_dead_letters(limit=limit))
    if as_json:
        typer.echo(json.dumps([_summary(letter) for letter in letters], indent=2))
        return
    if not letters:
        typer.echo("(no dead letters)")
        return
    table = Table("id", "failed at (UTC)", "user", "agent", "error", "replayed as")
    for letter in letters:
        table.add_row(
            letter.id,
            _when(letter.created_at),
            letter.user_id,
            letter.agent_name or "-",
            letter.error[:80],
            letter.replayed_run_id or "-",
        )
    _console().print(table)


def _message_lines(letter: DeadLetter) -> list[str]:
    from ..messages import ModelRequest, ModelResponse, SystemPromptPart, TextPart, ToolCallPart, UserPromptPart

    lines: list[str] = []
    for message in letter.messages:
        for part in message.parts:
            if isinstance(message, ModelRequest) and isinstance(part, SystemPromptPart):
                lines.append(f"system: {part.content[:200]}")
            elif isinstance(part, UserPromptPart):
                lines.append(f"user: {part.content[:200]}")
            elif isinstance(message, ModelResponse) and isinstance(part, TextPart):
                lines.append(f"assistant: {part.content[:200]}")
            elif isinstance(part, ToolCallPart):
                lines.append(f"tool call: {part.tool_name}")
            else:
                lines.append(f"{part.kind}")
    return lines


def _panel(letter: DeadLetter) -> RenderableType:
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    facts = [
        ("run", letter.run_id),
        ("thread", letter.thread_id or "-"),
        ("user", letter.user_id),
        ("agent", letter.agent_name or "-"),
        ("correlation id", letter.correlation_id or "-"),
        ("failed at (UTC)", _when(letter.created_at)),
        ("replay of", f"dead letter {letter.replay_of}" if letter.replay_of else "-"),
        (
            "replayed",
            f"as run {letter.replayed_run_id} at {_when(letter.replayed_at)}" if letter.replayed_run_id else "never",
        ),
    ]
    head = Text()
    for name, value in facts:
        head.append(f"{name}: ", style="bold")
        head.append(f"{value}\n")
    chain = Text()
    for i, link in enumerate(letter.error_chain, start=1):
        chain.append(f"{i}. {link.relation}: ", style="bold")
        chain.append(f"{link.type}: {link.message}\n", style="red")
        details = {k: v for k, v in link.to_json().items() if k not in ("type", "message", "relation")}
        if details:
            chain.append("   " + ", ".join(f"{k}={v}" for k, v in details.items()) + "\n", style="dim")
    chain.rstrip()
    lines = _message_lines(letter)
    history = Text("\n".join(lines[-20:]) if lines else "(empty)")
    if len(lines) > 20:
        history = Text(f"... {len(lines) - 20} earlier part(s)\n").append(history)
    return Panel(
        Group(
            head,
            Panel(history, title=f"input ({len(letter.messages)} message(s))", title_align="left"),
            Panel(chain, title="error chain", title_align="left"),
        ),
        title=f"dead letter {letter.id}",
        title_align="left",
    )


@dlq_app.command("show")
def dlq_show(dead_letter_id: _Id, as_json: _Json = False) -> None:
    """Show one dead letter: its input, error chain, correlation id and links."""
    from . import _with_store

    letter = _with_store(lambda store: store.get_dead_letter(dead_letter_id))
    if as_json:
        typer.echo(json.dumps(_full(letter), indent=2, default=str))
        return
    _console().print(_panel(letter))


@dlq_app.command("replay")
def dlq_replay(
    dead_letter_id: _Id,
    agent: Annotated[
        str | None,
        typer.Option("--agent", "-a", help="The agent to run it with: 'package.module:attribute'."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="A model for this run (default: the agent's, or MINIAGENT_DEFAULT_MODEL)."),
    ] = None,
) -> None:
    """Run a dead letter again (same user and thread); the new run is linked to the failed one."""
    from ..errors import RunError
    from ..store import replay_dead_letter
    from . import _with_store

    chosen = None
    if agent is not None:
        from ..errors import UserError
        from ._chat import load_agent

        try:
            chosen = load_agent(agent)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    async def replay(store: SQLStore) -> tuple[str | None, str, Any]:
        try:
            result = await replay_dead_letter(store, dead_letter_id, chosen, model=model)
        except RunError as exc:
            newer = [d for d in await store.list_dead_letters(limit=20) if d.replay_of == dead_letter_id]
            return None, f"{type(exc).__name__}: {exc}", newer[:1]
        return result.run_id, result.thread_id or "-", result.output

    run_id, detail, payload = _with_store(replay)
    if run_id is None:
        typer.echo(f"replay failed: {detail}", err=True)
        if isinstance(payload, list) and payload:
            typer.echo(f"new dead letter: {payload[0].id} (replay of {dead_letter_id})", err=True)
        raise typer.Exit(1)
    typer.echo(f"replayed as run {run_id} (thread {detail})")
    typer.echo(str(payload))


@dlq_app.command("purge")
def dlq_purge(
    ids: Annotated[list[str] | None, typer.Argument(help="Dead letter ids to delete.", show_default=False)] = None,
    older_than: Annotated[
        float | None, typer.Option("--older-than", min=0, help="Delete those older than this many days.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete dead letters: by id, or all those older than some days."""
    from . import _with_store

    if (older_than is None) == (not ids):
        typer.echo("error: pass dead letter ids or --older-than DAYS (one of the two).", err=True)
        raise typer.Exit(2)
    if ids:
        wanted = list(dict.fromkeys(ids))

        async def check(store: SQLStore) -> None:
            for dead_letter_id in wanted:
                await store.get_dead_letter(dead_letter_id)  # unknown: DeadLetterNotFound, printed, exit 1

        _with_store(check)
        question = f"Delete {len(wanted)} dead letter(s)?"
    else:
        question = f"Delete every dead letter older than {older_than:g} day(s)?"
    if not yes and not typer.confirm(question):
        typer.echo("aborted: nothing deleted")
        raise typer.Exit(1)
    if ids:
        count = _with_store(lambda store: store.purge_dead_letters(ids=wanted))
    else:
        count = _with_store(lambda store: store.purge_dead_letters(older_than_days=older_than))
    typer.echo(f"purged {count} dead letter(s)")
