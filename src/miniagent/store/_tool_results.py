"""`SQLToolResults`: the last good result of each tool call, for tools whose fallback is their last good result.

It implements the resilience layer's [`LastGoodCache`][miniagent.resilience.LastGoodCache] protocol by its shape
(`get`/`put`), without importing it; a stored run's tools with `fallback="last-good"` use it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ._base import traced
from ._models import ToolResultRow

if TYPE_CHECKING:
    from ._sql import SQLStore

__all__ = ["SQLToolResults"]

_SHARED = ""
"""The `user_id` column of results kept for no user in particular."""


def _check(tool_name: object, args_key: object) -> tuple[str, str]:
    if not isinstance(tool_name, str) or not tool_name or len(tool_name) > 200:
        raise UserError(f"Invalid tool name {tool_name!r}: a non-empty string of at most 200 characters.")
    if not isinstance(args_key, str) or len(args_key) > 128:
        raise UserError(f"Invalid args key {args_key!r}: a string of at most 128 characters (a hash of the arguments).")
    return tool_name, args_key


class SQLToolResults:
    """The last good result of each (tool, arguments) per tenant and user, in the store's `tool_results` table.

    `put` replaces the previous result; `get` returns the value (as JSON types: dicts, lists, strings, numbers) with
    the time it was stored (epoch seconds), so the caller can judge its age. A value that is not JSON is stored as
    its pydantic JSON form (`str()` for what pydantic cannot serialize).

    Example:
        ```python
        import tempfile

        import anyio

        from miniagent.store import SQLStore


        async def main() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                async with await SQLStore.open(f"sqlite+aiosqlite:///{tmp}/s.db") as store:
                    cache = store.tool_results()
                    await cache.put("weather", "k1", {"temp": 21}, tenant_id=None, user_id="alice")
                    hit = await cache.get("weather", "k1", tenant_id=None, user_id="alice")
                    assert hit is not None and hit[0] == {"temp": 21}
                    assert await cache.get("weather", "k1", tenant_id=None, user_id="bob") is None


        anyio.run(main)
        ```

    Args:
        store: The store whose database keeps the results.
    """

    def __init__(self, store: SQLStore) -> None:
        self.store = store

    @traced("tool_results.get")
    async def get(
        self, tool_name: str, args_key: str, *, tenant_id: str | None, user_id: str | None
    ) -> tuple[Any, float] | None:
        """The last good result of `tool_name` for `args_key` and its storage time (epoch seconds), or `None`."""
        tool_name, args_key = _check(tool_name, args_key)
        store = self.store
        key = (tenant_id or store.tenant_id, user_id or _SHARED, tool_name, args_key)
        async with store._session() as session:
            row = await session.get(ToolResultRow, key)
            if row is None:
                return None
            value, stored = row.value, row.stored_at
        return json.loads(value), (stored if stored.tzinfo is not None else stored.replace(tzinfo=dt.UTC)).timestamp()

    @traced("tool_results.put")
    async def put(
        self,
        tool_name: str,
        args_key: str,
        value: Any,
        *,
        tenant_id: str | None,
        user_id: str | None,
        stored_at: float | None = None,
    ) -> None:
        """Keep `value` as the last good result of `tool_name` for `args_key` (replacing the previous one).

        `stored_at` (epoch seconds) is when the result was obtained; default: now, by the store's clock.
        """
        from pydantic_core import to_json

        tool_name, args_key = _check(tool_name, args_key)
        store = self.store
        row = {
            "tenant_id": tenant_id or store.tenant_id,
            "user_id": user_id or _SHARED,
            "tool_name": tool_name,
            "args_key": args_key,
            "value": to_json(value, fallback=str).decode(),
            "stored_at": store.now() if stored_at is None else dt.datetime.fromtimestamp(stored_at, dt.UTC),
        }
        keys = ["tenant_id", "user_id", "tool_name", "args_key"]
        statement: Any
        if store.is_sqlite:
            from sqlalchemy.dialects import sqlite

            lite = sqlite.insert(ToolResultRow).values(**row)
            statement = lite.on_conflict_do_update(
                index_elements=keys, set_={"value": lite.excluded.value, "stored_at": lite.excluded.stored_at}
            )
        else:
            from sqlalchemy.dialects import postgresql

            pg = postgresql.insert(ToolResultRow).values(**row)
            statement = pg.on_conflict_do_update(
                index_elements=keys, set_={"value": pg.excluded.value, "stored_at": pg.excluded.stored_at}
            )
        async with store._session() as session:  # one atomic upsert: concurrent writers never conflict
            await session.execute(statement)
