"""Small helpers shared across layers: the unset sentinel, the one sync helper, clocks."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, final

from .errors import UserError

if TYPE_CHECKING:
    import anyio

__all__ = ["UNSET", "Clock", "SystemClock", "Unset", "is_set", "run_until_complete"]

T = TypeVar("T")


@final
class Unset:
    """Type of [`UNSET`][miniagent._utils.UNSET]: "not given", where `None` means something."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = Unset()


def is_set(value: T | Unset) -> bool:
    """Whether `value` was given."""
    return not isinstance(value, Unset)


def run_until_complete(coro: Coroutine[Any, Any, T], *, method: str) -> T:
    """Run `coro` to completion from synchronous code; the one bridge every `*_sync` method uses.

    Refuses to run inside an event loop (that would block it); Ctrl-C cancels the coroutine's task cleanly.
    """
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise UserError(
            f"`{method}_sync()` was called inside a running event loop; use `await {method}()` there instead."
        )
    return asyncio.run(coro)


class Clock(Protocol):
    """Time as the runtime sees it. Tests inject [`ManualClock`][miniagent.testing.ManualClock]."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`."""
        ...

    def deadline_scope(self, seconds: float | None) -> anyio.CancelScope:
        """A cancel scope that cancels itself `seconds` from now (never, for `None`)."""
        ...


class SystemClock:
    """The real clock: monotonic time and the event loop's timers."""

    __slots__ = ()

    def now(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` on the event loop."""
        import anyio

        await anyio.sleep(seconds)

    def deadline_scope(self, seconds: float | None) -> anyio.CancelScope:
        """A cancel scope that the event loop cancels `seconds` from now."""
        import anyio

        return anyio.move_on_after(seconds)


SYSTEM_CLOCK: Final = SystemClock()


class KindDiscriminator:
    """`Annotated` metadata that makes pydantic treat a union as tagged by its `kind` field.

    Behaves as `pydantic.Discriminator("kind")` but imports pydantic only when a schema is built, so the message
    and event modules (and `import miniagent`) do not load pydantic.
    """

    __slots__ = ()

    def __get_pydantic_core_schema__(self, source_type: Any, handler: Any) -> Any:
        from pydantic import Discriminator

        return Discriminator("kind").__get_pydantic_core_schema__(source_type, handler)

    def __repr__(self) -> str:
        return "KindDiscriminator()"


KIND: Final = KindDiscriminator()
