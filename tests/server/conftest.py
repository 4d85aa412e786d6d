"""Server fixtures: an app on a temporary store, real API keys in it, and the app served by uvicorn on loopback.

- `server_settings`: the `Settings` of `make_app` (a temp SQLite store, a fixed pepper); derive others with
  `server_settings.model_copy(update={...})`.
- `make_app(settings=None, *, agents=None, **kw)`: `create_app` on those settings, serving an `echo` agent
  (`EchoModel`) unless `agents` is given.
- `api_key(tenant="t1", user="u1", scopes=("chat",), **kw) -> str`: a real key created in that store (its secret).
- `live_server(app)`: a context manager running the app under uvicorn on 127.0.0.1 (a free port) in a background
  thread, yielding its base URL (`http://127.0.0.1:PORT`); stopped at the end of the `with` (or of the test).
- `server_db`: `sqlite` (default); tests parametrized with `@pytest.mark.parametrize("server_db", ["sqlite",
  "postgres"], indirect=True)` also run on a real PostgreSQL (`pg_server`, as the store tests).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from miniagent import Agent
from miniagent.server import create_app
from miniagent.settings import Settings
from miniagent.store import SQLStore
from miniagent.testing import EchoModel

from ..store.conftest import PgServer, pg_server

__all__ = ["PEPPER", "ApiKeyFactory", "AppFactory", "LiveServer", "pg_server", "run_async"]

PEPPER = "test-pepper-0123456789abcdef"
"""The pepper of the test apps' API keys."""

AppFactory = Callable[..., FastAPI]
ApiKeyFactory = Callable[..., str]
LiveServer = Callable[[FastAPI], AbstractContextManager[str]]


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion in a fresh event loop on another thread (usable from sync and async tests)."""
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # handed to the caller below
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@pytest.fixture(params=["sqlite"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL of the test app: a temp SQLite file, or (param `postgres`) a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'server.db'}"
    pg: PgServer = request.getfixturevalue("pg_server")
    return pg.new_database()


@pytest.fixture
def server_settings(server_db: str, tmp_path: Path) -> Settings:
    """Settings of the test app: its store, a fixed pepper, the data dir in `tmp_path`."""
    return Settings(
        database_url=server_db,
        data_dir=tmp_path,
        server_pepper=SecretStr(PEPPER),
        api_key_cache_s=0,
        readyz_cache_s=0,
    )


@pytest.fixture
def make_app(server_settings: Settings) -> AppFactory:
    """Build a server app on the test store (an `echo` agent unless `agents=` is given)."""

    def make(
        settings: Settings | None = None,
        *,
        agents: Mapping[str, Agent[Any, Any]] | Sequence[Agent[Any, Any]] | None = None,
        **kw: Any,
    ) -> FastAPI:
        chosen = agents if agents is not None else [Agent(EchoModel(), name="echo")]
        return create_app(settings or server_settings, agents=chosen, **kw)

    return make


@pytest.fixture
def api_key(server_settings: Settings) -> ApiKeyFactory:
    """Create a real API key in the test store; returns its secret."""

    def create(
        tenant: str = "t1",
        user: str = "u1",
        scopes: Sequence[str] = ("chat",),
        *,
        name: str | None = None,
        expires_at: dt.datetime | None = None,
    ) -> str:
        async def go() -> str:
            store = await SQLStore.open(server_settings.database_url, settings=server_settings, migrate=True)
            try:
                _, secret = await store.create_api_key(
                    pepper=PEPPER.encode(),
                    tenant_id=tenant,
                    user_id=user,
                    scopes=scopes,
                    name=name,
                    expires_at=expires_at,
                )
                return secret
            finally:
                await store.close()

        secret: str = run_async(go())
        return secret

    return create


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def live_server() -> Iterator[LiveServer]:
    """Serve an app with uvicorn on loopback in a thread: `with live_server(app) as base_url: ...`."""
    import uvicorn

    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def stop(server: uvicorn.Server, thread: threading.Thread) -> None:
        server.should_exit = True
        thread.join(timeout=60)

    @contextmanager
    def serve(app: FastAPI) -> Iterator[str]:
        sock = _free_socket()
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", ws="websockets-sansio")
        server = uvicorn.Server(config)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # reported by the waiting loop below
                failure.append(exc)

        thread = threading.Thread(target=run, name=f"uvicorn:{port}", daemon=True)
        thread.start()
        running.append((server, thread))
        while not server.started:  # wait for the state (lifespan done, socket listening), not for a duration
            if failure or not thread.is_alive():
                sock.close()
                raise RuntimeError(f"The test server did not start: {failure[0] if failure else 'it exited'}")
            time.sleep(0.005)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(server, thread)
            sock.close()

    yield serve
    for server, thread in running:
        if thread.is_alive():
            stop(server, thread)
