"""The `miniagent` command line: `miniagent chat`, `miniagent models`, `miniagent --version`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .._version import __version__

__all__ = ["app", "main"]

app = typer.Typer(
    name="miniagent",
    help="Typed LLM agents that survive production. `miniagent chat` talks to the bundled offline model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"miniagent {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Typed LLM agents that survive production."""


@app.command()
def chat(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model to chat with: 'local' (bundled, offline), 'openai:gpt-4o-mini', "
            "'openai-compatible:http://host:port/v1#name', 'test'. Default: MINIAGENT_DEFAULT_MODEL or 'local'.",
        ),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option("--agent", "-a", help="Chat with your own agent: 'package.module:attribute'."),
    ] = None,
    instructions: Annotated[
        str | None, typer.Option("--instructions", "-i", help="System prompt (ignored with --agent).")
    ] = None,
    demo_tools: Annotated[
        bool, typer.Option("--demo-tools", help="Give the agent two demo tools (current time, calculator).")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """Chat in the terminal, streaming the answer. /reset starts over, /exit quits, Ctrl-C stops a generation."""
    from ._chat import run_chat

    code = run_chat(model=model, agent_path=agent, instructions=instructions, demo_tools=demo_tools, debug=debug)
    raise typer.Exit(code)


@app.command()
def models() -> None:
    """List the model providers that are registered (built-in and plugins)."""
    from rich.console import Console
    from rich.table import Table

    from ..models import registry
    from ..settings import get_settings

    table = Table("provider", "extra", "description")
    for entry in registry.entries(get_settings()):
        table.add_row(entry.prefix, entry.extra or "-", entry.description)
    Console().print(table)


def main() -> None:
    """Entry point of the `miniagent` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
