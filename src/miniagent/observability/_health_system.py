"""Built-in checks of the machine and the store: database and migration level, data dir, disk space, SQLite
extension loading, versions.

Nothing heavy is imported until a check runs; no check writes to the database or loads an extension into it.
"""  # noqa: D205

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import UserError
from ._health_base import Check, CheckResult

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "DiskUsage",
    "DiskUsageFunction",
    "data_dir_check",
    "database_check",
    "disk_space_check",
    "sqlite_extension_check",
    "versions_check",
]

_MIB = 1024 * 1024
_GIB = 1024 * _MIB
_MIGRATE_FIX = "run `miniagent migrate`"
_DATA_DIR_FIX = "set MINIAGENT_DATA_DIR to a writable directory (or fix the permissions of this one)"
_MEMORY_FIX = "install the 'memory' extra: `pip install 'miniagent[memory]'` (sqlite-vec and a SQLite that loads it)"


class DiskUsage(Protocol):
    """What `shutil.disk_usage` returns: sizes in bytes."""

    @property
    def total(self) -> int:
        """Size of the file system."""
        ...

    @property
    def free(self) -> int:
        """Bytes free for an unprivileged user."""
        ...


DiskUsageFunction = Callable[[str], DiskUsage]
"""Measures the file system holding a path, like `shutil.disk_usage` (tests inject their own)."""


@dataclass(frozen=True, slots=True)
class _StoreLocation:
    url: str
    shown: str  # the URL with any password hidden
    sqlite_path: Path | None  # the SQLite file, when the store is a SQLite file
    is_sqlite: bool
    explicit: bool  # MINIAGENT_DATABASE_URL is set


def _store_location(settings: Settings) -> _StoreLocation:
    from sqlalchemy.engine import make_url

    from ..store import default_database_url

    url = default_database_url(settings)
    parsed = make_url(url)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    database = parsed.database
    path = Path(database) if is_sqlite and database and database != ":memory:" else None
    return _StoreLocation(
        url=url,
        shown=parsed.render_as_string(hide_password=True),
        sqlite_path=path,
        is_sqlite=is_sqlite,
        explicit=bool(settings.database_url),
    )


def _data_dir(settings: Settings) -> Path:
    """The directory the store writes to: the SQLite file's, else the configured (or default) data dir."""
    location = _store_location(settings)
    if location.sqlite_path is not None:
        return location.sqlite_path.parent
    return settings.resolved_data_dir()


def _existing_ancestor(path: Path) -> Path:
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _describe(exc: BaseException) -> str:
    """`Type: message` of the root cause of a (SQLAlchemy-wrapped) driver error."""
    cause: BaseException = exc
    while True:
        inner = getattr(cause, "orig", None)
        if isinstance(inner, BaseException):
            cause = inner
            continue
        break
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


# ---- database ----------------------------------------------------------------------------------------------


def _package_heads() -> tuple[list[str], set[str]]:
    """The migration heads this package ships, and every revision it knows (read from Alembic's scripts now)."""
    from alembic.script import ScriptDirectory

    from ..store import migrations

    script = ScriptDirectory(str(Path(next(iter(migrations.__path__)))))
    return list(script.get_heads()), {rev.revision for rev in script.walk_revisions()}


def _read_revisions(connection: Any) -> tuple[str, ...]:
    from alembic.runtime.migration import MigrationContext

    return tuple(MigrationContext.configure(connection).get_current_heads())


def _migration_result(
    current: tuple[str, ...], heads: list[str], known: set[str], *, where: str, self_migrating: bool
) -> CheckResult:
    """Compare the database's revisions with the package's heads."""
    head_text = ", ".join(heads)
    unknown = [rev for rev in current if rev not in known]
    if unknown:
        return CheckResult(
            "fail",
            f"{where} is at revision {', '.join(unknown)}, which this miniagent does not know (head: {head_text})",
            fix="upgrade miniagent to the version that migrated this database, or point MINIAGENT_DATABASE_URL "
            "at this version's database",
        )
    if sorted(current) == sorted(heads):
        return CheckResult("ok", f"{where} reachable, at the latest migration ({head_text})")
    state = f"at revision {', '.join(current)}" if current else "not migrated yet"
    if self_migrating:
        return CheckResult(
            "warn",
            f"{where} is {state} (latest: {head_text}); a SQLite store migrates itself when it is first opened",
            fix=_MIGRATE_FIX + " to do it now",
        )
    return CheckResult("fail", f"{where} is {state} (latest: {head_text})", fix=_MIGRATE_FIX)


async def _check_database(settings: Settings) -> CheckResult:
    from ._health_base import scrub

    location = _store_location(settings)
    heads, known = _package_heads()
    if location.is_sqlite:
        if location.sqlite_path is None:
            return CheckResult("ok", "in-memory SQLite database: migrated by the store when it opens")
        where = f"SQLite file {str(location.sqlite_path)!r}"
        if not location.sqlite_path.exists():
            return CheckResult(
                "warn",
                f"{where} does not exist yet; the store creates and migrates it on first use",
                fix=_MIGRATE_FIX + " to create it now",
            )
        if location.sqlite_path.is_dir():
            return CheckResult(
                "fail",
                f"{where} is a directory, not a database file",
                fix="set MINIAGENT_DATABASE_URL (or MINIAGENT_DATA_DIR) to where the database file should be",
            )
    else:
        where = f"database {location.shown!r}"
    from sqlalchemy.engine import make_url

    password = make_url(location.url).password
    secrets = [str(password)] if password else []
    from ..store._connect import make_engine  # the store's own SQLite library: see `make_engine`

    try:
        engine = make_engine(location.url)
    except Exception as exc:
        return CheckResult(
            "fail",
            scrub(f"{where}: cannot make an engine ({_describe(exc)})", secrets=secrets),
            fix="check MINIAGENT_DATABASE_URL: 'sqlite+aiosqlite:///path.db' or 'postgresql+asyncpg://user:pw@host/db'",
        )
    try:
        async with engine.connect() as connection:
            current = await connection.run_sync(_read_revisions)
    except Exception as exc:
        from ..store._connect import is_connection_failure

        if is_connection_failure(exc) and not location.is_sqlite:
            return CheckResult(
                "fail",
                scrub(f"{where} is unreachable ({_describe(exc)})", secrets=secrets),
                fix="start the database server, or fix the host and port in MINIAGENT_DATABASE_URL",
            )
        return CheckResult(
            "fail",
            scrub(f"{where} cannot be read ({_describe(exc)})", secrets=secrets),
            fix="check the credentials and database name in MINIAGENT_DATABASE_URL"
            if not location.is_sqlite
            else "check that the file is a miniagent SQLite database, or move it away and let the store recreate it",
        )
    finally:
        import anyio

        with anyio.CancelScope(shield=True):  # a timed-out check still closes what it opened
            await engine.dispose()
    return _migration_result(current, heads, known, where=where, self_migrating=location.is_sqlite)


def database_check(*, name: str = "database", critical: bool = True, timeout_s: float | None = None) -> Check:
    """The store's database is reachable and at the latest migration.

    The database is `MINIAGENT_DATABASE_URL`, else the SQLite file under the data dir. Its Alembic revision is
    compared with the heads of the migrations installed with this package (read at run time). A SQLite store
    migrates itself when opened, so a missing, fresh or older SQLite file is a `warn`; a database server behind
    the package is a `fail`. Either way the fix is `miniagent migrate`. Nothing is written.

    Args:
        name: The check's name.
        critical: Whether a failure fails the report.
        timeout_s: Its own timeout; `None` uses the runner's.
    """
    return Check(
        name,
        _check_database,
        kind="readiness",
        critical=critical,
        timeout_s=timeout_s,
        description="the store's database is reachable and at the latest migration",
    )


# ---- data dir and disk ----------------------------------------------------------------------------------------


def _probe_writable(directory: Path) -> CheckResult:
    if directory.exists():
        if not directory.is_dir():
            return CheckResult("fail", f"data dir {str(directory)!r} is a file, not a directory", fix=_DATA_DIR_FIX)
        try:
            with tempfile.TemporaryFile(dir=directory, prefix=".miniagent-doctor-"):
                pass
        except OSError as exc:
            return CheckResult(
                "fail", f"data dir {str(directory)!r} is not writable ({exc.strerror or exc})", fix=_DATA_DIR_FIX
            )
        return CheckResult("ok", f"data dir {str(directory)!r} is writable")
    ancestor = _existing_ancestor(directory)
    if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK):
        return CheckResult(
            "ok", f"data dir {str(directory)!r} does not exist yet; it will be created in {str(ancestor)!r}"
        )
    return CheckResult(
        "fail",
        f"data dir {str(directory)!r} does not exist and cannot be created in {str(ancestor)!r}",
        fix=_DATA_DIR_FIX,
    )


async def _check_data_dir(settings: Settings) -> CheckResult:
    import anyio.to_thread

    directory = _data_dir(settings)
    return await anyio.to_thread.run_sync(_probe_writable, directory, abandon_on_cancel=True)


def data_dir_check(*, name: str = "data dir", critical: bool = True, timeout_s: float | None = None) -> Check:
    """The directory the store writes to (the SQLite file's, else `MINIAGENT_DATA_DIR`) is writable.

    A file is created there and deleted at once; a directory that does not exist yet is fine when it can be
    created.

    Args:
        name: The check's name.
        critical: Whether a failure fails the report.
        timeout_s: Its own timeout; `None` uses the runner's.
    """
    return Check(
        name,
        _check_data_dir,
        kind="both",
        critical=critical,
        timeout_s=timeout_s,
        description="the data dir is writable",
    )


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(n: int) -> str:
    return f"{n / _GIB:.1f} GiB" if n >= _GIB else f"{n / _MIB:.0f} MiB"


def disk_space_check(
    *,
    warn_below_bytes: int = _GIB,
    fail_below_bytes: int = 100 * _MIB,
    disk_usage: DiskUsageFunction | None = None,
    name: str = "disk space",
    critical: bool = True,
    timeout_s: float | None = None,
) -> Check:
    """Free space on the file system of the data dir: `warn` under `warn_below_bytes`, `fail` under
    `fail_below_bytes`.

    Args:
        warn_below_bytes: Free bytes under which the check warns (default 1 GiB).
        fail_below_bytes: Free bytes under which it fails (default 100 MiB); at most `warn_below_bytes`.
        disk_usage: Measures a path's file system; default `shutil.disk_usage` (tests inject their own).
        name: The check's name.
        critical: Whether a failure fails the report.
        timeout_s: Its own timeout; `None` uses the runner's.

    Raises:
        UserError: a threshold is negative, or `fail_below_bytes` is above `warn_below_bytes`.
    """  # noqa: D205
    if not all(_is_whole(v) for v in (warn_below_bytes, fail_below_bytes)):
        raise UserError("`warn_below_bytes` and `fail_below_bytes` must be whole numbers of bytes.")
    if fail_below_bytes < 0 or warn_below_bytes < fail_below_bytes:
        raise UserError(
            f"Disk thresholds must satisfy 0 <= fail_below_bytes <= warn_below_bytes, got fail_below_bytes="
            f"{fail_below_bytes} and warn_below_bytes={warn_below_bytes}."
        )
    measure: DiskUsageFunction = disk_usage if disk_usage is not None else shutil.disk_usage

    async def check(settings: Settings) -> CheckResult:
        import anyio.to_thread

        directory = _existing_ancestor(_data_dir(settings))
        usage = await anyio.to_thread.run_sync(measure, str(directory), abandon_on_cancel=True)
        free, total = int(usage.free), int(usage.total)
        detail = f"{_size(free)} free of {_size(total)} at {str(directory)!r}"
        fix = "free some space there, or set MINIAGENT_DATA_DIR to a larger disk"
        if free < fail_below_bytes:
            return CheckResult("fail", f"{detail} (under {_size(fail_below_bytes)})", fix=fix)
        if free < warn_below_bytes:
            return CheckResult("warn", f"{detail} (under {_size(warn_below_bytes)})", fix=fix)
        return CheckResult("ok", detail)

    return Check(
        name,
        check,
        kind="readiness",
        critical=critical,
        timeout_s=timeout_s,
        description="enough free disk space at the data dir",
    )


# ---- SQLite extensions ------------------------------------------------------------------------------------


def _probe_sqlite_vec() -> CheckResult:
    from importlib.util import find_spec

    from ..store._sqlite_driver import sqlite_module, sqlite_vec_path

    sqlite = sqlite_module()
    driver = f"{sqlite.__name__} (SQLite {sqlite.sqlite_version})"
    path = sqlite_vec_path()
    if path is None:
        if find_spec("sqlite_vec") is None:
            reason = "sqlite-vec is not installed"
        else:
            reason = f"this SQLite ({driver}) cannot load extensions"
        return CheckResult("warn", f"{reason}: long-term memory on SQLite is unavailable", fix=_MEMORY_FIX)
    connection = sqlite.connect(":memory:")
    try:
        connection.enable_load_extension(True)
        connection.load_extension(path)
        connection.enable_load_extension(False)
        version = connection.execute("SELECT vec_version()").fetchone()[0]
    except Exception as exc:
        return CheckResult(
            "warn",
            f"sqlite-vec did not load into {driver} ({type(exc).__name__}: {exc}): long-term memory is unavailable",
            fix=_MEMORY_FIX,
        )
    finally:
        connection.close()
    return CheckResult("ok", f"sqlite-vec {version} loads into {driver}")


async def _check_sqlite_extension(settings: Settings) -> CheckResult:
    import anyio.to_thread

    location = _store_location(settings)
    if not location.is_sqlite:
        return CheckResult("skip", "the store is not SQLite (its vector index is pgvector, created by migrations)")
    return await anyio.to_thread.run_sync(_probe_sqlite_vec, abandon_on_cancel=True)


def sqlite_extension_check(
    *, name: str = "sqlite extensions", critical: bool = False, timeout_s: float | None = None
) -> Check:
    """sqlite-vec loads into the store's SQLite driver (`pysqlite3` when installed), for long-term memory.

    Tried on a fresh in-memory connection, never the store's. Missing is a `warn` (memory is an extra); skipped
    when the store is not SQLite.

    Args:
        name: The check's name.
        critical: Whether a failure fails the report.
        timeout_s: Its own timeout; `None` uses the runner's.
    """
    return Check(
        name,
        _check_sqlite_extension,
        kind="readiness",
        critical=critical,
        timeout_s=timeout_s,
        description="sqlite-vec loads into the store's SQLite",
    )


# ---- versions ---------------------------------------------------------------------------------------------

_REPORTED_PACKAGES = ("sqlalchemy", "alembic", "openai", "anthropic", "llama-cpp-python", "sqlite-vec")


async def _check_versions(settings: Settings) -> CheckResult:
    from .._version import __version__

    parts = [f"miniagent {__version__}", f"Python {platform.python_version()} ({sys.implementation.name})"]
    for package in _REPORTED_PACKAGES:
        try:
            parts.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return CheckResult("ok", ", ".join(parts))


def versions_check(*, name: str = "versions") -> Check:
    """miniagent's, Python's and the key packages' versions: information, always `ok`.

    Args:
        name: The check's name.
    """
    return Check(
        name, _check_versions, kind="both", critical=False, description="Python and package versions (information)"
    )
