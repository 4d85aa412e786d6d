"""The `miniagent` command line.

`chat`, `serve`, `worker`, `keys`, `models`, `migrate`, `prune`, `profile`, `doctor`, `dlq`, `usage`, `--version`.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from .._version import __version__
from ._dlq import dlq_app
from ._keys import keys_app
from ._usage import usage

if TYPE_CHECKING:
    from ..store import SQLStore, UserProfile

__all__ = ["app", "main"]

_T = TypeVar("_T")

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
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            "-r",
            help="Continue a stored conversation: a thread id, or 'latest'. `/threads` lists them.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics while the chat runs.",
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", help="Log each run's events to stderr as 'json' lines or a pretty 'console'."),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option("--log-level", help="Level of those logs: DEBUG, INFO, WARNING or ERROR (default INFO)."),
    ] = None,
) -> None:
    """Chat in the terminal, streaming the answer; conversations are kept in the store.

    /reset starts a new conversation, /threads lists them, /branch lists or switches branches, /exit quits,
    Ctrl-C stops a generation.
    """
    from ._chat import run_chat

    code = run_chat(
        model=model,
        agent_path=agent,
        instructions=instructions,
        demo_tools=demo_tools,
        debug=debug,
        resume=resume,
        metrics_port=metrics_port,
        log_format=log_format,
        log_level=log_level,
    )
    raise typer.Exit(code)


@app.command()
def worker(
    agents: Annotated[
        list[str] | None,
        typer.Argument(
            help="Agents to run: 'package.module:attribute' (or 'name=package.module:attribute'), as for `serve`; "
            "default: MINIAGENT_SERVER_AGENTS, else the default chat agent."
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-n", min=1, help="Runs at once (default: MINIAGENT_WORKER_CONCURRENCY)."),
    ] = None,
    tenant_cap: Annotated[
        int | None,
        typer.Option("--tenant-cap", min=1, help="Runs of one tenant at once (fair scheduling; default: half)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="A TOML file with an [agents] table: name = 'module:attr'.")
    ] = None,
    grace: Annotated[
        float, typer.Option("--grace", min=0, help="Seconds running runs get to finish on SIGTERM before hand-back.")
    ] = 30.0,
) -> None:
    """Execute background runs from the job queue (MINIAGENT_QUEUE_URL) until SIGTERM or Ctrl-C."""
    from ._worker import run_worker

    raise typer.Exit(
        run_worker(agents=agents or [], config=config, concurrency=concurrency, tenant_cap=tenant_cap, grace_s=grace)
    )


@app.command()
def serve(
    agents: Annotated[
        list[str] | None,
        typer.Argument(
            help="Agents to serve: 'package.module:attribute' (or 'name=package.module:attribute'); "
            "default: MINIAGENT_SERVER_AGENTS, else the default chat agent."
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker processes.")] = 1,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="A TOML file with an [agents] table: name = 'module:attr'.")
    ] = None,
    reload: Annotated[bool, typer.Option("--reload", help="Restart when the code changes (development).")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "info",
    graceful_timeout: Annotated[
        float, typer.Option("--graceful-timeout", min=0, help="Seconds in-flight requests get to finish on SIGTERM.")
    ] = 30.0,
) -> None:
    """Serve agents over HTTP: the OpenAI API (/v1), the native API (/api/v1), /docs, /healthz, /readyz, /metrics.

    Requests need an API key (`miniagent keys create`) or a JWT of the configured issuer.
    """
    from ._serve import run_serve

    raise typer.Exit(
        run_serve(
            agents=agents or [],
            host=host,
            port=port,
            workers=workers,
            config=config,
            reload=reload,
            log_level=log_level,
            graceful_timeout_s=graceful_timeout,
        )
    )


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="The revision to upgrade to.")] = "head",
) -> None:
    """Create or upgrade the store's schema (MINIAGENT_DATABASE_URL, else the SQLite file in the data dir)."""
    import anyio

    from ..errors import MiniAgentError
    from ..store import SQLStore

    async def go() -> str | None:
        store = await SQLStore.open(migrate=False)
        try:
            return await store.migrate(revision)
        finally:
            await store.close()

    try:
        current = anyio.run(go)
    except MiniAgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"store at revision {current or revision}")


@app.command()
def prune() -> None:
    """Delete threads idle for longer than their retention (thread, tenant, or MINIAGENT_RETENTION_DAYS)."""
    import anyio

    from ..errors import MiniAgentError
    from ..store import PruneReport, SQLStore

    async def go() -> PruneReport:
        store = await SQLStore.open()
        try:
            return await store.prune()
        finally:
            await store.close()

    try:
        report = anyio.run(go)
    except MiniAgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"pruned {report.threads} thread(s)")


profile_app = typer.Typer(
    name="profile",
    help="A user's profile: preferences and custom instructions added to the system prompt of their conversations.",
    no_args_is_help=True,
)
app.add_typer(profile_app)
app.add_typer(dlq_app)  # `miniagent dlq list|show|replay|purge` (cli/_dlq.py)
app.command("usage")(usage)  # `miniagent usage` (cli/_usage.py)
app.add_typer(keys_app)  # `miniagent keys create|list|revoke` (cli/_keys.py)

_UserOption = Annotated[
    str, typer.Option("--user", "-u", help="Whose profile (default: the user of `miniagent chat`).")
]


def _with_store(action: Callable[[SQLStore], Awaitable[_T]]) -> _T:
    """Run `action` on the configured store; a store error is printed and exits with status 1."""
    import anyio

    from ..errors import MiniAgentError
    from ..store import SQLStore

    async def go() -> _T:
        store = await SQLStore.open()
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return anyio.run(go)
    except MiniAgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _show(profile: UserProfile | None) -> None:
    text = profile.prompt() if profile is not None else None
    typer.echo(
        text if text is not None else "(no profile: `miniagent profile set KEY VALUE` or `... instructions TEXT`)"
    )


@profile_app.command("show")
def profile_show(user: _UserOption = "default") -> None:
    """Print the profile as the model sees it."""
    _show(_with_store(lambda store: store.get_profile(user_id=user)))


@profile_app.command("set")
def profile_set(
    key: Annotated[str, typer.Argument(help="A preference: tone, language, units, or any name.")],
    value: Annotated[str, typer.Argument(help="Its value, e.g. 'concise', 'French', 'metric'.")],
    user: _UserOption = "default",
) -> None:
    """Set one preference."""
    _show(_with_store(lambda store: store.update_profile(user_id=user, preferences={key: value})))


@profile_app.command("unset")
def profile_unset(
    key: Annotated[str, typer.Argument(help="The preference to remove.")], user: _UserOption = "default"
) -> None:
    """Remove one preference."""
    _show(_with_store(lambda store: store.update_profile(user_id=user, preferences={key: None})))


@profile_app.command("instructions")
def profile_instructions(
    text: Annotated[str, typer.Argument(help="Custom instructions; an empty string removes them.")],
    user: _UserOption = "default",
) -> None:
    """Set the custom instructions."""
    _show(_with_store(lambda store: store.update_profile(user_id=user, instructions=text or None)))


@profile_app.command("clear")
def profile_clear(user: _UserOption = "default") -> None:
    """Delete the whole profile."""
    existed = _with_store(lambda store: store.delete_profile(user_id=user))
    typer.echo("profile deleted" if existed else "(no profile)")


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


@app.command()
def doctor(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Also check this model (repeatable): 'openai:gpt-4o-mini', "
            "'openai-compatible:http://host:port/v1#name', 'anthropic:...', 'local'. "
            "The default model is always checked.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
    readiness: Annotated[
        bool, typer.Option("--readiness", help="Run only the readiness checks (what the server's /readyz runs).")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds to wait for each check before it fails.")
    ] = 10.0,
) -> None:
    """Check every configured dependency (models, database and migrations, disk, local model, SQLite extensions).

    Prints each check with its status and how to fix it; exits 1 when a critical check failed, else 0.
    """
    from ._doctor import run_doctor

    raise typer.Exit(run_doctor(models=model or [], as_json=as_json, readiness=readiness, timeout_s=timeout))


def main() -> None:
    """Entry point of the `miniagent` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
