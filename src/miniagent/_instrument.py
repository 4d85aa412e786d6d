"""Instrumentation points of the lower layers, filled in by `miniagent.observability` when it is configured.

The store (and other implementations) must not import the observability layer above them, so they call these
indirections, which cost one attribute lookup and a no-op context manager while nothing is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

__all__ = ["set_store_tracer", "store_operation"]

_NULL: AbstractContextManager[None] = nullcontext()

StoreTracer = Callable[[str, dict[str, Any]], AbstractContextManager[Any]]
"""Makes the context manager (a span) around one store operation, from its name and attributes."""

_store_tracer: StoreTracer | None = None


def store_operation(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """Wrap one store operation (`append`, `load_thread`, `add_dead_letter`...): a span when tracing is on."""
    tracer = _store_tracer
    if tracer is None:
        return _NULL
    return tracer(name, attributes)


def set_store_tracer(tracer: StoreTracer | None) -> None:
    """Install (or with `None` remove) what `store_operation` opens around each store operation."""
    global _store_tracer
    _store_tracer = tracer
