"""One SDK client per event loop, closed with its loop: the connection pool every HTTP provider shares."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["LoopClients"]


class _Client(Protocol):
    def is_closed(self) -> bool: ...

    async def close(self) -> None: ...


C = TypeVar("C", bound=_Client)


class _NoLoop:
    """The key of the client used outside asyncio (a weakly referenceable singleton)."""


_NO_LOOP = _NoLoop()


async def _close_at_loop_end(client: _Client) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await client.close()


class LoopClients(Generic[C]):
    """SDK clients keyed by event loop, made on first use.

    Pooled connections belong to the loop that opened them, and each `run_sync` runs in a fresh loop that ends
    without telling the model. Event loops close every pending async generator as they shut down (`asyncio.run`
    calls `loop.shutdown_asyncgens()`, trio does the same), so a generator holding each client closes it there;
    `aclose` closes them all at once. A client costs tens of milliseconds to make, so it is made on first request.
    """

    __slots__ = ("_clients",)

    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[object, tuple[C, AsyncGenerator[None, None]]] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self, factory: Callable[[], C]) -> C:
        """The client of the running event loop, made by `factory` now if it has none (or its own was closed)."""
        try:
            loop: object = asyncio.get_running_loop()
        except RuntimeError:  # another async library (trio): one client at a time
            loop = _NO_LOOP
        entry = self._clients.get(loop)
        if entry is not None and not entry[0].is_closed():
            return entry[0]
        client = factory()
        closer = _close_at_loop_end(client)
        await anext(closer)
        self._clients[loop] = (client, closer)
        return client

    async def aclose(self) -> None:
        """Close every client made here."""
        entries = list(self._clients.values())
        self._clients.clear()
        for client, closer in entries:
            await closer.aclose()
            await client.close()
