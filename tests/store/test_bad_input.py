from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from miniagent.errors import StoreError, ThreadNotFound
from miniagent.messages import ModelRequest, prompt_part
from miniagent.store import SQLStore

from .conftest import PgServer

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


# ---- a full disk -----------------------------------------------------------------------------------------------


def _limit_size(store: SQLStore) -> None:
    """New connections may not grow the database file: SQLite's SQLITE_FULL, as on a full disk."""
    from sqlalchemy import event

    @event.listens_for(store.engine.sync_engine, "connect")
    def _cap(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA page_count")
        cursor.execute(f"PRAGMA max_page_count={cursor.fetchone()[0]}")
        cursor.close()


async def _fill_until_full(store: SQLStore, thread_id: str) -> StoreError:
    leaf = (await store.get_thread(thread_id)).leaf_id
    for k in range(10_000):
        try:
            ids = await store.append(
                thread_id, [ModelRequest([prompt_part(f"{k} " + "x" * 20_000)])], expected_leaf=leaf
            )
        except StoreError as exc:
            return exc
        leaf = ids[-1]
    raise AssertionError("the database never filled up")


async def test_database_full_rolls_back_and_keeps_what_was_committed(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    store = await SQLStore.open(url)
    try:
        thread = await store.create_thread()
        await store.append(thread.id, [ModelRequest([prompt_part("committed")])], expected_leaf=None)
        before = await store.history(thread.id)
        _limit_size(store)
        await store.engine.dispose()  # the next connections carry the limit
        big = ModelRequest([prompt_part("y" * 500_000)])
        with pytest.raises(StoreError, match="is full") as info:
            await store.append(thread.id, [big], expected_leaf=before[-1].id)
        assert "rolled back" in str(info.value) and "intact" in str(info.value)
        assert await store.history(thread.id) == before  # nothing half-written
        with pytest.raises(StoreError, match="is full"):  # a run record with its first message: all or nothing
            await store.start_run("r1", thread_id=thread.id)
            await store.append(thread.id, [big], expected_leaf=before[-1].id, run_id="r1", run_steps=1)
        assert await store.history(thread.id) == before
    finally:
        await store.close()
    reopened = await SQLStore.open(url)
    try:
        assert [m.message for m in await reopened.history(thread.id)] == [m.message for m in before]
    finally:
        await reopened.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real full disk (needs root and mount rights; skipped elsewhere)."""
    import subprocess

    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if done.returncode != 0:
        if os.environ.get("CI"):  # CI runs as root: a failed mount there is a failure, not a reason to skip
            pytest.fail(f"cannot mount a tmpfs in CI: {done.stderr.decode().strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


async def test_full_disk_rolls_back_and_keeps_what_was_committed(tiny_disk: Path) -> None:
    url = f"sqlite+aiosqlite:///{tiny_disk / 'store.db'}"
    store = await SQLStore.open(url)
    try:
        thread = await store.create_thread()
        error = await _fill_until_full(store, thread.id)
        assert "full" in str(error) and "rolled back" in str(error)
        committed = await store.history(thread.id)
        assert committed  # some writes went through before the disk filled up
    finally:
        await store.close()
    reopened = await SQLStore.open(url)
    try:
        assert [m.message for m in await reopened.history(thread.id)] == [m.message for m in committed]
    finally:
        await reopened.close()


# ---- a database that is down -----------------------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends: nothing listens there


async def test_database_down_at_open_is_retried_then_a_clear_error() -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    url = f"postgresql+asyncpg://miniagent:secret@127.0.0.1:{_closed_port()}/miniagent"
    with pytest.raises(StoreError, match="after 4 attempt") as info:
        await SQLStore.open(url, connect_attempts=4, retry_delay_s=0.25, sleep=sleep)
    assert delays == [0.25, 0.5, 1.0]  # bounded, doubling
    message = str(info.value)
    assert "is running" in message and "secret" not in message and "127.0.0.1" in message


async def test_missing_socket_at_open_is_a_clear_error(tmp_path: Path) -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    url = f"postgresql+asyncpg://postgres@/miniagent?host={tmp_path}"
    with pytest.raises(StoreError, match="Cannot reach the database"):
        await SQLStore.open(url, sleep=sleep)
    assert len(delays) == 2  # three attempts by default


async def test_server_that_comes_up_during_the_retries_is_used(pg_server: PgServer) -> None:
    from typing import cast

    from sqlalchemy.ext.asyncio import AsyncEngine

    from miniagent.store._connect import connect_with_retry

    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    store = SQLStore(pg_server.new_database())

    class StartingServer:
        """The engine, but its first two connects fail as if the server were still starting."""

        failures = 2

        def connect(self) -> Any:
            if self.failures:
                self.failures -= 1
                raise ConnectionRefusedError(111, "Connection refused")
            return store.engine.connect()

    try:
        await connect_with_retry(
            cast(AsyncEngine, StartingServer()), attempts=3, delay_s=0.1, sleep=sleep, where="the database"
        )
    finally:
        await store.close()
    assert delays == [0.1, 0.2]


async def test_bad_credentials_are_not_retried(pg_server: PgServer) -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    url = pg_server.new_database().replace("postgresql+asyncpg://", "postgresql+asyncpg://nobody_here@", 1)
    with pytest.raises(StoreError):
        await SQLStore.open(url, sleep=sleep)
    assert delays == []
