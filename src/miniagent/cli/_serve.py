"""`miniagent serve`: the agents as an HTTP service under uvicorn (the OpenAI API at `/v1`, the native API at
`/api/v1`, probes at `/healthz` and `/readyz`, metrics at `/metrics`).

The agents and the config file are handed to the app through the environment (`MINIAGENT_SERVER_AGENTS`,
`MINIAGENT_SERVER_CONFIG`), so every worker process of `--workers N` builds the same app from
`miniagent.server._app:serve_factory`.
"""  # noqa: D205

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import typer

__all__ = ["run_serve"]

_FACTORY = "miniagent.server._app:serve_factory"


def _check_extra() -> None:
    missing = [name for name in ("fastapi", "uvicorn", "jwt") if importlib.util.find_spec(name) is None]
    if missing:
        typer.echo(
            f"error: `miniagent serve` needs the `server` extra ({', '.join(missing)} not installed): "
            "pip install 'miniagent[server]'",
            err=True,
        )
        raise typer.Exit(1)


def run_serve(
    *,
    agents: list[str],
    host: str,
    port: int,
    workers: int,
    config: Path | None,
    reload: bool,
    log_level: str,
    graceful_timeout_s: float,
) -> int:
    """Check the configuration by building the app once, then serve it; returns the exit status."""
    _check_extra()
    if workers > 1 and reload:
        typer.echo("error: --reload and --workers > 1 do not go together; drop one of them.", err=True)
        return 2
    if config is not None and not config.is_file():
        typer.echo(f"error: the config file {str(config)!r} does not exist.", err=True)
        return 2
    if "" not in sys.path and os.getcwd() not in sys.path:  # `myapp.agents:agent` from the project directory
        sys.path.insert(0, os.getcwd())

    from ..errors import MiniAgentError
    from ..settings import get_settings

    overrides: dict[str, object] = {}
    if agents:
        overrides["server_agents"] = ",".join(agents)
    if config is not None:
        overrides["server_config"] = config.resolve()
    settings = get_settings().model_copy(update=overrides)
    if workers > 1 and settings.metrics_port is not None:
        typer.echo(
            "error: MINIAGENT_METRICS_PORT serves one process's metrics: with --workers > 1 scrape each worker's "
            "/metrics through the API port instead (unset MINIAGENT_METRICS_PORT).",
            err=True,
        )
        return 2
    try:
        from ..server._app import build_app

        app = build_app(settings, observability=True)  # fails fast: bad agent paths, missing pepper, bad JWT settings
    except MiniAgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    import uvicorn

    names = ", ".join(app.state.miniagent.agents.names())
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"miniagent serving {names} on http://{shown}:{port} (docs: /docs)", err=True)
    options: dict[str, object] = {
        "host": host,
        "port": port,
        "log_level": log_level.lower(),
        "access_log": False,  # the app logs one structured line per request
        "timeout_graceful_shutdown": graceful_timeout_s,
        "ws": "websockets-sansio",
        "proxy_headers": True,
    }
    if workers > 1 or reload:
        del app  # each worker process builds its own, from the environment
        if agents:
            os.environ["MINIAGENT_SERVER_AGENTS"] = ",".join(agents)
        if config is not None:
            os.environ["MINIAGENT_SERVER_CONFIG"] = str(config.resolve())
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
        uvicorn.run(_FACTORY, factory=True, workers=workers, reload=reload, **options)  # type: ignore[arg-type]
    else:
        app.state.miniagent.extras["run_grace_s"] = graceful_timeout_s  # background runs get the same grace
        uvicorn.run(app, **options)  # type: ignore[arg-type]
    return 0
