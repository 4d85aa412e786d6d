"""`miniagent worker`: execute background runs from the job queue (`MINIAGENT_QUEUE_URL`) until SIGTERM or Ctrl-C.

It serves the same agents as `miniagent serve` (module paths, `MINIAGENT_SERVER_AGENTS` or the config file) and
uses the same store. On SIGTERM it stops taking jobs, lets running runs finish within `--grace` seconds, then hands
the rest back to the queue for another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import typer

__all__ = ["run_worker"]

_log = logging.getLogger("miniagent.worker")


def run_worker(
    *,
    agents: list[str],
    config: Path | None,
    concurrency: int | None,
    tenant_cap: int | None,
    grace_s: float,
) -> int:
    """Build the worker from the settings and run it; returns the exit status."""
    if config is not None and not config.is_file():
        typer.echo(f"error: the config file {str(config)!r} does not exist.", err=True)
        return 2
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    from ..errors import MiniAgentError
    from ..settings import get_settings

    overrides: dict[str, object] = {}
    if agents:
        overrides["server_agents"] = ",".join(agents)
    if config is not None:
        overrides["server_config"] = config.resolve()
    if concurrency is not None:
        overrides["worker_concurrency"] = concurrency
    if tenant_cap is not None:
        overrides["worker_tenant_cap"] = tenant_cap
    settings = get_settings().model_copy(update=overrides)
    try:
        return asyncio.run(_main(settings, grace_s))
    except MiniAgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1


def _limits(settings: object) -> Any:
    """The budget charging of `miniagent worker` (needs the `server` extra; `None` without it or without limits)."""
    try:
        from ..server._limits import worker_charging
    except ImportError:  # no `server` extra: no budgets to charge
        return None
    from ..settings import Settings

    assert isinstance(settings, Settings)
    return worker_charging(settings)


async def _main(settings: object, grace_s: float) -> int:
    from ..observability import configure
    from ..queue import default_queue_url, queue_from_settings, safe_url
    from ..server._agents import build_registry
    from ..settings import Settings
    from ..store import SQLStore, default_database_url
    from ..worker import Worker

    assert isinstance(settings, Settings)
    registry = build_registry(None, settings)
    agents = {name: registry.get(name) for name in registry.names()}
    url = default_queue_url(settings)
    queue = queue_from_settings(settings)
    observability = configure(settings=settings)
    limits = None
    try:
        limits = _limits(settings)
        await queue.connect()  # QueueUnavailable: a clear error at start, exit 1
        store = await SQLStore.open(default_database_url(settings), settings=settings)
        try:
            worker = Worker.from_settings(
                queue,
                store,
                agents,
                settings,
                grace_s=grace_s,
                job_context=limits[0] if limits is not None else None,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, worker.stop)
            typer.echo(
                f"miniagent worker {worker.worker_id}: {settings.worker_concurrency} at once, agents "
                f"{', '.join(agents)}, queue {safe_url(url)} ({queue.kind})",
                err=True,
            )
            await worker.run()
            stats = worker.stats
            typer.echo(
                f"worker stopped: {stats.completed} completed, {stats.resumed} resumed, {stats.skipped} skipped, "
                f"{stats.released} released, {stats.dead_lettered} dead-lettered",
                err=True,
            )
            if worker.error is not None:
                typer.echo(f"error: {worker.error}", err=True)
                return 1
            return 0
        finally:
            await store.close()
    finally:
        await queue.close()
        if limits is not None:
            await limits[1]()
        observability.close()
