"""`miniagent serve`: agents as a multi-user HTTP service, speaking the OpenAI API (`/v1`) and a native API of
threads, runs and event streams (`/api/v1`), with API keys, JWT sign-in, tenants and limits.

```python
from fastapi.testclient import TestClient

from miniagent import Agent
from miniagent.server import create_app
from miniagent.settings import Settings
from miniagent.testing import EchoModel

import tempfile

with tempfile.TemporaryDirectory() as tmp:
    app = create_app(Settings(data_dir=tmp), agents=[Agent(EchoModel(), name="echo")])
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
```

FastAPI is imported by `create_app`, never by `import miniagent`; without the `server` extra `create_app` says how to
install it.
"""  # noqa: D205

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry

    from .._utils import Clock
    from ..agent import Agent
    from ..observability import CheckRegistry
    from ..settings import Settings
    from ..store import SQLStore
    from ._errors import ApiError
    from ._state import SCOPES, AgentRegistry, Principal, ServerState

__all__ = ["SCOPES", "AgentRegistry", "ApiError", "Principal", "ServerState", "create_app"]

_LAZY = {
    "SCOPES": "._state",
    "AgentRegistry": "._state",
    "Principal": "._state",
    "ServerState": "._state",
    "ApiError": "._errors",
}


def _missing_extra(exc: ImportError) -> Exception:
    from ..errors import UserError

    return UserError(
        f"The server needs the `server` extra ({exc.name or exc} is not installed): `pip install 'miniagent[server]'`."
    )


def create_app(
    settings: Settings | None = None,
    *,
    agents: Mapping[str, Agent[Any, Any]] | Sequence[Agent[Any, Any]] | None = None,
    store: SQLStore | None = None,
    redis_url: str | None = None,
    clock: Clock | None = None,
    wall_time: Callable[[], float] | None = None,
    health_registry: CheckRegistry | None = None,
    metrics_registry: CollectorRegistry | None = None,
    jwks_client: httpx.AsyncClient | None = None,
    observability: bool = False,
) -> FastAPI:
    """The server as a FastAPI app: run it with uvicorn (`miniagent serve` does), or `uvicorn --factory
    miniagent.server:create_app` (settings from the environment).

    Args:
        settings: The configuration (default: the environment's `MINIAGENT_*`).
        agents: The served agents: a mapping name -> Agent, or Agents keyed by their `name`; `None` takes them from
            `server_config`/`server_agents`, else serves the default chat agent as `default`.
        store: A store opened in the serving event loop (default: the app opens the settings' store at start-up and
            closes it at shutdown).
        redis_url: Redis for state shared by replicas (default: `MINIAGENT_REDIS_URL`).
        clock: Monotonic time for the caches (tests inject a `ManualClock`).
        wall_time: Epoch seconds for JWT expiry (tests inject one).
        health_registry: The checks of `/healthz` and `/readyz` (default: the doctor's registry).
        metrics_registry: The registry `/metrics` serves (default: miniagent's).
        jwks_client: The httpx client fetching the issuer's keys (default: one of the app's own).
        observability: Configure logs and metrics (`miniagent.observability.configure`) for the app's lifetime.

    Raises:
        UserError: The configuration is invalid (the message says what to change), or the `server` extra is missing.
    """  # noqa: D205
    try:
        from ._app import build_app
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("fastapi", "starlette", "uvicorn", "jwt", "pydantic"):
            raise _missing_extra(exc) from exc
        raise
    return build_app(
        settings,
        agents=agents,
        store=store,
        redis_url=redis_url,
        clock=clock,
        wall_time=wall_time,
        health_registry=health_registry,
        metrics_registry=metrics_registry,
        jwks_client=jwks_client,
        observability=observability,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
