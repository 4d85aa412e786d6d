from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, inspect, text

from miniagent import Agent
from miniagent.errors import ModelAuthError
from miniagent.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, prompt_part
from miniagent.store import SQLStore
from miniagent.store._models import Base
from miniagent.testing import AgentInfo, FunctionModel

from .conftest import PgServer

pytestmark = pytest.mark.anyio

_MIGRATIONS = Path(__file__).resolve().parents[2] / "src" / "miniagent" / "store" / "migrations"


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no schema at all."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    pg: PgServer = request.getfixturevalue("pg_server")
    name = f"m_{uuid.uuid4().hex[:12]}"
    pg.psql(f"CREATE DATABASE {name};")
    return pg.url(name)


def _alembic(connection: Connection, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    getattr(command, action)(cfg, revision)


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _run_columns(connection: Connection) -> set[str]:
    return {c["name"] for c in inspect(connection).get_columns("runs")}


async def test_upgrade_from_0002_keeps_existing_data(empty_url: str) -> None:
    store = await SQLStore.open(empty_url, migrate=False)
    try:
        assert await store.migrate("0002") == "0002"
        thread = await store.create_thread(user_id="alice")
        ids = await store.append(
            thread.id, [ModelRequest([prompt_part("old")]), ModelResponse([TextPart("kept")])], expected_leaf=None,
            user_id="alice",
        )  # fmt: skip
        now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
        async with store.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO runs (id, tenant_id, thread_id, user_id, status, steps, usage, cost_usd, error, owner,"
                    " created_at, updated_at, finished_at) VALUES ('old-run', 'default', :thread, 'alice', 'succeeded',"
                    " 1, :usage, 0.5, NULL, NULL, :now, :now, :now)"
                ),
                {"thread": thread.id, "usage": '{"requests": 1, "cost_usd": 0.5}', "now": now},
            )
            assert "dead_letters" not in await conn.run_sync(_tables)

        assert await store.migrate() == "0005"
        async with store.engine.connect() as conn:
            assert {"dead_letters", "usage_records", "tool_results"} <= await conn.run_sync(_tables)
            assert {"correlation_id", "agent_name", "replay_of"} <= await conn.run_sync(_run_columns)
            assert {"via_queue", "lease_owner", "lease_until", "attempts", "cancel_requested"} <= await conn.run_sync(
                _run_columns
            )
            assert "tool_intents" in await conn.run_sync(_tables)
        old = await store.get_run("old-run")
        assert old.status == "succeeded" and old.usage.cost_usd == 0.5 and old.user_id == "alice"
        assert not old.via_queue and old.attempts == 0 and not old.cancel_requested
        assert (old.correlation_id, old.agent_name, old.replay_of) == (None, None, None)
        assert [m.id for m in await store.history(thread.id, user_id="alice")] == ids

        def fail(messages: list[ModelMessage], info: AgentInfo) -> str:
            raise ModelAuthError("no", model_name="m", status_code=401)

        with pytest.raises(ModelAuthError):  # the new tables work on the upgraded database
            await Agent(FunctionModel(fail)).run("new", thread_id=thread.id, user_id="alice", store=store)
        (letter,) = await store.list_dead_letters()
        assert [m.parts[0] for m in letter.messages][:2] == [prompt_part("old"), TextPart("kept")]
    finally:
        await store.close()


async def test_downgrade_to_0002_and_up_again(empty_url: str) -> None:
    store = await SQLStore.open(empty_url, migrate=False)
    try:
        await store.migrate()
        thread = await store.create_thread()
        await store.start_run("r1", thread_id=thread.id, correlation_id="c1")
        await store.finish_run("r1", status="succeeded", steps=0, usage=await _usage())
        async with store.engine.begin() as conn:
            await conn.run_sync(_alembic, "downgrade", "0002")
            assert not {"dead_letters", "usage_records", "tool_results"} & await conn.run_sync(_tables)
            assert not {"correlation_id", "via_queue", "lease_until"} & await conn.run_sync(_run_columns)
            assert "tool_intents" not in await conn.run_sync(_tables)
            (count,) = (await conn.execute(text("SELECT count(*) FROM runs"))).one()
            assert count == 1  # the run (and its thread) survived the downgrade
            await conn.run_sync(_alembic, "upgrade", "head")
        assert (await store.get_run("r1")).correlation_id is None
    finally:
        await store.close()


async def _usage() -> Any:
    from miniagent.usage import Usage

    return Usage()


async def test_the_models_match_the_migrations(store: SQLStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def ours(name: str | None, type_: str, parent_names: Any) -> bool:
        # The vector index's tables are made outside the models (and their types are unknown to SQLAlchemy).
        return type_ != "table" or name in Base.metadata.tables

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"include_name": ours, "compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with store.engine.connect() as conn:
        assert await conn.run_sync(compare) == []
