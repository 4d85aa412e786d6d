from __future__ import annotations

import os
from pathlib import Path

import pytest

from miniagent.errors import StoreError, ThreadNotFound
from miniagent.messages import ModelRequest, prompt_part
from miniagent.store import SQLStore

pytestmark = pytest.mark.anyio


async def test_corrupt_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not a database, just garbage " * 200)
    with pytest.raises(StoreError, match="not a valid SQLite database") as info:
        await SQLStore.open(f"sqlite+aiosqlite:///{path}")
    assert "move it aside" in str(info.value)


async def test_read_only_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await SQLStore.open(f"sqlite+aiosqlite:///{path}")
    thread = await store.create_thread()
    await store.close()
    # SQLite's own read-only mode (file permissions do not stop root, who runs CI containers).
    read_only = await SQLStore.open(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true", migrate=False)
    try:
        assert (await read_only.get_thread(thread.id)).id == thread.id  # reading works
        with pytest.raises(StoreError, match="read-only"):
            await read_only.append(thread.id, [ModelRequest([prompt_part("x")])], expected_leaf=None)
    finally:
        await read_only.close()
    reopened = await SQLStore.open(f"sqlite+aiosqlite:///{path}")
    try:
        assert await reopened.history(thread.id) == []  # nothing half-written
    finally:
        await reopened.close()


async def test_database_down_is_a_clear_error(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://postgres@/miniagent?host={tmp_path}"  # no server listens on this socket dir
    store = SQLStore(url)
    try:
        with pytest.raises(StoreError, match="running"):
            await store.create_thread()
    finally:
        await store.close()


async def test_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(StoreError, match="miniagent migrate"):
            await store.create_thread()
    finally:
        await store.close()


async def test_unknown_message_ids_are_not_found(store: SQLStore) -> None:
    thread = await store.create_thread()
    with pytest.raises(ThreadNotFound):
        await store.regenerate(thread.id, "missing")
    with pytest.raises(ThreadNotFound):
        await store.edit_message(thread.id, "missing", ModelRequest([prompt_part("x")]))
    with pytest.raises(ThreadNotFound):
        await store.history(thread.id, leaf_id="missing")


def test_data_dir_setting_places_the_default_file(tmp_path: Path) -> None:
    from miniagent.settings import Settings
    from miniagent.store import default_database_url

    assert default_database_url(Settings(data_dir=tmp_path)) == f"sqlite+aiosqlite:///{tmp_path / 'miniagent.db'}"
    assert default_database_url(Settings(database_url="postgresql+asyncpg://h/db")) == "postgresql+asyncpg://h/db"
    assert os.environ["MINIAGENT_DATA_DIR"]  # tests never touch the real user data dir
