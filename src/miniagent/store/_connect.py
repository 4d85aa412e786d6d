"""Reaching the database: one way to make an engine, and a bounded retry of connection failures at open time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import StoreError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["Sleep", "connect_with_retry", "is_connection_failure", "make_engine"]

Sleep = Callable[[float], Awaitable[None]]
"""Waits some seconds (`anyio.sleep`; tests inject one that records the delays)."""


def make_engine(url: str, *, busy_timeout_s: float | None = None) -> AsyncEngine:
    """An async engine for `url`; for SQLite, on the store's own SQLite library (`pysqlite3` when installed).

    Everything in this process that opens the store's database goes through here: two SQLite libraries on one WAL
    file do not see each other's locks, so a connection of the other library closing would delete the WAL under the
    store's open connections (their next statement fails with "disk I/O error").
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        if busy_timeout_s is not None:
            kwargs["connect_args"] = {"timeout": busy_timeout_s}
        from ._sqlite_driver import sqlite_dbapi

        dbapi = sqlite_dbapi()  # pysqlite3 with sqlite-vec when installed (see `_sqlite_driver`)
        if dbapi is not None:
            kwargs["module"] = dbapi
    return create_async_engine(url, **kwargs)


# Driver errors that mean "the server is not (yet) there", worth another try; a wrong password is not.
_TRANSIENT_NAMES = frozenset({"CannotConnectNowError", "TooManyConnectionsError", "ConnectionDoesNotExistError"})


def is_connection_failure(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the server could not be reached: refused, no socket, timeout."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) or type(current).__name__ in _TRANSIENT_NAMES:
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
    return False


async def connect_with_retry(
    engine: AsyncEngine, *, attempts: int, delay_s: float, sleep: Sleep | None = None, where: str
) -> None:
    """Open one connection (`SELECT 1`), retrying connection failures `attempts` times in all, the delay doubling.

    Raises:
        StoreError: the server stayed unreachable; other errors (bad credentials, no database) are raised at once.
    """
    if sleep is None:
        import anyio

        sleep = anyio.sleep
    attempts = max(1, attempts)
    delay = delay_s
    for attempt in range(1, attempts + 1):
        try:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
            return
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            if attempt == attempts:
                cause = exc
                while getattr(cause, "orig", None) is not None:
                    cause = cause.orig  # type: ignore[attr-defined]  # checked just above
                raise StoreError(
                    f"Cannot reach {where} after {attempts} attempt(s) ({type(cause).__name__}: {cause}): check that "
                    "the database server is running and MINIAGENT_DATABASE_URL is right; nothing was written."
                ) from exc
            await sleep(delay)
            delay *= 2
