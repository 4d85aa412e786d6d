"""Graceful degradation of tools: the last good result of a tool, kept to answer when the tool fails."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any, Protocol, cast, runtime_checkable

from ..errors import UserError

__all__ = ["LastGoodCache", "InMemoryLastGoodCache", "args_key", "describe_age"]


def args_key(args: dict[str, Any]) -> str:
    """A stable key for a tool's validated arguments: the SHA-256 of their canonical JSON (sorted keys)."""
    from pydantic_core import to_jsonable_python

    text = json.dumps(to_jsonable_python(args, fallback=str), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def describe_age(seconds: float) -> str:
    """`'12 seconds'`, `'3 minutes'`, `'2 hours'`, `'4 days'`: how old a cached result is, for the model to read."""
    seconds = max(0.0, seconds)
    for unit, size in (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    count = round(seconds)
    return f"{count} second{'s' if count != 1 else ''}"


@runtime_checkable
class LastGoodCache(Protocol):
    """Where a tool's last successful result per arguments is kept (for tools declared `fallback="last-good"`).

    Results are scoped to a tenant and a user, so one user's cached data never answers another's. The agent uses
    the store's cache for stored runs and an in-process one otherwise.
    """

    async def get(
        self, tool_name: str, args_key: str, *, tenant_id: str | None, user_id: str | None
    ) -> tuple[Any, float] | None:
        """The last good result and when it was stored (seconds since the epoch), or `None`."""
        ...

    async def put(
        self,
        tool_name: str,
        args_key: str,
        value: Any,
        *,
        tenant_id: str | None,
        user_id: str | None,
        stored_at: float,
    ) -> None:
        """Keep `value` (JSON-compatible) as the last good result of `tool_name` for these arguments."""
        ...


class InMemoryLastGoodCache:
    """Last good tool results in this process, the most recent `max_entries` kept.

    Args:
        max_entries: How many results to keep; the least recently stored is dropped beyond.
    """

    def __init__(self, max_entries: int = 1000) -> None:
        if isinstance(max_entries, bool) or not isinstance(cast(object, max_entries), int) or max_entries < 1:
            raise UserError(f"InMemoryLastGoodCache: `max_entries` must be an integer >= 1, got {max_entries!r}.")
        self.max_entries = max_entries
        """How many results are kept."""
        self._entries: OrderedDict[tuple[str | None, str | None, str, str], tuple[Any, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(
        self, tool_name: str, args_key: str, *, tenant_id: str | None, user_id: str | None
    ) -> tuple[Any, float] | None:
        """The last good result and when it was stored, or `None`."""
        with self._lock:
            return self._entries.get((tenant_id, user_id, tool_name, args_key))

    async def put(
        self,
        tool_name: str,
        args_key: str,
        value: Any,
        *,
        tenant_id: str | None,
        user_id: str | None,
        stored_at: float,
    ) -> None:
        """Keep `value` as the last good result."""
        key = (tenant_id, user_id, tool_name, args_key)
        with self._lock:
            self._entries[key] = (value, stored_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
