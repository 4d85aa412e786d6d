"""Fair scheduling of a worker's jobs across tenants: round-robin, with a per-tenant cap on running runs.

A burst of one tenant's jobs does not starve the others: jobs wait in one queue per tenant, and each free slot goes
to the next tenant in turn that has a waiting job and fewer than `tenant_cap` runs going. With a cap of `c`, a job
of tenant B that arrives while A's burst waits starts before A's `(c + 1)`-th job.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Generic, TypeVar

from ..errors import UserError

__all__ = ["FairScheduler"]

T = TypeVar("T")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class FairScheduler(Generic[T]):
    """Picks the next job to start: round-robin over tenants, at most `concurrency` running, `tenant_cap` per tenant.

    Not thread-safe; one event loop drives it (the worker). Items are opaque (the worker's deliveries).

    Args:
        concurrency: Jobs running at once, all tenants together.
        tenant_cap: Jobs of one tenant running at once.
    """

    def __init__(self, *, concurrency: int, tenant_cap: int) -> None:
        if not _positive_int(concurrency):
            raise UserError(f"`concurrency` must be an integer >= 1, got {concurrency!r}.")
        if not _positive_int(tenant_cap):
            raise UserError(f"`tenant_cap` must be an integer >= 1, got {tenant_cap!r}.")
        self.concurrency = concurrency
        self.tenant_cap = tenant_cap
        self._waiting: OrderedDict[str, deque[T]] = OrderedDict()  # tenants in turn order
        self._running: dict[str, int] = {}

    @property
    def running(self) -> int:
        """Jobs started and not finished."""
        return sum(self._running.values())

    @property
    def waiting(self) -> int:
        """Jobs waiting for a slot."""
        return sum(len(q) for q in self._waiting.values())

    def running_of(self, tenant: str) -> int:
        """Jobs of `tenant` running."""
        return self._running.get(tenant, 0)

    def add(self, tenant: str, item: T) -> None:
        """Queue a job of `tenant` (a tenant new to the rotation goes last)."""
        queue = self._waiting.get(tenant)
        if queue is None:
            queue = self._waiting[tenant] = deque()
        queue.append(item)

    def next(self) -> tuple[str, T] | None:
        """The job to start now, counted as running (`None`: no slot, or every waiting tenant is at its cap)."""
        if self.running >= self.concurrency:
            return None
        for tenant in list(self._waiting):
            queue = self._waiting[tenant]
            if not queue or self._running.get(tenant, 0) >= self.tenant_cap:
                continue
            item = queue.popleft()
            self._running[tenant] = self._running.get(tenant, 0) + 1
            # This tenant goes to the back of the rotation: the others are served before its next job.
            self._waiting.move_to_end(tenant)
            if not queue:
                del self._waiting[tenant]
            return tenant, item
        return None

    def done(self, tenant: str) -> None:
        """A job of `tenant` finished (frees its slot)."""
        count = self._running.get(tenant, 0)
        if count <= 0:
            raise UserError(f"No job of tenant {tenant!r} is running: `done` called twice?")
        if count == 1:
            del self._running[tenant]
        else:
            self._running[tenant] = count - 1

    def drain(self) -> list[T]:
        """Remove and return every waiting job (a worker stopping hands them back)."""
        items = [item for queue in self._waiting.values() for item in queue]
        self._waiting.clear()
        return items
