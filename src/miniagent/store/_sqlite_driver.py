"""The SQLite driver of the store: aiosqlite over `pysqlite3` when installed (a SQLite that loads extensions).

Many Python builds' `sqlite3` cannot load extensions (`enable_load_extension` is missing), so sqlite-vec cannot be
loaded into them. `pysqlite3-binary` (in the `memory` extra) bundles a SQLite that can. The store and the vector
index must share one connection (a memory and its vector are written in one transaction), so when `pysqlite3` is
installed the whole store runs on it: aiosqlite's `Connection` (a thread per connection) is handed `pysqlite3`
connections, and SQLAlchemy's aiosqlite dialect is given a DB-API module whose exceptions are `pysqlite3`'s, so its
error mapping (and the store's) stays the same. Without `pysqlite3`, the stdlib `sqlite3` is used as before.
"""

from __future__ import annotations

import functools
import types
from typing import Any

__all__ = ["sqlite_dbapi", "sqlite_module", "sqlite_vec_path"]


@functools.cache
def sqlite_module() -> types.ModuleType:
    """`pysqlite3.dbapi2` when installed, else the stdlib `sqlite3`."""
    try:
        from pysqlite3 import dbapi2
    except ImportError:
        import sqlite3

        return sqlite3
    module: types.ModuleType = dbapi2
    return module


@functools.cache
def sqlite_vec_path() -> str | None:
    """The sqlite-vec library to load, or `None` when it is not installed or this SQLite cannot load extensions."""
    try:
        import sqlite_vec
    except ImportError:
        return None
    if not hasattr(sqlite_module().Connection, "enable_load_extension"):
        return None
    return str(sqlite_vec.loadable_path())


def _load_vec(connection: Any, path: str) -> None:
    try:
        connection.enable_load_extension(True)
        try:
            connection.load_extension(path)
        finally:
            connection.enable_load_extension(False)
    except Exception:
        return


@functools.cache
def sqlite_dbapi() -> Any | None:
    """The DB-API module for SQLAlchemy's aiosqlite dialect, or `None` to keep its default (stdlib, no vectors).

    Its connections are `pysqlite3` ones when installed, with sqlite-vec loaded (in aiosqlite's thread, where the
    connection lives) when it is installed.
    """
    sqlite = sqlite_module()
    vec = sqlite_vec_path()
    import sqlite3

    if sqlite is sqlite3 and vec is None:
        return None
    import aiosqlite
    from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi

    shim = types.ModuleType("aiosqlite_pysqlite3")

    def connect(database: str, *, iter_chunk_size: int = 64, **kwargs: Any) -> aiosqlite.Connection:
        def connector() -> Any:
            connection = sqlite.connect(str(database), **kwargs)
            if vec is not None:
                _load_vec(connection, vec)
            return connection

        connection = aiosqlite.Connection(connector, iter_chunk_size)
        connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite's own connections
        return connection

    for name in (
        "DatabaseError",
        "Error",
        "IntegrityError",
        "NotSupportedError",
        "OperationalError",
        "ProgrammingError",
        "sqlite_version",
        "sqlite_version_info",
    ):
        setattr(shim, name, getattr(sqlite, name))
    shim.Connection = aiosqlite.Connection  # type: ignore[attr-defined]
    shim.connect = connect  # type: ignore[attr-defined]
    shim.__version__ = getattr(aiosqlite, "__version__", "0")  # type: ignore[attr-defined]
    return AsyncAdapt_aiosqlite_dbapi(shim, sqlite)
