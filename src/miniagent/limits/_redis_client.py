"""Redis connections for the shared limiter and breaker store: one `redis.asyncio` client per event loop.

A `redis.asyncio` connection belongs to the event loop that opened it; code that runs agents from several loops
(`run_sync` starts one per call, tests start one per test) would otherwise reuse a connection on the wrong loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

from ..errors import UserError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisClients", "redact_url"]

_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """`url` with its password (and a user name, if it has one with a password) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit((parts.scheme, f"{user}***@{host}", parts.path, parts.query, parts.fragment))


def check_redis_url(url: object, owner: str) -> str:
    """`url` if it is a Redis URL (`redis://`, `rediss://` or `unix://`).

    Raises:
        UserError: anything else.
    """
    if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
        shown = redact_url(url) if isinstance(url, str) else repr(url)
        raise UserError(
            f"{owner}: the Redis URL must look like `redis://host:6379/0` (or `rediss://`, `unix://`), got {shown}; "
            "fix MINIAGENT_REDIS_URL."
        )
    return url


class RedisClients:
    """A `redis.asyncio.Redis` client per event loop, for one URL, or one client given by the caller.

    Args:
        url: The Redis URL; a client is opened on first use in each event loop.
        client: A client to use as is (the caller owns it and must use it on its own loop only).
        owner: Who uses it, for error messages.

    Raises:
        UserError: neither or both of `url` and `client`, or a URL that is not a Redis URL.
    """

    def __init__(self, url: str | None = None, *, client: Redis | None = None, owner: str = "Redis") -> None:
        if (url is None) == (client is None):
            raise UserError(f"{owner}: pass either a Redis `url` or a `client`, not {'both' if url else 'neither'}.")
        self.url: Final = check_redis_url(url, owner) if url is not None else None
        """The URL, when clients are opened per loop."""
        self._client = client
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Redis] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RedisClients({redact_url(self.url) if self.url else 'client'})"

    def get(self) -> Redis:
        """The client for the running event loop."""
        if self._client is not None:
            return self._client
        loop = asyncio.get_running_loop()
        client = self._per_loop.get(loop)
        if client is None:
            from redis.asyncio import Redis

            with self._lock:
                client = self._per_loop.get(loop)
                if client is None:
                    client = Redis.from_url(str(self.url), decode_responses=True, health_check_interval=30)
                    self._per_loop[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the client of the running loop (a client given by the caller is left to it)."""
        if self._client is not None:
            return
        client = self._per_loop.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def as_str(value: Any) -> str:
    """A reply item as text (replies are decoded, but a client given by the caller may return bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
